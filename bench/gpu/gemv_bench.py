"""kiln-gemv alone on the Llama projection shapes: microseconds per launch and DRAM GB/s of
back-to-back one-row GEMVs (Programmatic Dependent Launch on, as in a decode step), per dtype and
k-split. Each launch reads a different copy of the weights, so every one streams them from HBM.

A GEMV variant's worth in seconds of device time, without building an engine:
    python3 bench/gpu/gemv_bench.py --compare KILN_CUDA_PDL=0,1
runs one process per value (the switches are read once per process) and prints them side by side.
Needs libkiln-kernels-abi (`bash test/gpu/build_native.sh kiln-kernels-abi`).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "test" / "gpu"))
from kernels_ref import DEV, Kernels, KernelError  # noqa: E402

# (name, n, k, SiLU·mul output): the four projections of each model, as the CUDA model runs them.
SHAPES = [
    ("1B qkv", 3072, 2048, False), ("1B o", 2048, 2048, False), ("1B gate_up", 16384, 2048, True),
    ("1B down", 2048, 8192, False),
    ("8B qkv", 6144, 4096, False), ("8B o", 4096, 4096, False), ("8B gate_up", 28672, 4096, True),
    ("8B down", 4096, 14336, False),
]
# by fp8: E4M3 adds split 16 (blocks of 16 warps) and 64, the wgmma kernel (gemv.h, kGemvWgmmaSplit;
# every Llama shape's k is a multiple of 512)
SPLITS = {False: (1, 2, 4, 8), True: (1, 2, 4, 8, 16, 64)}
LAUNCHES = 200
COPY_BYTES = 400e6  # the copies a shape rotates through: eight times an H100/H200's L2


def bench_fn(k: Kernels):
    fn = k.lib.kiln_gemv_bench
    fn.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int64, ctypes.c_int, ctypes.c_int64, ctypes.c_int64,
                   ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int64,
                   ctypes.POINTER(ctypes.c_float)]
    fn.restype = ctypes.c_int
    return fn


def measure(lib: Path) -> list[dict]:
    k = Kernels(lib)
    gemv_bench = bench_fn(k)
    rows = []
    for fp8 in (False, True):
        for name, n, kdim, silu in SHAPES:
            width = 1 if fp8 else 2
            copies = max(2, int(COPY_BYTES // (n * kdim * width)))
            dtype = torch.uint8 if fp8 else torch.bfloat16
            ws = [torch.randint(0, 120, (n, kdim), dtype=torch.uint8, device=DEV) if fp8
                  else (torch.randn(n, kdim, device=DEV) * 0.02).to(dtype) for _ in range(copies)]
            x = (torch.randint(0, 120, (1, kdim), dtype=torch.uint8, device=DEV) if fp8
                 else torch.randn(1, kdim, device=DEV).to(torch.bfloat16))
            y = torch.empty(1, n, device=DEV)
            act = torch.empty(1, n // 2, dtype=torch.uint8 if fp8 else torch.bfloat16, device=DEV)

            pointers = (ctypes.c_void_p * copies)(*(w.data_ptr() for w in ws))
            torch.cuda.synchronize()
            for split in SPLITS[fp8]:
                us = ctypes.c_float(0.0)
                if gemv_bench(pointers, copies, int(fp8), n, kdim, x.data_ptr(), None if silu else y.data_ptr(),
                              act.data_ptr() if silu else None, split, LAUNCHES, ctypes.byref(us)) != 0:
                    raise KernelError(k.lib.kiln_abi_last_error().decode())
                us = us.value
                rows.append({"shape": name, "dtype": "fp8" if fp8 else "bf16", "split": split, "us": round(us, 2),
                             "GBps": round(n * kdim * width / us / 1e3, 1)})
            del ws
            torch.cuda.empty_cache()
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lib", type=Path, default=ROOT / "native" / "build-cuda" / "libkiln-kernels-abi.so")
    ap.add_argument("--compare", metavar="VAR=V1,V2,...", help="one process per value of an environment variable")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON (what --compare reads)")
    args = ap.parse_args()
    if not args.compare:
        rows = measure(args.lib)
        if args.json:
            print(json.dumps(rows))
        else:
            print(f"{torch.cuda.get_device_name()}: one-row kiln-gemv, {LAUNCHES} back-to-back launches")
            for r in rows:
                print(f"{r['shape']:11} {r['dtype']:5} split {r['split']}: {r['us']:8.2f} us  {r['GBps']:7.1f} GB/s")
        return 0
    var, _, values = args.compare.partition("=")
    results = {}
    for value in values.split(","):
        run = subprocess.run([sys.executable, __file__, "--lib", str(args.lib), "--json"], capture_output=True,
                             text=True, env={**os.environ, var: value})
        if run.returncode != 0:
            print(f"{var}={value}: rc {run.returncode}\n{run.stderr[-2000:]}")
            return 1
        results[value] = {(r["shape"], r["dtype"], r["split"]): r for r in json.loads(run.stdout.splitlines()[-1])}
    first = next(iter(results.values()))
    print(f"{torch.cuda.get_device_name()}: one-row kiln-gemv, best split per shape, us per launch (GB/s), {var}")
    print(f"{'shape':11} {'dtype':5} " + "  ".join(f"{v:>20}" for v in results))
    for shape, dtype in dict.fromkeys((s, d) for s, d, _ in first):
        cells = []
        for by_key in results.values():
            best = min((r for (sh, d, _), r in by_key.items() if (sh, d) == (shape, dtype)), key=lambda r: r["us"])
            cells.append(f"{best['us']:8.2f} ({best['GBps']:6.0f}) s{best['split']}")
        print(f"{shape:11} {dtype:5} " + "  ".join(f"{c:>20}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
