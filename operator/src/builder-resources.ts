import { isPlainObject } from "./api/schema.js";

/**
 * Requests and limits of the builder container of every build Job (defaults.builderResources):
 * resource name -> Kubernetes quantity. The GPU limit is not among them: the operator sets it from
 * the build's tensorParallel.
 */
export interface BuilderResources {
  requests?: Record<string, string>;
  limits?: Record<string, string>;
}

/**
 * A non-negative Kubernetes quantity (resource.Quantity's grammar without the sign: requests and
 * limits cannot be negative): digits with an optional fraction, then a binary (Ki..Ei) or decimal
 * (m, k..E) suffix or an exponent. charts/kiln/values.schema.json holds the same pattern.
 */
export const QUANTITY_PATTERN =
  /^([0-9]+(\.[0-9]*)?|\.[0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E|[eE][+-]?[0-9]+)?$/;

const SCALE: Record<string, number> = {
  "": 1,
  m: 1e-3,
  k: 1e3,
  M: 1e6,
  G: 1e9,
  T: 1e12,
  P: 1e15,
  E: 1e18,
  Ki: 2 ** 10,
  Mi: 2 ** 20,
  Gi: 2 ** 30,
  Ti: 2 ** 40,
  Pi: 2 ** 50,
  Ei: 2 ** 60,
};

/** The value of a quantity QUANTITY_PATTERN accepts, close enough to compare a request with a limit. */
function quantityValue(quantity: string): number {
  const [, digits = "", , suffix = ""] = QUANTITY_PATTERN.exec(quantity) ?? [];
  return suffix in SCALE ? Number(digits) * (SCALE[suffix] ?? 1) : Number(digits + suffix);
}

const SECTIONS = ["requests", "limits"] as const;
const EXAMPLE = "{requests: {cpu: '8', memory: 64Gi}, limits: {memory: 96Gi}}";

/**
 * Checks a defaults.builderResources value (`where` says where it is set) and returns it with every
 * quantity as a string, the spelling the API server echoes. `gpuResource` may not be named: a
 * request or limit of it would fight the GPU limit the operator sets.
 */
export function checkBuilderResources(
  value: unknown,
  gpuResource: string,
  where: string,
): { resources: BuilderResources; problems: string[] } {
  const field = "defaults.builderResources";
  if (value === undefined) return { resources: {}, problems: [] };
  if (!isPlainObject(value)) {
    return {
      resources: {},
      problems: [`${field} must be a mapping of requests and limits, e.g. ${EXAMPLE} (${where})`],
    };
  }
  const problems: string[] = [];
  const resources: BuilderResources = {};
  for (const key of Object.keys(value)) {
    if (!(SECTIONS as readonly string[]).includes(key)) {
      problems.push(`${field}.${key}: unknown key (known: ${SECTIONS.join(", ")}) (${where})`);
    }
  }
  for (const section of SECTIONS) {
    const list = value[section];
    if (list === undefined || list === null) continue;
    if (!isPlainObject(list)) {
      problems.push(`${field}.${section} must map resource names to quantities (${where})`);
      continue;
    }
    const quantities: Record<string, string> = {};
    for (const [name, quantity] of Object.entries(list)) {
      if (name === gpuResource) {
        problems.push(
          `${field}.${section}.${name}: the operator sets the GPU limit of build Jobs itself (the build's tensorParallel); remove it (${where})`,
        );
      } else if (
        (typeof quantity === "string" && QUANTITY_PATTERN.test(quantity)) ||
        (typeof quantity === "number" && Number.isFinite(quantity) && quantity >= 0)
      ) {
        quantities[name] = String(quantity);
      } else {
        problems.push(
          `${field}.${section}.${name}: ${JSON.stringify(quantity)} is not a Kubernetes quantity (e.g. 8, 500m, 64Gi) (${where})`,
        );
      }
    }
    if (Object.keys(quantities).length) resources[section] = quantities;
  }
  // The API server refuses a pod whose request exceeds its limit: say so now, not at every build.
  for (const [name, request] of Object.entries(resources.requests ?? {})) {
    const limit = resources.limits?.[name];
    if (limit !== undefined && quantityValue(request) > quantityValue(limit)) {
      problems.push(
        `${field}.requests.${name} (${request}) must not exceed ${field}.limits.${name} (${limit}) (${where})`,
      );
    }
  }
  return { resources, problems };
}
