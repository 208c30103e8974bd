"""GPU kernel correctness: every CUDA kernel launcher of the backend against a PyTorch reference.

Run on the GPU machine after `bash test/gpu/build_native.sh kiln-kernels-abi`. Loads
libkiln-kernels-abi (native/tools/kernel_abi.cpp, a C ABI over the launchers) with ctypes, makes
random inputs with torch on the GPU, calls each launcher on the tensors' device pointers and compares
with a reference written in torch from the kernel's definition, in float64 from the exact same
(bf16 / e4m3) inputs. Output buffers start as NaN (0xff bytes: NaN in fp32, bf16 and e4m3fn), so an
element a kernel never wrote fails its check.

Bounds, elementwise (|got - ref| <= rtol * |ref| + atol), from the output precision:
- bf16 outputs: rtol 2^-7, one bf16 ulp (8-bit significand: an ulp is at most 2^-7 of the value).
  Rounding to nearest costs half an ulp; the other half covers the kernel's fp32 arithmetic moving
  a value across a rounding boundary. Where the value comes out of a reduction (attention, GEMV),
  atol adds that reduction's fp32 error, stated at each kernel.
- e4m3 outputs (compared as value / scale, saturated to +-448): rtol 2^-3, one e4m3 ulp (3-bit
  mantissa), plus atol 2^-9, the subnormal step.
- fp32 outputs: the fp32 rounding of the operations involved (RoPE, GEMV accumulation), far
  tighter than any of the above; exact where the kernel only converts (embedding).
Prints one line per kernel case and a summary; exits 1 on any failure.

Usage: python3 test/gpu/kernels_ref.py [--lib native/build-cuda/libkiln-kernels-abi.so]
"""

from __future__ import annotations

import argparse
import ctypes
import itertools
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
DEV = "cuda"
BF16_ULP = 2.0**-7
E4M3_ULP = 2.0**-3
E4M3_STEP = 2.0**-9
E4M3_MAX = 448.0
QK_NORM_EPS = 1e-6  # Qwen3's rms_norm_eps
# fp32 accumulation of a dot product, relative to sum |x_i w_i|: the kernels' rounding error is
# orders below this (u * sqrt(k) ~ 5e-6 at k = 8192 even as a worst-case random walk), while one
# dropped product costs about 1/k of the sum (>= 1.2e-4 at k = 8192), so a missing term fails.
DOT_FP32 = 1e-5
# Hopper's fp8 tensor-core MMA keeps about 14 significand bits between fp32 promotions (so the
# DeepSeek-V3 report measured); cuBLASLt's fp8 GEMMs are held to 2^-9 of sum |x_i w_i|.
DOT_FP8_MMA = 2.0**-9

P, I64, I32, F32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
SIGNATURES = {
    "kiln_embed_rows": [P, P, I64, I64, P],
    "kiln_rms_norm": [I32, P, P, I64, I64, P, F32, F32, P],
    "kiln_rope_and_write_kv": [P, P, I64, P, P, P, I64, P, P, P, P, I64, I64, I64, I64, I32, F32, F32, P, P, F32],
    "kiln_paged_attention": [P, I64, P, P, P, I64, P, P, P, I64, I64, I64, I64, I64, I64, F32, P, P, F32, I64, I64,
                             P, I32, F32, F32],
    "kiln_decode_attention": [P, P, I64, P, P, P, I64, P, P, P, P, I64, I64, I64, I64, I64, F32, P, P, F32, I64, P,
                              P, I32, F32, F32, P, P, F32],
    "kiln_prefill_attention": [P, I64, P, P, P, I64, P, P, P, I64, I64, I64, I64, I64, I64, F32, P, P, F32, I64, I32,
                               F32, F32],
    "kiln_silu_mul": [I32, P, I64, I64, F32, P],
    "kiln_argmax_rows": [P, I64, I64, P],
    "kiln_sample_rows": [P, I64, I64, P, P, P, P, P, P, P],
    "kiln_gemv": [P, I32, I64, I64, I64, F32, P, P, P, F32, F32, P, F32, P, F32, I32, I32],
    "kiln_lt_gemm": [I32, P, P, I64, I64, I64, P, F32, F32, I32, I32, ctypes.POINTER(ctypes.c_int)],
    "kiln_tuned_gemm": [I32, P, P, I64, I64, I64, P, F32, F32, I32, I32],
}


def ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


class KernelError(RuntimeError):
    pass


