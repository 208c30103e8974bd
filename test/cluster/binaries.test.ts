import { describe, expect, it } from "vitest";
import { pinnedVersions } from "./binaries.js";

describe("pinned upstream versions", () => {
  it("reads every pin from its wrapper module's go.mod", () => {
    const versions = pinnedVersions();
    expect(versions["kube-apiserver"]).toMatch(/^v1\.34\.\d+$/);
    // One Kubernetes wrapper builds all four binaries, so they cannot drift apart.
    expect(
      new Set([
        versions["kube-apiserver"],
        versions["kube-controller-manager"],
        versions["kube-scheduler"],
        versions.kubectl,
      ]).size,
    ).toBe(1);
    expect(versions.etcd).toMatch(/^v3\.6\.\d+$/);
    expect(versions.helm).toMatch(/^v3\.(19|[2-9]\d)\.\d+$/);
    expect(versions.kwok).toMatch(/^v\d+\.\d+\.\d+$/);
    expect(versions.versitygw).toMatch(/^v\d+\.\d+\.\d+$/);
  });
});
