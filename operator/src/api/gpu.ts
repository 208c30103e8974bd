// The GPU products an engine can target. An engine is compiled and autotuned for one product, so
// the product (not just the SM arch) is part of the engine key: H100 and H200 share sm_90 but tune
// to different winners because their memory bandwidth differs.

export interface GpuProduct {
  /** CUDA compute capability the engine is compiled for; "cpu" for the CPU backend. */
  arch: "cpu" | "sm_80" | "sm_86" | "sm_89" | "sm_90";
  /** Device memory in bytes, used by pre-flight; 0 where it is not a fixed property (cpu). */
  memoryBytes: number;
  /** Value of the `nvidia.com/gpu.product` node label (GPU feature discovery) by default. */
  nodeLabel?: string;
}

const GB = 1e9;

export const GPU_PRODUCTS = {
  cpu: { arch: "cpu", memoryBytes: 0 },
  A10G: { arch: "sm_86", memoryBytes: 24 * GB, nodeLabel: "NVIDIA-A10G" },
  "A100-40GB": { arch: "sm_80", memoryBytes: 40 * GB, nodeLabel: "NVIDIA-A100-SXM4-40GB" },
  "A100-80GB": { arch: "sm_80", memoryBytes: 80 * GB, nodeLabel: "NVIDIA-A100-SXM4-80GB" },
  L4: { arch: "sm_89", memoryBytes: 24 * GB, nodeLabel: "NVIDIA-L4" },
  L40S: { arch: "sm_89", memoryBytes: 48 * GB, nodeLabel: "NVIDIA-L40S" },
  H100: { arch: "sm_90", memoryBytes: 80 * GB, nodeLabel: "NVIDIA-H100-80GB-HBM3" },
  H200: { arch: "sm_90", memoryBytes: 141 * GB, nodeLabel: "NVIDIA-H200" },
} as const satisfies Record<string, GpuProduct>;

export type GpuProductName = keyof typeof GPU_PRODUCTS;
export const GPU_PRODUCT_NAMES = Object.keys(GPU_PRODUCTS) as [GpuProductName, ...GpuProductName[]];

/** fp8 (E4M3) tensor cores exist from Ada (sm_89) and Hopper (sm_90) on. */
export const FP8_PRODUCTS = GPU_PRODUCT_NAMES.filter((p) => {
  const arch = GPU_PRODUCTS[p].arch;
  return arch === "sm_89" || arch === "sm_90";
});