class Kernels:
    """The library's entries on tensors; each raises KernelError with the library's message."""

    def __init__(self, path: Path):
        self.lib = ctypes.CDLL(str(path))
        for name, args in SIGNATURES.items():
            fn = getattr(self.lib, name)
            fn.argtypes = args
            fn.restype = ctypes.c_int
        self.lib.kiln_abi_last_error.restype = ctypes.c_char_p
        for name, args in (("kiln_attention_tile_tokens", [I64, I64]), ("kiln_max_attention_splits", []),
                           ("kiln_decode_attention_supports", [I64, I64, I64]),
                           ("kiln_prefill_attention_tile_tokens", [I64, I64])):
            getattr(self.lib, name).argtypes = args
            getattr(self.lib, name).restype = I64

    def call(self, name: str, *args) -> None:
        torch.cuda.synchronize()  # the inputs torch made are complete before the launch
        if getattr(self.lib, name)(*args) != 0:
            raise KernelError(self.lib.kiln_abi_last_error().decode())

    def tile_tokens(self, heads: int, kv_heads: int) -> int:
        return self.lib.kiln_attention_tile_tokens(heads, kv_heads)

    def max_splits(self) -> int:
        return self.lib.kiln_max_attention_splits()

    def embed_rows(self, table, tokens, h):
        self.call("kiln_embed_rows", ptr(table), ptr(tokens), tokens.numel(), table.shape[1], ptr(h))

    def rms_norm(self, fp8, h, row_index, rows, gamma, eps, scale, y):
        self.call("kiln_rms_norm", int(fp8), ptr(h), ptr(row_index), rows, h.shape[1], ptr(gamma), eps, scale, ptr(y))

    # The KV cache entries take the cache's dtype from the tensors: float8_e4m3fn keys and values are
    # an fp8 cache holding k / k_scale and v / v_scale, bf16 ones a bf16 cache (scales unused).
    # qk_norm: (q weights, k weights), the QK norm (Qwen3) applied before the rotation, eps QK_NORM_EPS.
    def rope_and_write_kv(self, qkv, bias, seq, pos, tables, cos, sin, keys, values, heads, kv_heads, head_dim,
                          k_scale=1.0, v_scale=1.0, qk_norm=(None, None)):
        self.call("kiln_rope_and_write_kv", ptr(qkv), ptr(bias), qkv.shape[0], ptr(seq), ptr(pos), ptr(tables),
                  tables.shape[1], ptr(cos), ptr(sin), ptr(keys), ptr(values), keys.shape[1], heads, kv_heads, head_dim,
                  int(keys.dtype == torch.float8_e4m3fn), k_scale, v_scale, ptr(qk_norm[0]), ptr(qk_norm[1]),
                  QK_NORM_EPS)

    def paged_attention(self, q, q_stride, keys, values, tables, seq, pos, tiles, heads, kv_heads, head_dim, window,
                        scale, out, out_fp8, out_scale, splits, partials, k_scale=1.0, v_scale=1.0):
        self.call("kiln_paged_attention", ptr(q), q_stride, ptr(keys), ptr(values), ptr(tables), tables.shape[1],
                  ptr(seq), ptr(pos), ptr(tiles), tiles.shape[0], keys.shape[1], heads, kv_heads, head_dim, window,
                  scale, ptr(out), ptr(out_fp8), out_scale, splits, seq.numel(), ptr(partials),
                  int(keys.dtype == torch.float8_e4m3fn), k_scale, v_scale)

    def prefill_tile_tokens(self, heads: int, kv_heads: int) -> int:
        return self.lib.kiln_prefill_attention_tile_tokens(heads, kv_heads)

    def prefill_attention(self, q, q_stride, keys, values, tables, seq, pos, tiles, heads, kv_heads, head_dim, window,
                          scale, out, out_fp8, out_scale, k_scale=1.0, v_scale=1.0):
        self.call("kiln_prefill_attention", ptr(q), q_stride, ptr(keys), ptr(values), ptr(tables), tables.shape[1],
                  ptr(seq), ptr(pos), ptr(tiles), tiles.shape[0], keys.shape[1], heads, kv_heads, head_dim, window,
                  scale, ptr(out), ptr(out_fp8), out_scale, seq.numel(), int(keys.dtype == torch.float8_e4m3fn),
                  k_scale, v_scale)

    def decode_supports(self, heads: int, kv_heads: int, head_dim: int) -> bool:
        return self.lib.kiln_decode_attention_supports(heads, kv_heads, head_dim) != 0

    def decode_attention(self, qkv, bias, seq, pos, tables, cos, sin, keys, values, heads, kv_heads, head_dim, window,
                         scale, out, out_fp8, out_scale, splits, partials, counters, k_scale=1.0, v_scale=1.0,
                         qk_norm=(None, None)):
        self.call("kiln_decode_attention", ptr(qkv), ptr(bias), qkv.shape[0], ptr(seq), ptr(pos), ptr(tables),
                  tables.shape[1], ptr(cos), ptr(sin), ptr(keys), ptr(values), keys.shape[1], heads, kv_heads,
                  head_dim, window, scale, ptr(out), ptr(out_fp8), out_scale, splits, ptr(partials), ptr(counters),
                  int(keys.dtype == torch.float8_e4m3fn), k_scale, v_scale, ptr(qk_norm[0]), ptr(qk_norm[1]),
                  QK_NORM_EPS)

    def silu_mul(self, fp8, gate_up, scale, out):
        self.call("kiln_silu_mul", int(fp8), ptr(gate_up), gate_up.shape[0], gate_up.shape[1] // 2, scale, ptr(out))

    def argmax_rows(self, logits, keys):
        self.call("kiln_argmax_rows", ptr(logits), logits.shape[0], logits.shape[1], ptr(keys))

    def sample_rows(self, logits, draws, tokens):
        """draws: (row, temperature, top_k, top_p, min_p, u) per job."""
        n = len(draws)
        rows, temperature, top_k, top_p, min_p, u = zip(*draws)
        self.call("kiln_sample_rows", ptr(logits), logits.shape[1], n, (ctypes.c_float * n)(*temperature),
                  (ctypes.c_int32 * n)(*top_k), (ctypes.c_float * n)(*top_p), (ctypes.c_float * n)(*min_p),
                  (ctypes.c_double * n)(*u), (ctypes.c_int32 * n)(*rows), ptr(tokens))

    def gemv(self, w, fp8, m, scale, x, h, gamma, eps, in_scale, y, beta, act, act_scale, split, stage_input=True):
        self.call("kiln_gemv", ptr(w), int(fp8), m, w.shape[0], w.shape[1], scale, ptr(x), ptr(h), ptr(gamma), eps,
                  in_scale, ptr(y), beta, ptr(act), act_scale, split, int(stage_input))

    def lt_gemm(self, fp8, w, x, y, beta, alpha, algo) -> int:
        proposals = ctypes.c_int(0)
        self.call("kiln_lt_gemm", int(fp8), ptr(w), ptr(x), x.shape[0], w.shape[0], w.shape[1], ptr(y), beta, alpha,
                  algo, 8, ctypes.byref(proposals))
        return proposals.value

    def tuned_gemm(self, fp8, w, x, y, beta, scale, tactic, split):
        """tactic: TACTIC_CUBLASLT or TACTIC_GEMV (split)."""
        self.call("kiln_tuned_gemm", int(fp8), ptr(w), ptr(x), x.shape[0], w.shape[0], w.shape[1], ptr(y), beta, scale,
                  tactic, split)


failures: list[str] = []
cases = 0


def report(kernel: str, case: str, ok: bool, detail: str) -> None:
    global cases
    cases += 1
    print(f"{'PASS' if ok else 'FAIL'} {kernel:<16} {case:<58} {detail}", flush=True)
    if not ok:
        failures.append(f"{kernel} {case}")


def launched(kernel: str, case: str, launch) -> bool:
    """Runs one launch; an error the library returns is that case's failure (and ends the case)."""
    try:
        launch()
        return True
    except KernelError as e:
        report(kernel, case, False, f"error: {e}")
        return False


def check(kernel: str, case: str, got: torch.Tensor, ref: torch.Tensor, rtol: float, atol) -> None:
    """Elementwise |got - ref| <= rtol |ref| + atol (atol a number or a tensor like ref); NaN fails."""
    got = got.double()
    ref = ref.double()
    unwritten = int(torch.isnan(got).sum())
    err = (got - ref).abs()
    bound = rtol * ref.abs() + atol
    ok = unwritten == 0 and bool((err <= bound).all())
    finite = torch.nan_to_num(err, nan=math.inf)
    ratio = float((finite / bound.clamp_min(1e-300)).max()) if err.numel() else 0.0
    report(kernel, case, ok, f"max|err| {float(finite.max()):.3e}  err/bound {ratio:.3f}  unwritten {unwritten}")


def nan_like(shape, dtype) -> torch.Tensor:
    """0xff bytes: NaN in fp32 and bf16, NaN in e4m3fn (a uint8 buffer viewed as float8_e4m3fn)."""
    if dtype == torch.float8_e4m3fn:
        return torch.full(shape, 0xFF, dtype=torch.uint8, device=DEV).view(torch.float8_e4m3fn)
    return torch.full(shape, math.nan, dtype=dtype, device=DEV)


def to_e4m3(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)


def check_out(kernel: str, case: str, got: torch.Tensor, ref: torch.Tensor, scale: float = 1.0, atol=0.0) -> None:
    """A bf16 or e4m3 output (e4m3: got holds value / scale) against the float64 value ref, with
    `atol` the reference-side error of ref itself (in ref's units)."""
    if got.dtype == torch.float8_e4m3fn:
        check(kernel, case, got.float(), (ref / scale).clamp(-E4M3_MAX, E4M3_MAX), E4M3_ULP, E4M3_STEP + atol / scale)
    else:
        check(kernel, case, got.float(), ref, BF16_ULP, atol)


def rms_normed(h: torch.Tensor, gamma: torch.Tensor | None, eps: float) -> torch.Tensor:
    h = h.double()
    y = h * torch.rsqrt(h.pow(2).mean(dim=-1, keepdim=True) + eps)
    return y * gamma.double() if gamma is not None else y


def silu(g: torch.Tensor) -> torch.Tensor:
    return g * torch.sigmoid(g)


# ---------------------------------------------------------------- elementwise kernels


def test_embed(k: Kernels) -> None:
    # 16-byte chunks, 4 a thread: 8200 takes a second pass over the row; 1030 (not a multiple of 8) the
    # element loop.
    for vocab, hidden, n in ((32000, 4096, 5), (1000, 2048, 37), (128256, 2048, 1), (300, 8200, 3), (500, 1030, 4)):
        table = torch.randn(vocab, hidden, device=DEV).to(torch.bfloat16)
        tokens = torch.randint(0, vocab, (n,), dtype=torch.int32, device=DEV)
        tokens[0] = vocab - 1
        if n > 2:
            tokens[-1] = tokens[1]  # a repeated token
        h = nan_like((n, hidden), torch.float32)
        name = f"vocab {vocab} hidden {hidden} n {n}"
        if launched("embed_rows", name, lambda: k.embed_rows(table, tokens, h)):
            check("embed_rows", name, h, table[tokens.long()].double(), 0.0, 0.0)


def test_rms_norm(k: Kernels) -> None:
    # hidden % 4 == 0 and <= 4096 runs the vectorised kernel; 8192 and 1030 the general one.
    for rows, hidden, gamma_on, indexed in ((1, 2048, True, False), (5, 4096, True, True), (3, 8192, True, False),
                                            (7, 1030, False, True), (64, 3072, True, False)):
        h = torch.randn(rows + 3, hidden, device=DEV) * 2.0
        h[0, 5] = 60.0  # an outlier: the fp8 form must saturate it, not overflow
        gamma = (1.0 + 0.1 * torch.randn(hidden, device=DEV)) if gamma_on else None
        index = torch.randperm(rows + 3, device=DEV)[:rows].to(torch.int32) if indexed else None
        src = h[index.long()] if indexed else h[:rows]
        ref = rms_normed(src, gamma, 1e-5)
        name = f"rows {rows} hidden {hidden}{' gamma' if gamma_on else ''}{' row_index' if indexed else ''}"
        for fp8 in (False, True):
            scale = 3.0 / E4M3_MAX  # normed values reach past 3: the largest saturate
            y = nan_like((rows, hidden), torch.float8_e4m3fn if fp8 else torch.bfloat16)
            kernel = "rms_norm_fp8" if fp8 else "rms_norm_bf16"
            if launched(kernel, name, lambda: k.rms_norm(fp8, h, index, rows, gamma, 1e-5, scale, y)):
                check_out(kernel, name, y, ref, scale)


def test_silu_mul(k: Kernels) -> None:
    # 70000 rows: more than one launch (65535 rows per grid). Odd widths: the pairs and the lone last output.
    for rows, inter in ((1, 8192), (5, 1000), (5, 1001), (2, 1), (3, 14336), (70000, 8)):
        gate_up = torch.randn(rows, 2 * inter, device=DEV) * 3.0
        gu = gate_up.double()
        ref = silu(gu[:, 0::2]) * gu[:, 1::2]
        for fp8 in (False, True):
            scale = 8.0 / E4M3_MAX
            out = nan_like((rows, inter), torch.float8_e4m3fn if fp8 else torch.bfloat16)
            kernel, name = "silu_mul_fp8" if fp8 else "silu_mul_bf16", f"rows {rows} inter {inter}"
            if launched(kernel, name, lambda: k.silu_mul(fp8, gate_up, scale, out)):
                check_out(kernel, name, out, ref, scale)


def test_argmax(k: Kernels) -> None:
    for rows, vocab in ((1, 128256), (4, 32000), (3, 50257), (64, 128256)):
        logits = torch.randn(rows, vocab, device=DEV) * 4.0
        top = float(logits.max()) + 1.0
        logits[0, vocab - 7] = top  # a tie: the first index wins, as torch.argmax
        logits[0, 11] = top
        if rows > 1:
            logits[1] -= 1000.0  # all negative: the order-preserving key must handle the sign
        keys = torch.full((rows,), -1, dtype=torch.int64, device=DEV)  # the launcher zeroes it
        name = f"rows {rows} vocab {vocab} (tie, negative row)"
        if not launched("argmax_rows", name, lambda: k.argmax_rows(logits, keys)):
            continue
        want = torch.argmax(logits, dim=1).tolist()
        got_keys = [key & 0xFFFFFFFFFFFFFFFF for key in keys.tolist()]
        got = [0xFFFFFFFF - (key & 0xFFFFFFFF) for key in got_keys]
        # The value half of the key, decoded back to the float it orders.
        ordered = [key >> 32 for key in got_keys]
        bits = [o & 0x7FFFFFFF if o & 0x80000000 else ~o & 0xFFFFFFFF for o in ordered]
        values = torch.tensor(bits, dtype=torch.int64).to(torch.int32).view(torch.float32)
        max_values = logits.max(dim=1).values.cpu()
        mismatched = sum(g != w for g, w in zip(got, want))
        ok = mismatched == 0 and bool(torch.equal(values, max_values))
        report("argmax_rows", name, ok,
               f"index mismatches {mismatched}  values {'equal' if torch.equal(values, max_values) else 'DIFFER'}")


# The host Sampler's draw (runtime/sampler.cpp) in float64, and how far apart two samplers that both
# follow it may land: their normalisers differ in rounding (the device sums in fixed point), so a
# uniform within this much (relative to the kept mass) of a token boundary may fall either side.
DRAW_SLACK = 1e-6


def sample_reference(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, min_p: float,
                     u: float) -> set[int]:
    """Tokens the host Sampler draws for u and for u +- DRAW_SLACK: temperature alone by inverse CDF
    in token order; with any cut, over candidates most likely first (ties by lower id) normalised
    over the vocab (over the top_k alone when top_k cuts), then min_p, then the smallest prefix
    reaching top_p, the draw over what is kept."""
    scaled = (logits / temperature).double()  # the fp32 division both samplers make
    weights = torch.exp(scaled - scaled.max())
    vocab = weights.numel()
    if top_k == 0 and top_p >= 1.0 and min_p == 0.0:
        order, probs = torch.arange(vocab, device=logits.device), weights
    else:
        order = torch.sort(scaled, descending=True, stable=True).indices
        probs = weights[order]
        if 0 < top_k < vocab:
            order, probs = order[:top_k], probs[:top_k]
        probs = probs / probs.sum() if 0 < top_k < vocab else probs / weights.sum()
        keep = probs.numel()
        if min_p > 0.0:
            keep = int((probs >= min_p * probs[0]).sum())
        if top_p < 1.0:
            reached = torch.nonzero(torch.cumsum(probs[:keep], 0) >= top_p)
            if reached.numel():
                keep = int(reached[0]) + 1
        order, probs = order[:keep], probs[:keep]
    cdf = torch.cumsum(probs, 0)
    kept = float(cdf[-1])
    tokens = set()
    for r in (u * kept, (u - DRAW_SLACK) * kept, (u + DRAW_SLACK) * kept):
        i = int(torch.searchsorted(cdf, torch.tensor([r], dtype=torch.float64, device=cdf.device), right=True))
        tokens.add(int(order[min(i, order.numel() - 1)]))
    return tokens


def test_sampling(k: Kernels) -> None:
    knobs = [(1.0, 0, 1.0, 0.0), (0.7, 0, 1.0, 0.0), (1.0, 50, 1.0, 0.0), (0.8, 0, 0.9, 0.0), (1.0, 0, 1.0, 0.05),
             (1.2, 40, 0.95, 0.02), (1.0, 1 << 20, 1.0, 0.0)]  # the last: top_k beyond the vocab
    for vocab, rows in ((128256, 4), (32000, 3), (1000, 2)):
        logits = torch.randn(rows, vocab, device=DEV) * 3.0
        logits[0, vocab // 3] = -math.inf  # a masked token
        logits[1, 7] = logits[1, 9] = float(logits[1].max()) + 0.5  # a tie at the top
        for temperature, top_k, top_p, min_p in knobs:
            uniforms = torch.rand(4 * rows, dtype=torch.float64).tolist()
            uniforms[0], uniforms[1] = 0.0, 1.0 - 2.0**-40  # the ends of [0, 1)
            draws = [(i % rows, temperature, top_k, top_p, min_p, uu) for i, uu in enumerate(uniforms)]
            tokens = torch.full((len(draws),), -1, dtype=torch.int32, device=DEV)
            name = f"vocab {vocab} T {temperature} top_k {top_k} top_p {top_p} min_p {min_p}"
            if not launched("sample_rows", name, lambda: k.sample_rows(logits, draws, tokens)):
                continue
            got = tokens.tolist()
            wrong = [(d[0], d[5], g) for d, g in zip(draws, got)
                     if g not in sample_reference(logits[d[0]], temperature, top_k, top_p, min_p, d[5])]
            report("sample_rows", name, not wrong, f"{len(draws)} draws, {len(wrong)} off the host sampler's token"
                   + (f" (row, u, token) {wrong[:2]}" if wrong else ""))


# ---------------------------------------------------------------- RoPE + KV write, attention


def rope_tables(positions: int, head_dim: int, theta: float):
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64, device=DEV) / head_dim)
    angles = torch.arange(positions, dtype=torch.float64, device=DEV)[:, None] * inv_freq[None, :]
    return torch.cos(angles).float().contiguous(), torch.sin(angles).float().contiguous()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """HF rotate_half RoPE on [tokens, heads, head_dim] with per-token cos / sin [tokens, head_dim/2]."""
    half = x.shape[-1] // 2
    c = torch.cat([cos, cos], dim=-1)[:, None, :]
    s = torch.cat([sin, sin], dim=-1)[:, None, :]
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * c + rotated * s


def rope_magnitude(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """|x0 cos| + |x1 sin| per output element: what the fp32 rounding of the rotation scales with."""
    half = x.shape[-1] // 2
    c = torch.cat([cos, cos], dim=-1)[:, None, :].abs()
    s = torch.cat([sin, sin], dim=-1)[:, None, :].abs()
    partner = torch.cat([x[..., half:], x[..., :half]], dim=-1).abs()
    return x.abs() * c + partner * s


class Batch:
    """A mixed batch over a paged KV cache: per sequence (first position, tokens) — prefill chunks
    after a cached prefix, fresh prompts, decode tokens — with the page ids shuffled so the block
    tables really redirect."""

    def __init__(self, slices, page_size: int, kv_dim: int):
        self.slices = slices
        self.page_size = page_size
        stride = max((start + n + page_size - 1) // page_size for start, n in slices)
        pages = stride * len(slices)
        self.pages = pages
        self.tables = torch.randperm(pages, device=DEV).to(torch.int32).view(len(slices), stride)
        seq, pos = [], []
        for s, (start, n) in enumerate(slices):
            seq += [s] * n
            pos += list(range(start, start + n))
        self.seq = torch.tensor(seq, dtype=torch.int32, device=DEV)
        self.pos = torch.tensor(pos, dtype=torch.int32, device=DEV)
        self.tokens = len(seq)
        self.kv_dim = kv_dim

    def slots(self, seq: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Row of the flattened cache [pages * page_size, kv_dim] for (sequence, position) pairs."""
        pos = pos.long()
        page = self.tables[seq.long(), pos // self.page_size].long()
        return page * self.page_size + pos % self.page_size

    def tiles(self, tile_tokens: int) -> torch.Tensor:
        tiles, first = [], 0
        for _, n in self.slices:
            for t in range(0, n, tile_tokens):
                tiles.append([first + t, min(tile_tokens, n - t)])
            first += n
        return torch.tensor(tiles, dtype=torch.int32, device=DEV)


MIXED = [(20, 37), (100, 1), (5, 1), (0, 70), (1000, 1)]


# An fp8 KV cache's scales in the tests: powers of two either side of 1, so a kernel that skips or
# inverts one is off by a factor of 4 or more.
KV_SCALES = (0.5, 2.0)


def check_cache(kernel: str, case: str, got: torch.Tensor, ref: torch.Tensor, scale: float, atol) -> None:
    """Cache rows written by a kernel: bf16 within one ulp (+ atol, the fp32 rounding of ref's
    arithmetic), e4m3 (holding value / scale) as check_out's e4m3 outputs."""
    if got.dtype == torch.float8_e4m3fn:
        check(kernel, case, got.float(), (ref / scale).clamp(-E4M3_MAX, E4M3_MAX), E4M3_ULP, E4M3_STEP + atol / scale)
    else:
        check(kernel, case, got.float(), ref, BF16_ULP, atol)


def dequantized(cache: torch.Tensor, scale: float) -> torch.Tensor:
    """The values an attention kernel reads from a cache: bf16 as stored, e4m3 times its scale."""
    return cache.float().double() * scale if cache.dtype == torch.float8_e4m3fn else cache.double()


def cache_bits(cache: torch.Tensor) -> torch.Tensor:
    """The cache as integers of its element size: indexed, assigned and compared bit for bit (torch
    indexes float8 tensors only partly, and NaN rows never equal themselves)."""
    return cache.view(torch.uint8 if cache.dtype == torch.float8_e4m3fn else torch.int16)


def cache_rows(cache: torch.Tensor, kv_dim: int, index: torch.Tensor) -> torch.Tensor:
    """Rows of the flattened cache [pages * page_size, kv_dim], in the cache's dtype."""
    return cache_bits(cache).reshape(-1, kv_dim)[index].view(cache.dtype)


def head_normed(x: torch.Tensor, gamma: torch.Tensor | None) -> torch.Tensor:
    """x [tokens, heads, head_dim] (float64) with each head RMS-normalised over head_dim times gamma
    (the QK norm), or x itself without gamma."""
    return x if gamma is None else rms_normed(x, gamma, QK_NORM_EPS)


def qk_norm_weights(qk_on: bool, head_dim: int):
    """(q weights, k weights) of a QK norm near 1, or (None, None)."""
    if not qk_on:
        return None, None
    return tuple(1.0 + 0.2 * torch.randn(head_dim, device=DEV) for _ in range(2))


def test_rope(k: Kernels) -> None:
    # qk: the QK norm (Qwen3) before the rotation; dim 32 runs 16 threads a head (a partial warp).
    for heads, kv_heads, head_dim, page_size, bias_on, kv_fp8, qk in (
            (32, 8, 64, 16, False, False, False), (32, 8, 128, 16, True, False, False),
            (8, 2, 64, 32, True, False, False), (4, 4, 32, 16, False, False, False),
            (32, 8, 128, 16, True, True, False), (4, 4, 32, 16, False, True, False),
            (16, 8, 128, 16, False, False, True), (8, 2, 64, 16, True, True, True), (4, 1, 32, 16, False, False, True)):
        q_dim, kv_dim = heads * head_dim, kv_heads * head_dim
        qk_norm = qk_norm_weights(qk, head_dim)
        batch = Batch(MIXED, page_size, kv_dim)
        cos, sin = rope_tables(1024, head_dim, 500000.0)
        qkv0 = torch.randn(batch.tokens, q_dim + 2 * kv_dim, device=DEV)
        bias = torch.randn(q_dim + 2 * kv_dim, device=DEV) * 0.5 if bias_on else None
        qkv = qkv0.clone()
        cache_dtype = torch.float8_e4m3fn if kv_fp8 else torch.bfloat16
        k_scale, v_scale = KV_SCALES if kv_fp8 else (1.0, 1.0)
        keys = nan_like((batch.pages, page_size, kv_dim), cache_dtype)
        values = nan_like((batch.pages, page_size, kv_dim), cache_dtype)
        name = (f"heads {heads}/{kv_heads} dim {head_dim} page {page_size}{' bias' if bias_on else ''}"
                + (" fp8 cache" if kv_fp8 else "") + (" qk norm" if qk else ""))
        if not launched("rope_kv", name, lambda: k.rope_and_write_kv(qkv, bias, batch.seq, batch.pos, batch.tables, cos,
                                                                     sin, keys, values, heads, kv_heads, head_dim,
                                                                     k_scale, v_scale, qk_norm)):
            continue
        x = qkv0.double() + (bias.double() if bias_on else 0.0)
        c, s = cos.double()[batch.pos.long()], sin.double()[batch.pos.long()]
        q = head_normed(x[:, :q_dim].view(-1, heads, head_dim), qk_norm[0])
        kk = head_normed(x[:, q_dim:q_dim + kv_dim].view(-1, kv_heads, head_dim), qk_norm[1])
        # fp32: a bias add, two products and a sum: at most 3 roundings of 2^-24 of these magnitudes
        # (2^-21: twice that, as margin); the QK norm's fp32 normalisation within NORM_FP32 more.
        rel = 2.0**-21 + (NORM_FP32 if qk else 0.0)
        check("rope_q", name, qkv[:, :q_dim], rotate(q, c, s).reshape(batch.tokens, q_dim), 0.0,
              rel * rope_magnitude(q, c, s).reshape(batch.tokens, q_dim))
        untouched = torch.equal(qkv[:, q_dim:], qkv0[:, q_dim:])
        report("rope_kv", name + " k/v rows of qkv unchanged", untouched, "" if untouched else "k/v part of qkv changed")
        slots = batch.slots(batch.seq, batch.pos)
        check_cache("rope_kv_keys", name, cache_rows(keys, kv_dim, slots), rotate(kk, c, s).reshape(-1, kv_dim),
                    k_scale, rel * rope_magnitude(kk, c, s).reshape(-1, kv_dim))
        check_cache("rope_kv_values", name, cache_rows(values, kv_dim, slots), x[:, q_dim + kv_dim:], v_scale, 0.0)
        others = torch.ones(batch.pages * page_size, dtype=torch.bool, device=DEV)
        others[slots] = False
        stray = int((~torch.isnan(cache_rows(keys, kv_dim, others).float())).sum()
                    + (~torch.isnan(cache_rows(values, kv_dim, others).float())).sum())
        report("rope_kv", name + " no write outside the batch's slots", stray == 0, f"stray elements {stray}")


def sequence_rows(batch: Batch, s: int, cache: torch.Tensor, heads, kv_heads, head_dim) -> torch.Tensor:
    """Sequence s's cached rows [start + n, heads, head_dim] (each KV head repeated for its query
    heads), float64."""
    start, n = batch.slices[s]
    key_pos = torch.arange(start + n, device=DEV)
    rows = cache.view(-1, kv_heads, head_dim).double()[batch.slots(torch.full_like(key_pos, s), key_pos)]
    return rows.repeat_interleave(heads // kv_heads, dim=1)


def attention_weights(batch: Batch, s: int, q, keys, heads, kv_heads, head_dim, window, scale) -> torch.Tensor:
    """Causal (optionally windowed) softmax weights [heads, n, start + n] of sequence s's n queries
    (q: those rows) over its keys, float64, GQA."""
    start, n = batch.slices[s]
    qq = q.double().reshape(n, heads, head_dim)
    scores = torch.einsum("nhd,lhd->hnl", qq, sequence_rows(batch, s, keys, heads, kv_heads, head_dim)) * scale
    key_pos = torch.arange(start + n, device=DEV)
    query_pos = torch.arange(start, start + n, device=DEV)[:, None]
    allowed = key_pos[None, :] <= query_pos
    if window:
        allowed &= key_pos[None, :] > query_pos - window
    return torch.softmax(scores.masked_fill(~allowed[None], -math.inf), dim=-1)


def attention_reference(batch: Batch, q, keys, values, heads, kv_heads, head_dim, window, scale) -> torch.Tensor:
    """Causal (optionally windowed) softmax attention per sequence over its pages, float64, GQA."""
    out = torch.empty(batch.tokens, heads, head_dim, dtype=torch.float64, device=DEV)
    first = 0
    for s, (_, n) in enumerate(batch.slices):
        p = attention_weights(batch, s, q[first:first + n], keys, heads, kv_heads, head_dim, window, scale)
        out[first:first + n] = torch.einsum("hnl,lhd->nhd", p, sequence_rows(batch, s, values, heads, kv_heads,
                                                                             head_dim))
        first += n
    return out.reshape(batch.tokens, heads * head_dim)


def attention_spread(batch: Batch, q, keys, heads, kv_heads, head_dim, window, scale) -> torch.Tensor:
    """sqrt(sum_j p_j^2) of each (token, head)'s softmax weights, [tokens, heads]: how far independent
    relative errors of its weights carry into its output (1 for one key, 1/sqrt(L) for L equal ones)."""
    spread = torch.empty(batch.tokens, heads, dtype=torch.float64, device=DEV)
    first = 0
    for s, (_, n) in enumerate(batch.slices):
        p = attention_weights(batch, s, q[first:first + n], keys, heads, kv_heads, head_dim, window, scale)
        spread[first:first + n] = p.pow(2).sum(dim=-1).sqrt().transpose(0, 1)
        first += n
    return spread


def random_kv_cache(batch: Batch, kv_dim: int, kv_fp8: bool):
    """N(0, 1) keys and values in the batch's pages, bf16 or e4m3 of value / KV_SCALES, and the float
    values the kernels should see (dequantized)."""
    k_scale, v_scale = KV_SCALES if kv_fp8 else (1.0, 1.0)
    keys = torch.randn(batch.pages, 16, kv_dim, device=DEV)
    values = torch.randn(batch.pages, 16, kv_dim, device=DEV)
    keys = to_e4m3(keys / k_scale) if kv_fp8 else keys.to(torch.bfloat16)
    values = to_e4m3(values / v_scale) if kv_fp8 else values.to(torch.bfloat16)
    return keys, values, dequantized(keys, k_scale), dequantized(values, v_scale)


def test_attention(k: Kernels) -> None:
    max_splits = k.max_splits()
    # 1B and 8B shapes, a small GQA, MHA at head_dim 32, group 7 (2 tokens a tile), group 32 (two
    # head chunks per KV head).
    # The same shapes again on an fp8 cache (e4m3 of N(0, 1) / scale), against the reference over the
    # dequantized cache.
    shapes = ((32, 8, 64), (32, 8, 128), (8, 2, 64), (4, 4, 32), (28, 4, 128), (64, 2, 64))
    for (heads, kv_heads, head_dim), kv_fp8 in [(shape, False) for shape in shapes] + [(shape, True) for shape in shapes]:
        q_dim, kv_dim = heads * head_dim, kv_heads * head_dim
        batch = Batch(MIXED, 16, kv_dim)
        k_scale, v_scale = KV_SCALES if kv_fp8 else (1.0, 1.0)
        keys, values, ref_keys, ref_values = random_kv_cache(batch, kv_dim, kv_fp8)
        qkv = torch.randn(batch.tokens, q_dim + 2 * kv_dim, device=DEV)  # q read with the fused row stride
        tiles = batch.tiles(k.tile_tokens(heads, kv_heads))
        scale = 1.0 / math.sqrt(head_dim)
        refs = {}
        # fp32 online softmax over at most 1001 keys (fast exp, rescaled partial sums): its error is
        # far below 2^-14 of the largest |v|, while one key dropped or added moves an output by
        # about 1/1001 of that.
        atol = 2.0**-14 * float(ref_values.abs().max())
        for splits, window, fp8 in ((1, 0, False), (3, 0, False), (max_splits, 0, False), (1, 24, False),
                                    (max_splits, 24, False), (1, 0, True), (max_splits, 0, True)):
            if window not in refs:
                refs[window] = attention_reference(batch, qkv[:, :q_dim], ref_keys, ref_values, heads, kv_heads,
                                                   head_dim, window, scale)
            out_scale = 2.5 / E4M3_MAX  # outputs are averages of N(0, 1) values: a few saturate
            out = nan_like((batch.tokens, q_dim), torch.float8_e4m3fn if fp8 else torch.bfloat16)
            partials = nan_like((batch.tokens, heads, splits, head_dim + 2), torch.float32) if splits > 1 else None
            name = (f"heads {heads}/{kv_heads} dim {head_dim} splits {splits}" + (f" window {window}" if window else "")
                    + f" tiles {tiles.shape[0]}" + (" fp8 cache" if kv_fp8 else ""))
            kernel = "attention_fp8" if fp8 else "attention_bf16"
            if launched(kernel, name, lambda: k.paged_attention(
                    qkv, q_dim + 2 * kv_dim, keys, values, batch.tables, batch.seq, batch.pos, tiles, heads, kv_heads,
                    head_dim, window, scale, None if fp8 else out, out if fp8 else None, out_scale, splits, partials,
                    k_scale, v_scale)):
                check_out(kernel, name, out, refs[window], out_scale, atol)


def test_prefill_attention(k: Kernels) -> None:
    """The tensor-core prefill attention over the mixed batch plus a long chunk after a cached prefix
    (several 64-token tiles, several 64-key steps), against attention_reference. It rounds q * scale
    and the softmax weights P to bf16 for its MMAs (an fp8 cache's elements convert exactly): a score
    moves by about 2^-9 of scale * sqrt(sum q_i^2 k_i^2) (~2^-9 for N(0, 1) inputs), a weight by about
    that plus its own rounding, relative, both random in sign (at most 2^-8 each). An output, a
    weighted mean of values, then moves by about 2^-8.5 * sqrt(sum_j p_j^2) * |v| (attention_spread);
    the bound, 2^-7 of that with the largest |v|, is over ten of those standard deviations, while one
    key dropped or added moves the output by about p_j * |v_j - o| (for L equal weights, 1 / L against
    the bound's 2^-7 / sqrt(L))."""
    shapes = ((32, 8, 64), (32, 8, 128), (8, 2, 64), (8, 8, 128), (28, 4, 128), (64, 2, 64), (192, 2, 64))
    for (heads, kv_heads, head_dim), kv_fp8 in [(shape, False) for shape in shapes] + [(shape, True) for shape in shapes]:
        q_dim, kv_dim = heads * head_dim, kv_heads * head_dim
        batch = Batch(MIXED + [(130, 150)], 16, kv_dim)
        k_scale, v_scale = KV_SCALES if kv_fp8 else (1.0, 1.0)
        keys, values, ref_keys, ref_values = random_kv_cache(batch, kv_dim, kv_fp8)
        qkv = torch.randn(batch.tokens, q_dim + 2 * kv_dim, device=DEV)
        tiles = batch.tiles(k.prefill_tile_tokens(heads, kv_heads))
        scale = 1.0 / math.sqrt(head_dim)
        v_max = float(ref_values.abs().max())
        refs = {}
        for window, fp8 in ((0, False), (24, False), (0, True), (24, True)):
            if window not in refs:
                spread = attention_spread(batch, qkv[:, :q_dim], ref_keys, heads, kv_heads, head_dim, window, scale)
                refs[window] = (attention_reference(batch, qkv[:, :q_dim], ref_keys, ref_values, heads, kv_heads,
                                                    head_dim, window, scale),
                                (2.0**-7 * spread * v_max)[:, :, None].expand(-1, -1, head_dim).reshape(batch.tokens,
                                                                                                      q_dim))
            ref, atol = refs[window]
            out_scale = 2.5 / E4M3_MAX
            out = nan_like((batch.tokens, q_dim), torch.float8_e4m3fn if fp8 else torch.bfloat16)
            name = (f"heads {heads}/{kv_heads} dim {head_dim}" + (f" window {window}" if window else "")
                    + f" tiles {tiles.shape[0]}" + (" fp8 cache" if kv_fp8 else ""))
            kernel = "prefill_attn_fp8" if fp8 else "prefill_attn_bf16"
            if launched(kernel, name, lambda: k.prefill_attention(
                    qkv, q_dim + 2 * kv_dim, keys, values, batch.tables, batch.seq, batch.pos, tiles, heads, kv_heads,
                    head_dim, window, scale, None if fp8 else out, out if fp8 else None, out_scale, k_scale, v_scale)):
                check_out(kernel, name, out, ref, out_scale, atol + 2.0**-14 * v_max)


def test_decode_attention(k: Kernels) -> None:
    """The decode step's fused kernel: RoPE of q and the new k, the new k / v written to the cache,
    attention up to and including the new token. Its cache writes are checked as rope_and_write_kv's;
    the attention against attention_reference over the cache as the kernel left it (its own new k and
    v, checked just before; an fp8 cache dequantized) with q rotated in float64."""
    max_splits = k.max_splits()
    # Per sequence: the new token's position. Six tokens: 8 KV heads at 16 splits make 768 blocks, more
    # than three an SM on any Hopper card, so the GQA-4 shapes also run the four-blocks-an-SM build.
    decode = [(0, 1), (5, 1), (100, 1), (1000, 1), (37, 1), (16, 1)]
    # (heads, kv_heads, head_dim, bias, QK norm)
    shapes = ((32, 8, 64, False, False), (32, 8, 128, True, False), (8, 2, 64, True, True), (4, 4, 32, False, True),
              (16, 2, 128, False, True), (24, 12, 64, True, False))
    for (heads, kv_heads, head_dim, bias_on, qk), kv_fp8 in ([(shape, False) for shape in shapes]
                                                            + [(shape, True) for shape in shapes]):
        if not k.decode_supports(heads, kv_heads, head_dim):
            report("decode_attention", f"heads {heads}/{kv_heads} dim {head_dim}", False, "reported unsupported")
            continue
        q_dim, kv_dim = heads * head_dim, kv_heads * head_dim
        qk_norm = qk_norm_weights(qk, head_dim)
        batch = Batch(decode, 16, kv_dim)
        cos, sin = rope_tables(1024, head_dim, 500000.0)
        qkv = torch.randn(batch.tokens, q_dim + 2 * kv_dim, device=DEV)
        bias = torch.randn(q_dim + 2 * kv_dim, device=DEV) * 0.5 if bias_on else None
        slots = batch.slots(batch.seq, batch.pos)
        k_scale, v_scale = KV_SCALES if kv_fp8 else (1.0, 1.0)
        base_k = torch.randn(batch.pages, 16, kv_dim, device=DEV)
        base_v = torch.randn(batch.pages, 16, kv_dim, device=DEV)
        base_k = to_e4m3(base_k / k_scale) if kv_fp8 else base_k.to(torch.bfloat16)
        base_v = to_e4m3(base_v / v_scale) if kv_fp8 else base_v.to(torch.bfloat16)
        for base in (base_k, base_v):  # the kernel must write the new tokens' rows (all ones: NaN in both dtypes)
            cache_bits(base).view(-1, kv_dim)[slots] = 0xFF if kv_fp8 else -1
        x = qkv.double() + (bias.double() if bias_on else 0.0)
        c, s = cos.double()[batch.pos.long()], sin.double()[batch.pos.long()]
        q = rotate(head_normed(x[:, :q_dim].view(-1, heads, head_dim), qk_norm[0]), c, s).reshape(batch.tokens, q_dim)
        kk = head_normed(x[:, q_dim:q_dim + kv_dim].view(-1, kv_heads, head_dim), qk_norm[1])
        want_k = rotate(kk, c, s).reshape(-1, kv_dim)
        k_atol = (2.0**-21 + (NORM_FP32 if qk else 0.0)) * rope_magnitude(kk, c, s).reshape(-1, kv_dim)
        others = torch.ones(batch.pages * 16, dtype=torch.bool, device=DEV)
        others[slots] = False
        atol = 2.0**-14 * float(dequantized(base_v, v_scale).nan_to_num().abs().max())  # as test_attention
        for splits, window, fp8 in ((1, 0, False), (3, 0, False), (max_splits, 0, False), (1, 24, False),
                                    (max_splits, 24, False), (max_splits, 0, True)):
            name = (f"heads {heads}/{kv_heads} dim {head_dim} splits {splits}" + (f" window {window}" if window else "")
                    + (" bias" if bias_on else "") + (" fp8 cache" if kv_fp8 else "") + (" qk norm" if qk else ""))
            kernel = "decode_attn_fp8" if fp8 else "decode_attn_bf16"
            keys, values = base_k.clone(), base_v.clone()
            out_scale = 2.5 / E4M3_MAX
            out = nan_like((batch.tokens, q_dim), torch.float8_e4m3fn if fp8 else torch.bfloat16)
            partials = nan_like((batch.tokens, heads, splits, head_dim + 2), torch.float32)
            counters = torch.zeros(batch.tokens, kv_heads, dtype=torch.int32, device=DEV)
            if not launched(kernel, name, lambda: k.decode_attention(
                    qkv, bias, batch.seq, batch.pos, batch.tables, cos, sin, keys, values, heads, kv_heads, head_dim,
                    window, 1.0 / math.sqrt(head_dim), None if fp8 else out, out if fp8 else None, out_scale, splits,
                    partials, counters, k_scale, v_scale, qk_norm)):
                continue
            check_cache("decode_attn_keys", name, cache_rows(keys, kv_dim, slots), want_k, k_scale, k_atol)
            check_cache("decode_attn_values", name, cache_rows(values, kv_dim, slots), x[:, q_dim + kv_dim:], v_scale,
                        0.0)
            kept = all(torch.equal(cache_bits(got).view(-1, kv_dim)[others], cache_bits(base).view(-1, kv_dim)[others])
                       for got, base in ((keys, base_k), (values, base_v)))
            zeroed = int(counters.abs().sum()) == 0
            report("decode_attention", name + " cache kept, counters zero", kept and zeroed,
                   f"other cache rows {'kept' if kept else 'CHANGED'}, counters {'zero' if zeroed else 'NOT zero'}")
            ref = attention_reference(batch, q, dequantized(keys, k_scale), dequantized(values, v_scale), heads,
                                      kv_heads, head_dim, window, 1.0 / math.sqrt(head_dim))
            check_out(kernel, name, out, ref, out_scale, atol)


# ---------------------------------------------------------------- GEMV and GEMM

# (name, n, k): Llama-3.2-1B and Llama-3.1-8B projections, and an odd n with k not a power of two.
SHAPES = [("1B qkv", 3072, 2048), ("1B o", 2048, 2048), ("1B gate_up", 16384, 2048), ("1B down", 2048, 8192),
          ("8B qkv", 6144, 4096), ("8B gate_up", 28672, 4096), ("odd", 1001, 1040),
          ("long gate_up", 512, 5136)]  # k > 4096: one E4M3 row at split 8 streams through the ring


class Weights:
    """bf16 weights ~ N(0, 0.02) or e4m3 weights ~ N(0, 30), their float64 copies, and the scale a
    product of them and inputs from `inputs` takes (fp8: chosen so that outputs are O(1))."""

    def __init__(self, n: int, k: int, fp8: bool):
        self.fp8 = fp8
        self.w = to_e4m3(torch.randn(n, k, device=DEV) * 30.0) if fp8 else (torch.randn(n, k, device=DEV) * 0.02).to(
            torch.bfloat16)
        self.w64 = self.w.double()
        self.abs64 = self.w64.abs()
        self.scale = 1.0 / (30.0 * 100.0 * math.sqrt(k)) if fp8 else 1.0

    def inputs(self, m: int) -> torch.Tensor:
        k = self.w.shape[1]
        return to_e4m3(torch.randn(m, k, device=DEV) * 100.0) if self.fp8 else torch.randn(m, k, device=DEV).to(
            torch.bfloat16)

    def product(self, x: torch.Tensor):
        """(x wᵀ · scale, sum |x_i w_i| · scale) in float64."""
        x64 = x.double()
        return (x64 @ self.w64.T) * self.scale, (x64.abs() @ self.abs64.T) * self.scale


def dtype_name(fp8: bool) -> str:
    return "fp8" if fp8 else "bf16"


def test_gemv_plain(k: Kernels, weights: Weights, shape: str) -> None:
    n = weights.w.shape[0]
    # E4M3 both ways the autotuner races: input rows staged in shared memory per block, or not.
    splits = (1, 2, 4, 8, 16) if weights.fp8 else (1, 2, 4, 8)  # E4M3's split 16: blocks of 16 warps
    for m, split, stage in itertools.product((1, 2, 3, 8), splits, (True, False) if weights.fp8 else (True,)):
        x = weights.inputs(m)
        ref, mag = weights.product(x)
        beta = 1.0 if m == 3 else 0.0  # m = 3 accumulates onto y (the o / down projections' residual add)
        y = torch.randn(m, n, device=DEV) if beta else nan_like((m, n), torch.float32)
        want = ref + beta * y.double() if beta else ref
        kernel = f"gemv_{dtype_name(weights.fp8)}"
        name = f"{shape} m {m} split {split}" + (" beta 1" if beta else "") + ("" if stage else " unstaged")
        if launched(kernel, name, lambda: k.gemv(weights.w, weights.fp8, m, weights.scale, x, None, None, 0.0, 1.0, y,
                                                 beta, None, 1.0, split, stage)):
            check(kernel, name, y, want, 0.0, DOT_FP32 * mag + 2.0**-23 * want.abs())


# How far the kernel's fp32 normalisation may be from the float64 one, relative: the sum of squares
# (chains of a few dozen adds, then tree reductions), rsqrtf (2 ulp) and two or three products stay
# within ~64 * 2^-24; 2^-17 leaves twice that.
NORM_FP32 = 2.0**-17


def normed_inputs(weights: Weights, m: int, gamma_on: bool):
    """fp32 residual rows, gamma, the input scale, the GEMM input the norm kernels would write (x,
    rounded from the float64 norm) and, per element, how far the kernel's rounding of its fp32 norm
    may land from x: one input ulp where the float64 value lies within NORM_FP32 of a rounding
    boundary, 0 elsewhere."""
    kdim = weights.w.shape[1]
    h = torch.randn(m, kdim, device=DEV) * 2.0
    gamma = (1.0 + 0.1 * torch.randn(kdim, device=DEV)) if gamma_on else None
    in_scale = 4.0 / E4M3_MAX

    def quantize(v: torch.Tensor) -> torch.Tensor:
        return to_e4m3(v / in_scale) if weights.fp8 else v.to(torch.bfloat16)

    normed = rms_normed(h, gamma, 1e-5)
    band = (quantize(normed * (1 + NORM_FP32)).double() - quantize(normed * (1 - NORM_FP32)).double()).abs()
    return h, gamma, in_scale, quantize(normed), band


def silu_act_bound(ref: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
    """How far silu(g) * u can move when g and u are each off by their `bound` (first order)."""
    g, u = ref[:, 0::2], ref[:, 1::2]
    sig = torch.sigmoid(g)
    dsilu = sig * (1 + g * (1 - sig))
    return dsilu.abs() * u.abs() * bound[:, 0::2] + silu(g).abs() * bound[:, 1::2]


def test_gemv_fused(k: Kernels, weights: Weights, shape: str, gate_up: bool) -> None:
    n, kdim = weights.w.shape
    fp8 = weights.fp8
    act_dtype = torch.float8_e4m3fn if fp8 else torch.bfloat16
    act_scale = 2.0 / E4M3_MAX  # SiLU·mul outputs past 2 saturate in the fp8 form
    elem = 1 if fp8 else 2
    splits = (1, 2, 4, 8)
    norm_rows = [m for m in (1, 2, 4) if m * kdim * elem <= 40 * 1024]  # the staged rows fit shared memory
    for i, m in enumerate(norm_rows):
        h, gamma, in_scale, x, band = normed_inputs(weights, m, gamma_on=i != 1)
        ref, mag = weights.product(x)
        bound = DOT_FP32 * mag + (band @ weights.abs64.T) * weights.scale
        split = splits[i % 4]
        name = f"{shape} m {m} split {split}" + (" gamma" if gamma is not None else "")
        scale = weights.scale * (in_scale if fp8 else 1.0)
        ref, bound = ref * (in_scale if fp8 else 1.0), bound * (in_scale if fp8 else 1.0)
        if gate_up:
            act, kernel = nan_like((m, n // 2), act_dtype), f"gemv_norm_silu_{dtype_name(fp8)}"
            if launched(kernel, name, lambda: k.gemv(weights.w, fp8, m, scale, None, h, gamma, 1e-5, in_scale, None, 0.0,
                                                     act, act_scale, split)):
                check_out(kernel, name, act, silu(ref[:, 0::2]) * ref[:, 1::2], act_scale, silu_act_bound(ref, bound))
        else:
            y, kernel = nan_like((m, n), torch.float32), f"gemv_norm_{dtype_name(fp8)}"
            if launched(kernel, name, lambda: k.gemv(weights.w, fp8, m, scale, None, h, gamma, 1e-5, in_scale, y, 0.0,
                                                     None, 1.0, split)):
                check(kernel, name, y, ref, 0.0, bound)
    if fp8:  # split 16 (blocks of 16 warps) with the norm staged by all 16
        h, gamma, in_scale, x, band = normed_inputs(weights, 1, gamma_on=True)
        ref, mag = weights.product(x)
        bound = (DOT_FP32 * mag + (band @ weights.abs64.T) * weights.scale) * in_scale
        y, kernel, name = nan_like((1, n), torch.float32), "gemv_norm_fp8", f"{shape} m 1 split 16 gamma"
        if launched(kernel, name, lambda: k.gemv(weights.w, fp8, 1, weights.scale * in_scale, None, h, gamma, 1e-5,
                                                 in_scale, y, 0.0, None, 1.0, 16)):
            check(kernel, name, y, ref * in_scale, 0.0, bound)
    if not gate_up:
        return
    # E4M3 adds split 16 and one row at split 8: the deep kernel, whose weights go through the
    # shared-memory ring where k > 4096.
    cases = [(1, splits[1]), (5, splits[2]), (8, splits[3])] + ([(3, 16), (1, 8)] if fp8 else [])
    for m, split in cases:
        x = weights.inputs(m)
        ref, mag = weights.product(x)
        act, kernel, name = nan_like((m, n // 2), act_dtype), f"gemv_silu_{dtype_name(fp8)}", f"{shape} m {m} split {split}"
        if launched(kernel, name, lambda: k.gemv(weights.w, fp8, m, weights.scale, x, None, None, 0.0, 1.0, None, 0.0,
                                                 act, act_scale, split)):
            check_out(kernel, name, act, silu(ref[:, 0::2]) * ref[:, 1::2], act_scale,
                      silu_act_bound(ref, DOT_FP32 * mag))


TACTIC_CUBLASLT, TACTIC_GEMV = 0, 1


def test_gemm(k: Kernels, weights: Weights, shape: str) -> None:
    n = weights.w.shape[0]
    dot = DOT_FP8_MMA if weights.fp8 else DOT_FP32
    for m in (1, 64, 257):
        x = weights.inputs(m)
        ref, mag = weights.product(x)
        y0 = torch.randn(m, n, device=DEV)
        kernel = f"cublaslt_{dtype_name(weights.fp8)}"
        algo, proposals = 0, 1
        while algo < proposals:
            beta = 1.0 if algo % 2 else 0.0  # alternate plain and accumulate-onto-y
            y = y0.clone() if beta else nan_like((m, n), torch.float32)
            name = f"{shape} m {m} algo {algo}" + (" beta 1" if beta else "")
            try:
                proposals = k.lt_gemm(weights.fp8, weights.w, x, y, beta, weights.scale, algo)
            except KernelError as e:
                report(kernel, name, False, f"error: {e}")
                break
            want = ref + y0.double() if beta else ref
            check(kernel, f"{name} of {proposals}", y, want, 0.0, dot * mag + 2.0**-23 * want.abs())
            algo += 1
    # TunedGemm's dispatch: kiln-gemv where chosen and m fits it, cuBLASLt otherwise.
    for m, tactic, split in ((1, TACTIC_GEMV, 4), (8, TACTIC_GEMV, 2), (3, TACTIC_CUBLASLT, 1), (64, TACTIC_GEMV, 1)):
        x = weights.inputs(m)
        ref, mag = weights.product(x)
        y = nan_like((m, n), torch.float32)
        on_gemv = tactic == TACTIC_GEMV and m <= 8
        kernel = f"tuned_gemm_{dtype_name(weights.fp8)}"
        name = f"{shape} m {m} " + (f"gemv split {split}" if on_gemv else "cublaslt")
        if launched(kernel, name, lambda: k.tuned_gemm(weights.fp8, weights.w, x, y, 0.0, weights.scale, tactic, split)):
            check(kernel, name, y, ref, 0.0, (DOT_FP32 if on_gemv else dot) * mag + 2.0**-23 * ref.abs())


def test_matmuls(k: Kernels) -> None:
    for fp8 in (False, True):
        for shape, n, kdim in SHAPES:
            weights = Weights(n, kdim, fp8)
            test_gemv_plain(k, weights, shape)
            test_gemv_fused(k, weights, shape, gate_up="gate_up" in shape)
            # cuBLASLt's fp8 kernels need 16-byte aligned dimensions (every fp8 GEMM of an engine has
            # them): the odd shape runs in bf16 only.
            if shape in ("1B qkv", "8B gate_up") or (shape == "odd" and not fp8):
                test_gemm(k, weights, shape)
            del weights
            torch.cuda.empty_cache()
        # The 8B projections SHAPES lacks, for the plain GEMV (8B down: two E4M3 rows staged as f16
        # take 56 KB, past the 48 KB default).
        for shape, n, kdim in (("8B o", 4096, 4096), ("8B down", 4096, 14336)):
            weights = Weights(n, kdim, fp8)
            test_gemv_plain(k, weights, shape)
            del weights
            torch.cuda.empty_cache()


# ---------------------------------------------------------------- errors come back as errors


def test_errors(k: Kernels) -> None:
    """Unsupported launches return the library's error instead of crashing the process."""
    q = torch.zeros(1, 48, device=DEV)
    kv = torch.zeros(1, 16, 48, dtype=torch.bfloat16, device=DEV)
    one = torch.zeros(1, dtype=torch.int32, device=DEV)
    tiles = torch.tensor([[0, 1]], dtype=torch.int32, device=DEV)
    out = torch.zeros(1, 48, dtype=torch.bfloat16, device=DEV)
    attempts = {
        "attention head_dim 48": lambda: k.paged_attention(q, 48, kv, kv, one.view(1, 1), one, one, tiles, 1, 1, 48, 0,
                                                           1.0, out, None, 1.0, 1, None),
        "prefill attention head_dim 48": lambda: k.prefill_attention(q, 48, kv, kv, one.view(1, 1), one, one, tiles, 1,
                                                                     1, 48, 0, 1.0, out, None, 1.0),
        "gemv k 1032 fp8 (k % 16 != 0)": lambda: k.gemv(torch.zeros(16, 1032, dtype=torch.uint8, device=DEV), True, 1,
                                                        1.0, torch.zeros(1, 1032, dtype=torch.uint8, device=DEV), None,
                                                        None, 0.0, 1.0, torch.zeros(1, 16, device=DEV), 0.0, None,
                                                        1.0, 1),
    }
    for name, attempt in attempts.items():
        try:
            attempt()
            report("errors", name, False, "no error returned")
        except KernelError as e:
            report("errors", name, True, f"error: {str(e)[:90]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lib", type=Path, default=ROOT / "native" / "build-cuda" / "libkiln-kernels-abi.so")
    tests = (test_embed, test_rms_norm, test_silu_mul, test_argmax, test_sampling, test_rope, test_attention,
             test_prefill_attention, test_decode_attention, test_matmuls, test_errors)
    names = [t.__name__.removeprefix("test_") for t in tests]
    parser.add_argument("--only", choices=names, action="append",
                        help="run these groups only (repeatable), e.g. matmuls under an A/B switch")
    args = parser.parse_args()
    torch.manual_seed(0)
    k = Kernels(args.lib)
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    for test, name in zip(tests, names):
        if not args.only or name in args.only:
            test(k)
    print(f"{cases - len(failures)} passed, {len(failures)} failed")
    for failure in failures:
        print(f"  FAILED {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
