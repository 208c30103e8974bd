"""Kiln CUDA backend vs the HBM roofline and Hugging Face transformers, one run on one card.

For each model shape (Llama-3.2-1B, Llama-3-8B; random bf16 weights written straight to
safetensors, no hub) and precision (bf16; fp8 E4M3 calibrated on a few random sequences):
`kiln-native build --target cuda` (GEMM tactics autotuned on this card), then one `kiln-native
bench --suite` process per engine: decode at batch 1/8/64/256 (prompt 128, 64 timed steps, median
step), time to first token of 128/2048-token prompts, and offline throughput (OFFLINE_CASES: many
requests through a continuous-batching loop on the CudaModel). transformers (bf16, eager
attention, same card, same shapes, KV cache, plain forward loop) runs the same shapes; offline as
static batches. The card's copy bandwidth (device-to-device copy, bytes read + written) and
bf16/fp8 matmul rates are measured first, in the same run.

Roofline: decode is memory-bound, so its floor is (weight bytes at the precision's width + lm_head
in bf16 + the KV rows read) / copy bandwidth per step; prefill is compute-bound, its floor
2 * params * tokens / the measured matmul rate of the precision; offline takes the larger of the
two over the whole run (see rows_of). With --kv-fp8, decode runs again with an E4M3 KV cache
(rows with kv_dtype "fp8", whose floor reads one byte per cached element). `--precisions
fp8-lmhead` builds fp8 with `--lm-head fp8` (the lm_head in E4M3 too; rows with lm_head_dtype
"fp8", whose floor reads the lm_head at one byte). Decode rows also carry graph_replay_ms: the same
step's CUDA graph replayed back to back, so ms - graph_replay_ms is the host round trip between
steps (waking on the step's tokens, packing and launching the next). Prints one table; writes gpu-latest.json (the issue's schema,
with extra keys) and gpu-section.md (for bench/RESULTS.md) into --out.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
# KILN_NATIVE: another build (run.sh sets the timeline build's with KILN_CUDA_TIMELINE=1).
KILN = Path(os.environ.get("KILN_NATIVE", ROOT / "native" / "build-cuda" / "kiln-native"))

MODELS = {
    "llama3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                        num_key_value_heads=8, head_dim=64, vocab_size=128256, tie_word_embeddings=True,
                        rope_theta=500000.0,
                        rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
    "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, head_dim=128, vocab_size=128256, tie_word_embeddings=False,
                      rope_theta=500000.0, rope_scaling=None),
}
PRECISIONS = ("bf16", "fp8")
# Engines built differently from their precision's default, named in --precisions beside them: the
# precision they build with and the extra build flags. Their rows carry the precision and say what
# differs (lm_head_dtype), as the fp8-KV rows say kv_dtype.
VARIANTS = {"fp8-lmhead": ("fp8", ["--lm-head", "fp8"])}
DECODE_BATCHES = (1, 8, 64, 256)
DECODE_PROMPT = 128
DECODE_STEPS = 64
PREFILL_LENGTHS = (128, 2048)
# Offline: many requests through the continuous-batching loop (kiln-native bench --offline); the
# transformers baseline is static batching of HF_OFFLINE_BATCH sequences (its eager attention
# materialises [batch, heads, len, len] scores, so large batches of long prompts do not fit).
OFFLINE_CASES = (
    dict(prompt_len=128, output_len=128, requests=1024, concurrency=256, token_budget=8192, hf_batch=64),
    dict(prompt_len=2048, output_len=128, requests=64, concurrency=64, token_budget=8192, hf_batch=8),
)
# TensorRT-LLM's published offline throughput, Llama-3-8B fp8, in/out 128/128, one H100/H200 class
# GPU (NVIDIA's TensorRT-LLM performance overview): about 28k output tokens/s.
TRTLLM_8B_FP8_OFFLINE_128 = 28000.0
CALIBRATION = dict(sequences=4, tokens=64)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def copy_bandwidth() -> float:
    """Bytes read + written per second by a 2 GiB device-to-device copy (median of 20)."""
    n = 2 << 30
    src = torch.empty(n, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    times = []
    for i in range(23):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        dst.copy_(src)
        b.record()
        b.synchronize()
        if i >= 3:
            times.append(a.elapsed_time(b) / 1e3)
    times.sort()
    return 2 * n / times[len(times) // 2]


def matmul_rate(fp8: bool = False) -> float:
    """FLOP/s of an 8192^3 product on random data (median of 10): bf16, or fp8 e4m3 through
    torch._scaled_mm (per-tensor scales, bf16 out)."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    if fp8:
        a8 = a.to(torch.float8_e4m3fn)
        b8 = b.to(torch.float8_e4m3fn).t().contiguous().t()  # column-major second operand
        one = torch.ones((), device="cuda")

        def product():
            return torch._scaled_mm(a8, b8, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
    else:

        def product():
            return a @ b
    times = []
    for i in range(13):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        product()
        e.record()
        e.synchronize()
        if i >= 3:
            times.append(s.elapsed_time(e) / 1e3)
    times.sort()
    return 2 * 8192**3 / times[len(times) // 2]


def hf_config(shape: dict) -> dict:
    cfg = dict(shape)
    cfg.update(architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu", rms_norm_eps=1e-5,
               max_position_embeddings=131072 if shape["rope_scaling"] else 8192, bos_token_id=128000,
               eos_token_id=128001, torch_dtype="bfloat16", attention_bias=False, mlp_bias=False)
    return cfg


def write_checkpoint(name: str, out: Path) -> dict:
    """Random bf16 weights (std 0.02, norms 1) in HF names, written tensor by tensor from the GPU."""
    cfg = hf_config(MODELS[name])
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg))
    if (out / "model.safetensors").exists():
        return cfg
    H, I, L = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    D, nq, nkv, V = cfg["head_dim"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["vocab_size"]
    g = torch.Generator(device="cuda").manual_seed(0)

    def rnd(*shape):
        return (torch.randn(*shape, generator=g, device="cuda", dtype=torch.bfloat16) * 0.02).cpu()

    tensors = {"model.embed_tokens.weight": rnd(V, H), "model.norm.weight": torch.ones(H, dtype=torch.bfloat16)}
    if not cfg["tie_word_embeddings"]:
        tensors["lm_head.weight"] = rnd(V, H)
    for i in range(L):
        p = f"model.layers.{i}."
        tensors[p + "self_attn.q_proj.weight"] = rnd(nq * D, H)
        tensors[p + "self_attn.k_proj.weight"] = rnd(nkv * D, H)
        tensors[p + "self_attn.v_proj.weight"] = rnd(nkv * D, H)
        tensors[p + "self_attn.o_proj.weight"] = rnd(H, nq * D)
        tensors[p + "mlp.gate_proj.weight"] = rnd(I, H)
        tensors[p + "mlp.up_proj.weight"] = rnd(I, H)
        tensors[p + "mlp.down_proj.weight"] = rnd(H, I)
        tensors[p + "input_layernorm.weight"] = torch.ones(H, dtype=torch.bfloat16)
        tensors[p + "post_attention_layernorm.weight"] = torch.ones(H, dtype=torch.bfloat16)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    return cfg




def weight_bytes(cfg: dict, precision: str) -> float:
    """Weight bytes one forward step reads: decoder GEMM weights at the precision's width (fp8: 1
    byte) and the lm_head in bf16 (1 byte in the fp8-lmhead variant)."""
    H, I, L = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    D, nq, nkv, V = cfg["head_dim"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["vocab_size"]
    per_layer = H * (nq + 2 * nkv) * D + nq * D * H + 3 * H * I
    base = VARIANTS.get(precision, (precision,))[0]
    return (1 if base == "fp8" else 2) * L * per_layer + (1 if precision == "fp8-lmhead" else 2) * V * H


def variant_of(row: dict) -> str:
    """The --precisions name a row was measured under."""
    return "fp8-lmhead" if row.get("lm_head_dtype") == "fp8" else row["precision"]


def kv_bytes(cfg: dict, tokens: int, element_bytes: int = 2) -> float:
    """Bytes of the keys and values of `tokens` cached positions (all layers): bf16, or 1 for E4M3."""
    return 2 * element_bytes * cfg["num_hidden_layers"] * cfg["num_key_value_heads"] * cfg["head_dim"] * tokens


def params(cfg: dict) -> int:
    H, I, L = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    D, nq, nkv, V = cfg["head_dim"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["vocab_size"]
    return L * (H * (nq + 2 * nkv) * D + nq * D * H + 3 * H * I) + V * H


def build_engine(cmd: list[str]) -> dict[str, float]:
    """Runs `kiln-native build`; returns the seconds each build phase took, from the times its
    progress lines arrived (device calls are short: where a build spends them decides what to speed up)."""
    phases: dict[str, float] = {}
    current, since = None, time.time()
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as proc:
        for line in proc.stdout:
            if not line.startswith("{"):
                continue
            phase = json.loads(line).get("phase")
            if phase != current:
                now = time.time()
                if current is not None:
                    phases[current] = phases.get(current, 0.0) + now - since
                current, since = phase, now
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, cmd)
    return phases


def kiln_lines(*args: str, env: dict | None = None, binary: Path = KILN) -> list[dict]:
    out = subprocess.run([str(binary), *args], capture_output=True, text=True, env={**os.environ, **(env or {})})
    if out.returncode != 0:
        raise RuntimeError(f"{binary} {args[0]} exited {out.returncode}: {out.stderr.strip()[-2000:]}")
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def write_calibration(path: Path, vocab: int, sequences: int) -> None:
    """Random token ids (the weights are random too: any tokens exercise the same ranges)."""
    g = torch.Generator().manual_seed(5)
    with path.open("w") as f:
        for _ in range(sequences):
            f.write(json.dumps(torch.randint(0, vocab, (CALIBRATION["tokens"],), generator=g).tolist()) + "\n")


def hf_measure(cfg: dict) -> dict:
    """transformers bf16 eager: decode step time per batch, prefill time per length, and offline
    throughput of static batches (one batched prefill, then decode steps; extrapolated from the
    prefill and the median of 8 decode steps)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    conf = LlamaConfig(**{k: v for k, v in cfg.items() if k not in ("architectures", "model_type", "torch_dtype")})
    conf._attn_implementation = "eager"
    torch.set_default_dtype(torch.bfloat16)  # initialise in bf16 on the GPU: no fp32 copy of an 8B model
    with torch.device("cuda"):
        model = LlamaForCausalLM(conf).eval()
    torch.set_default_dtype(torch.float32)
    res = {"decode": {}, "prefill": {}, "offline": {}}
    V = cfg["vocab_size"]

    def timed(fn):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        return out, time.perf_counter() - t0

    def decode_steps(out, steps):
        past = out.past_key_values
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            out = model(nxt, past_key_values=past, use_cache=True)
            past = out.past_key_values
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            nxt.cpu()
            times.append(time.perf_counter() - t0)
        return times

    with torch.no_grad():
        for length in PREFILL_LENGTHS:
            ids = torch.randint(0, V, (1, length), device="cuda")
            times = [timed(lambda: model(ids, use_cache=True))[1] for _ in range(4)][1:]
            res["prefill"][length] = sorted(times)[len(times) // 2] * 1e3
        for batch in DECODE_BATCHES:
            ids = torch.randint(0, V, (batch, DECODE_PROMPT), device="cuda")
            times = decode_steps(model(ids, use_cache=True), DECODE_STEPS + 2)[2:]
            res["decode"][batch] = sorted(times)[len(times) // 2] * 1e3
        for case in OFFLINE_CASES:
            b, p, o = case["hf_batch"], case["prompt_len"], case["output_len"]
            ids = torch.randint(0, V, (b, p), device="cuda")
            model(ids, use_cache=True)  # warm-up of this shape
            out, prefill_s = timed(lambda: model(ids, use_cache=True))
            step_s = sorted(decode_steps(out, 8))[4]
            res["offline"][(p, o)] = b * o / (prefill_s + (o - 1) * step_s)
            del out
    del model
    torch.cuda.empty_cache()
    return res


KERNEL_COSTS: dict[str, dict] = {}  # "<engine> b<batch>" -> its decode line, for kernel-costs.json


def log_kernel_costs(log_name: str, line: dict, out: Path | None) -> None:
    """The decode line's kernel families (kiln-native's kernel_costs), what each costs the step, to
    the log and, with `out`, to kernel-costs.json (every engine and batch of the run in one file: a
    device call returns only so many)."""
    step = line["kernel_costs_step_ms"]
    log(f"{log_name}: batch {line['batch']} step {step:.3f} ms back to back; what each kernel family costs it "
        "(its nodes disabled):")
    timeline = "timeline" in line
    if timeline:
        # a timeline build (KILN_CUDA_TIMELINE=1 bash bench/gpu/run.sh): critical = what the family's
        # launches add to the step's critical path, waited = a launch's first block at its PDL wait
        # before the kernel ahead completed, spread = its last block's release after its first
        # (backend/cuda/timeline.h)
        log(f"  {line['timeline']}; columns: disabled-saves, critical, waited/launch, spread/launch (us)")
    for c in line["kernel_costs"]:
        # null: the graph would not disable it (a cluster launch; KILN_CUDA_DECODE_CLUSTER=0 measures it)
        saved = "       ?" if c["step_ms_without"] is None else f"{(step - c['step_ms_without']) * 1e3:8.1f}"
        marks = ""
        if timeline:
            marks = "".join("       -" if c.get(k) is None else f"{c[k]:8.1f}"
                            for k in ("critical_us", "waited_us", "release_spread_us"))
        log(f"  {saved} us{marks}  {c['launches']:4d} x {c['blocks']:5d} blocks  {c['kernel']}")
    KERNEL_COSTS[f"{log_name} b{line['batch']}"] = line
    if out:
        (out / "kernel-costs.json").write_text(json.dumps(KERNEL_COSTS, indent=1))


def unclustered_kernel_costs(engine: Path, log_name: str, batch: int, out: Path | None) -> None:
    """The kernel costs of one batch again without thread-block clusters: a graph cannot disable a
    node launched with a cluster shape (decode attention's), so its cost is only measured in a step
    whose attention runs without one (a slightly different step: both step times are logged)."""
    suite = {"decode": {"prompt_len": DECODE_PROMPT, "steps": DECODE_STEPS, "batches": [batch], "kernel_costs": [batch]}}
    for line in kiln_lines("bench", "--engine", str(engine), "--suite", json.dumps(suite),
                           env={"KILN_CUDA_DECODE_CLUSTER": "0"}):
        if line["mode"] == "decode" and "kernel_costs" in line:
            log_kernel_costs(f"{log_name} (KILN_CUDA_DECODE_CLUSTER=0)", line, out)


def measure_engine(engine: Path, log_name: str, decode_batches: list[int] | None = None,
                   kernel_costs: list[int] | None = None, out: Path | None = None) -> dict:
    """Every Kiln measurement of one engine: one process for the suite, two more for batch-1 decode
    without CUDA graphs and without Programmatic Dependent Launch (what each buys). With
    `decode_batches`, only decode at those batches (the issue's target rows, in a short call). At the
    `kernel_costs` batches, also what each kernel family costs the step (log_kernel_costs)."""
    suite = {"decode": {"prompt_len": DECODE_PROMPT, "steps": DECODE_STEPS,
                        "batches": decode_batches or list(DECODE_BATCHES), "kernel_costs": kernel_costs or []}}
    if not decode_batches:
        suite["prefill"] = {"lengths": list(PREFILL_LENGTHS), "repeats": 5}
        suite["offline"] = [{k: v for k, v in c.items() if k != "hf_batch"} for c in OFFLINE_CASES]
    res = {"decode": {}, "prefill": {}, "offline": {}}
    for line in kiln_lines("bench", "--engine", str(engine), "--suite", json.dumps(suite)):
        if line["mode"] == "decode":
            res["decode"][line["batch"]] = line["decode_step_ms"]
            replay = line.get("decode_replay_ms") or 0.0
            if replay:
                res.setdefault("replay", {})[line["batch"]] = replay
            log(f"{log_name}: decode batch {line['batch']}: {line['decode_step_ms']:.3f} ms/step"
                + (f" (its graph back to back: {replay:.3f} ms; host round trip "
                   f"{(line['decode_step_ms'] - replay) * 1e3:.1f} us)" if replay else ""))
            if "kernel_costs" in line:
                log_kernel_costs(log_name, line, out)
                if any(c["step_ms_without"] is None for c in line["kernel_costs"]):
                    unclustered_kernel_costs(engine, log_name, line["batch"], out)
        elif line["mode"] == "prefill":
            res["prefill"][line["prompt_len"]] = line["prefill_ms"]
            log(f"{log_name}: prefill {line['prompt_len']}: {line['prefill_ms']:.2f} ms")
        else:
            res["offline"][(line["prompt_len"], line["output_len"])] = line
            log(f"{log_name}: offline {line['prompt_len']}/{line['output_len']}: "
                f"{line['output_tok_per_s']:.0f} output tok/s ({line['seconds']:.1f} s, {line['steps']} steps)")
    if decode_batches:
        return res
    one = ["bench", "--engine", str(engine), "--prompt-len", str(DECODE_PROMPT), "--steps", str(DECODE_STEPS),
           "--batch", "1"]
    res["no_graphs_ms"] = kiln_lines(*one, env={"KILN_CUDA_GRAPHS": "0"})[-1]["decode_step_ms"]
    res["no_pdl_ms"] = kiln_lines(*one, env={"KILN_CUDA_PDL": "0"})[-1]["decode_step_ms"]
    log(f"{log_name}: decode batch 1 without graphs {res['no_graphs_ms']:.3f} ms, without PDL {res['no_pdl_ms']:.3f} ms")
    return res


def measure_kv_fp8(engine: Path, log_name: str, batches: list[int]) -> dict:
    """Decode step time at each batch with an E4M3 KV cache (one `bench --kv-dtype fp8` process per
    batch: the suite runs the engine's default cache)."""
    times = {}
    for batch in batches:
        line = kiln_lines("bench", "--engine", str(engine), "--prompt-len", str(DECODE_PROMPT), "--steps",
                          str(DECODE_STEPS), "--batch", str(batch), "--kv-dtype", "fp8")[-1]
        times[batch] = line["decode_step_ms"]
        log(f"{log_name}: decode batch {batch}, fp8 KV cache: {times[batch]:.3f} ms/step")
    return times


def rows_of(name: str, precision: str, cfg: dict, ours: dict, theirs: dict | None, bw: float, rate: float) -> list:
    rows = []

    def ratio(a, b):
        return round(a / b, 2) if b else None

    decodes = [(batch, ms, "bf16") for batch, ms in sorted(ours["decode"].items())]
    decodes += [(batch, ms, "fp8") for batch, ms in sorted(ours.get("decode_kv_fp8", {}).items())]
    for batch, ms, kv_dtype in decodes:
        tok_s = batch * 1e3 / ms
        context = DECODE_PROMPT + DECODE_STEPS // 2 + 2
        kv = kv_bytes(cfg, context * batch, 1 if kv_dtype == "fp8" else 2)
        floor_s = (weight_bytes(cfg, precision) + kv) / bw
        hf = batch * 1e3 / theirs["decode"][batch] if theirs else None
        row = dict(model=name, precision=precision, batch=batch, phase="decode", tok_s=round(tok_s, 1),
                   roofline_frac=round(floor_s * 1e3 / ms, 3), vs_transformers=ratio(tok_s, hf), ms=round(ms, 3),
                   prompt_len=DECODE_PROMPT, transformers_tok_s=round(hf, 1) if hf else None)
        if kv_dtype == "fp8":
            row["kv_dtype"] = "fp8"  # transformers' figure is its bf16 cache's
        elif batch in ours.get("replay", {}):
            row["graph_replay_ms"] = round(ours["replay"][batch], 3)  # the step without the host between

        if batch == 1 and kv_dtype == "bf16" and "no_graphs_ms" in ours:
            row.update(no_graphs_ms=round(ours["no_graphs_ms"], 3), no_pdl_ms=round(ours["no_pdl_ms"], 3))
        rows.append(row)
    for length, ms in sorted(ours["prefill"].items()):
        floor_ms = 2 * params(cfg) * length / rate * 1e3
        hf = length * 1e3 / theirs["prefill"][length] if theirs else None
        rows.append(dict(model=name, precision=precision, batch=1, phase="prefill", tok_s=round(length * 1e3 / ms, 1),
                         roofline_frac=round(floor_ms / ms, 3), vs_transformers=ratio(length * 1e3 / ms, hf),
                         ms=round(ms, 2), prompt_len=length, transformers_tok_s=round(hf, 1) if hf else None))
    for case in OFFLINE_CASES:
        p, o = case["prompt_len"], case["output_len"]
        if (p, o) not in ours["offline"]:
            continue
        r = ours["offline"][(p, o)]
        # Floor: the larger of the arithmetic of every token at the matmul rate and the weight (+ KV)
        # reads of the fewest decode steps the concurrency allows.
        waves = -(-case["requests"] // case["concurrency"])
        mean_context = p + o // 2
        compute_s = 2 * params(cfg) * case["requests"] * (p + o) / rate
        memory_s = waves * o * (weight_bytes(cfg, precision) + kv_bytes(cfg, mean_context * case["concurrency"])) / bw
        hf = theirs["offline"][(p, o)] if theirs else None
        row = dict(model=name, precision=precision, batch=case["concurrency"], phase="offline",
                   tok_s=round(r["output_tok_per_s"], 1), roofline_frac=round(max(compute_s, memory_s) / r["seconds"], 3),
                   vs_transformers=ratio(r["output_tok_per_s"], hf), prompt_len=p, output_len=o,
                   requests=case["requests"], concurrency=case["concurrency"], token_budget=case["token_budget"],
                   seconds=round(r["seconds"], 2), total_tok_s=round(r["total_tok_per_s"], 1),
                   transformers_tok_s=round(hf, 1) if hf else None,
                   transformers_static_batch=case["hf_batch"])
        if name == "llama3-8b" and precision == "fp8" and p == 128 and o == 128:
            row["vs_trtllm_published"] = round(r["output_tok_per_s"] / TRTLLM_8B_FP8_OFFLINE_128, 3)
        rows.append(row)
    if precision in VARIANTS:
        for row in rows:
            row.update(precision=VARIANTS[precision][0], lm_head_dtype="fp8")
    return rows


def reuse_hf(rows: list, earlier: dict) -> None:
    """Rows measured without transformers take its figure from the row they replace (same card type,
    an earlier call, named in transformers_from)."""
    def key(r):  # an fp8-KV decode row takes the bf16 row's figure: transformers runs a bf16 cache
        return r["model"], r["precision"], r["phase"], r["batch"], r.get("prompt_len"), r.get("output_len")

    old = {key(r): r for r in earlier["rows"]}
    for r in rows:
        before = old.get(key(r))
        if not before or not before.get("transformers_tok_s"):
            continue
        r["transformers_tok_s"] = before["transformers_tok_s"]
        r["vs_transformers"] = round(r["tok_s"] / before["transformers_tok_s"], 2)
        r["transformers_from"] = (before.get("transformers_from") or before.get("measured", {}).get("transformers")
                                  or f"an earlier call, before {earlier['date']}")


def attach_hf(rows: list, name: str, theirs: dict) -> None:
    """Fills the transformers columns of `name`'s rows measured in an earlier call (--hf-only)."""
    for r in rows:
        if r["model"] != name:
            continue
        if r["phase"] == "decode":
            hf = r["batch"] * 1e3 / theirs["decode"][r["batch"]]
        elif r["phase"] == "prefill":
            hf = r["prompt_len"] * 1e3 / theirs["prefill"][r["prompt_len"]]
        else:
            hf = theirs["offline"][(r["prompt_len"], r["output_len"])]
        r["transformers_tok_s"] = round(hf, 1)
        r["vs_transformers"] = round(r["tok_s"] / hf, 2)


def write_results(out: Path, meta: dict, rows: list) -> str:
    result = {**meta, "rows": rows}
    (out / "gpu-latest.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = ["| model | precision | phase | batch | in/out | Kiln tok/s | ms | roofline frac | transformers tok/s | vs transformers |",
             "|---|---|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        shape = f"{r.get('prompt_len', '')}/{r.get('output_len', '')}" if r["phase"] == "offline" else str(r.get("prompt_len", ""))
        # Rows of a call that measured no transformers figure (--decode-batches, --no-hf) say so.
        theirs, ratio = r.get("transformers_tok_s"), r.get("vs_transformers")
        precision = (r["precision"] + (", lm_head fp8" if r.get("lm_head_dtype") == "fp8" else "")
                     + (", KV fp8" if r.get("kv_dtype") == "fp8" else ""))
        lines.append(f"| {r['model']} | {precision} | {r['phase']} | {r['batch']} | {shape} | {r['tok_s']} | "
                     f"{r.get('ms', r.get('seconds', ''))} | {r['roofline_frac']} | "
                     f"{theirs if theirs is not None else 'not measured'} | "
                     f"{f'{ratio}x' if ratio is not None else '-'} |")
    table = "\n".join(lines)
    (out / "gpu-section.md").write_text(
        f"Measured {meta['date']} at commit `{meta['commit']}` by `bench/gpu/run.sh` on {meta['card']}: copy bandwidth "
        f"{meta['copy_TBps']} TB/s (read+write), matmul {meta['matmul_TFLOPs']} TFLOP/s bf16, {meta['matmul_fp8_TFLOPs']} fp8; "
        f"engine builds {meta['build_s']} s.\n\n" + table + "\n")
    return table


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--models", default="llama3.2-1b,llama3-8b")
    ap.add_argument("--precisions", default=",".join(PRECISIONS),
                    help=f"comma-separated: {', '.join(PRECISIONS)}, or the variants {', '.join(VARIANTS)}")
    ap.add_argument("--append", help="a gpu-latest.json of an earlier call: its rows of other models and precisions are kept")
    ap.add_argument("--no-hf", action="store_true")
    ap.add_argument("--profile", action="store_true",
                    help="also profile a decode step with Nsight Compute (per kernel: time, launches, DRAM GB/s)")
    ap.add_argument("--profile-batches", default="1", metavar="B1,B2,...",
                    help="the decode batches --profile looks at (each at most the engine's largest batch)")
    ap.add_argument("--only-profile", action="store_true", help="build and profile, measure nothing else")
    ap.add_argument("--decode-batches", metavar="B1,B2,...",
                    help="measure only decode at these batches (no prefill, offline or transformers; engines built for "
                         "at most the largest); with --append the earlier rows of everything else are kept")
    ap.add_argument("--kernel-costs", metavar="B1,B2,...",
                    help="at these decode batches (of those measured) also time the step's graph with each kernel "
                         "family disabled in turn: what each costs the step as it runs (Nsight Compute serializes "
                         "kernels); a table in the log and kernel-costs.json in --out")
    ap.add_argument("--calibration-sequences", type=int, default=CALIBRATION["sequences"],
                    help="fp8 calibration sequences (fewer build faster; decode speed does not depend on them)")
    ab = ap.add_mutually_exclusive_group()
    ab.add_argument("--ab", metavar="VAR=V1,V2,...",
                    help="instead of the table: decode of each engine at each --decode-batches batch (default 1 and 8) "
                         "under each value of one environment variable, interleaved over rounds (what a switch "
                         "buys, side by side)")
    ab.add_argument("--ab-binary", metavar="PATH",
                    help="instead of the table: like --ab, between this kiln-native build ('base') and the tree's "
                         "('head'), on the engine the tree's build makes (bench/gpu/ab_builds.sh)")
    ap.add_argument("--ab-prefill", action="store_true",
                    help="with --ab: also time each prefill length's first token under every value")
    ap.add_argument("--ab-rounds", type=int, default=3, metavar="N",
                    help="with --ab or --ab-binary: rounds of every variant in turn (default 3; differences near 1%% "
                         "want more)")
    ap.add_argument("--keep-engines", action="store_true",
                    help="leave the engines in --work and use one already there instead of building it (an --ab run "
                         "and the table rows of its winner from one build; the engine must have been built for the "
                         "same --decode-batches)")
    ap.add_argument("--kv-fp8", action="store_true",
                    help="also decode each engine with an E4M3 KV cache at the decode batches (rows with kv_dtype fp8)")
    ap.add_argument("--hf-only", action="store_true",
                    help="measure only transformers and fill its columns into the --append rows of the models")
    args = ap.parse_args()
    if args.ab_rounds < 1:
        ap.error(f"--ab-rounds must be at least 1, got {args.ab_rounds}")
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)

    card = torch.cuda.get_device_name()
    bw = copy_bandwidth()
    rates = {"bf16": matmul_rate()}
    try:
        rates["fp8"] = matmul_rate(fp8=True)
    except (RuntimeError, AttributeError) as e:  # a torch without _scaled_mm on this card
        rates["fp8"] = 2 * rates["bf16"]
        log(f"fp8 matmul rate not measured ({e}); taking twice the bf16 rate")
    log(f"{card}: copy {bw / 1e12:.2f} TB/s (read+write), matmul {rates['bf16'] / 1e12:.0f} TFLOP/s bf16, "
        f"{rates['fp8'] / 1e12:.0f} fp8")
    # The GPU machine gets a working tree without .git: the caller passes the commit.
    commit = os.environ.get("KILN_COMMIT") or subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                                             capture_output=True, text=True).stdout.strip()
    models = args.models.split(",")
    precisions = args.precisions.split(",")
    decode_batches = [int(b) for b in args.decode_batches.split(",")] if args.decode_batches else None
    kernel_costs = [int(b) for b in args.kernel_costs.split(",")] if args.kernel_costs else None
    # Every engine serves every batch this script can ask of it, so a kept one fits any later run.
    engine_max_batch = max([*DECODE_BATCHES, *(decode_batches or []), *(c["concurrency"] for c in OFFLINE_CASES)])
    rows, builds = [], {}
    if args.append:
        earlier = json.loads(Path(args.append).read_text())
        # fp8-KV rows are measured again only with --kv-fp8.
        def measured_again(r):
            if r["model"] not in models or variant_of(r) not in precisions:
                return False
            if r.get("kv_dtype") == "fp8":
                return args.kv_fp8 and r["batch"] in (decode_batches or DECODE_BATCHES)
            return not decode_batches or (r["phase"] == "decode" and r["batch"] in decode_batches)
        keep = (lambda r: True) if args.hf_only else (lambda r: not measured_again(r))
        rows = [r for r in earlier["rows"] if keep(r)]
        builds = {k: v for k, v in earlier.get("build_s", {}).items()
                  if args.hf_only or k.split(":")[0] not in models or k.split(":")[1] not in precisions}
        # Rows kept from an earlier call name that call's card, commit and date.
        for r in rows:
            r.setdefault("measured", {"commit": earlier["commit"], "date": earlier["date"], "card": earlier["card"]})
    meta = {"card": card, "commit": commit,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "copy_TBps": round(bw / 1e12, 3), "matmul_TFLOPs": round(rates["bf16"] / 1e12, 1),
            "matmul_fp8_TFLOPs": round(rates["fp8"] / 1e12, 1), "build_s": builds,
            "offline_note": "continuous batching on the CudaModel (kiln-native bench --offline): batch = concurrency; "
                            "transformers: static batches of transformers_static_batch, extrapolated"}
    table = ""
    for name in models:
        if args.hf_only:
            cfg = hf_config(MODELS[name])
            theirs = hf_measure(cfg)
            log(f"{name}: transformers {theirs}")
            attach_hf(rows, name, theirs)
            table = write_results(out, meta, rows)
            continue
        ckpt = work / name
        t0 = time.time()
        cfg = write_checkpoint(name, ckpt)
        log(f"{name}: checkpoint in {time.time() - t0:.0f} s")
        ours = {}
        for precision in precisions:
            engine = work / f"{name}.{precision}.cuda.kiln"
            base, extra = VARIANTS.get(precision, (precision, []))
            cmd = [str(KILN), "build", "--model", str(ckpt), "--precision", base, "--target", "cuda",
                   "--out", str(engine), "--max-seq-len", "4096", "--max-batch", str(engine_max_batch), *extra]
            if base == "fp8":
                write_calibration(work / "calibration.jsonl", cfg["vocab_size"], args.calibration_sequences)
                cmd += ["--calibration", str(work / "calibration.jsonl")]
            if args.keep_engines and engine.exists():
                log(f"{name} {precision}: engine kept from an earlier run ({engine})")
            else:
                t0 = time.time()
                phases = build_engine(cmd)
                builds[f"{name}:{precision}"] = round(time.time() - t0, 1)
                log(f"{name} {precision}: engine built in {builds[f'{name}:{precision}']} s ("
                    + ", ".join(f"{phase} {seconds:.1f} s" for phase, seconds in phases.items()) + ")")
            if args.ab or args.ab_binary:
                ab_compare(engine, f"{name} {precision}", ab_variants(args.ab, args.ab_binary), decode_batches or [1, 8],
                           args.ab_prefill, args.ab_rounds)
            elif not args.only_profile:
                ours[precision] = measure_engine(engine, f"{name} {precision}", decode_batches, kernel_costs, out)
                if args.kv_fp8:
                    ours[precision]["decode_kv_fp8"] = measure_kv_fp8(engine, f"{name} {precision}",
                                                                      decode_batches or list(DECODE_BATCHES))
            # The autotune table always goes to the log; to a file of its own only with a profile (a
            # device call returns only so many files).
            profiled = args.profile or args.only_profile
            write_tactics(engine, out / f"tactics-{name}-{precision}.txt" if profiled else None)
            if profiled:
                for batch in (int(b) for b in args.profile_batches.split(",")):
                    profile_decode(engine, out, f"{name}-{precision}-b{batch}", batch)
            if not args.keep_engines:
                engine.unlink()
        if args.only_profile or args.ab or args.ab_binary:
            continue
        theirs = None if args.no_hf or decode_batches else hf_measure(cfg)
        if theirs:
            log(f"{name}: transformers {theirs}")
        for precision, measured in ours.items():
            new = rows_of(name, precision, cfg, measured, theirs, bw, rates[VARIANTS.get(precision, (precision,))[0]])
            if args.append and not theirs:
                reuse_hf(new, earlier)
            rows += new
        # Written after every model, so a run cut short still leaves what it measured.
        table = write_results(out, meta, rows)
    print(table)



def ab_variants(spec: str | None, base_binary: str | None) -> list[tuple[str, Path, dict]]:
    """What --ab and --ab-binary compare: (label, kiln-native binary, environment) per side."""
    if base_binary:
        return [("base", Path(base_binary), {}), ("head", KILN, {})]
    var, _, values = (spec or "").partition("=")
    return [(f"{var}={value}", KILN, {var: value}) for value in values.split(",")]


def ab_compare(engine: Path, log_name: str, variants: list[tuple[str, Path, dict]], batches: list[int],
               prefill: bool = False, rounds: int = 3) -> None:
    """Decode step time (and with `prefill`, time to first token of each PREFILL_LENGTHS prompt) of
    one engine under each variant: a value of one environment variable, or another build of
    kiln-native. The variants take turns within every round, so a drift of the card (clocks, heat)
    lands on all of them alike. Each time goes to the log as it is measured, so a run cut short by
    its time limit still says what it saw."""
    times: dict[tuple[str, str], list[float]] = {}

    def record(label: str, what: str, ms: float, round_: int) -> None:
        times.setdefault((label, what), []).append(ms)
        log(f"{log_name}: round {round_ + 1}: {label} {what}: {ms:.3f} ms")

    for round_ in range(rounds):
        for label, binary, env in variants:
            for batch in batches:
                line = kiln_lines("bench", "--engine", str(engine), "--prompt-len", str(DECODE_PROMPT), "--steps",
                                  str(DECODE_STEPS), "--batch", str(batch), env=env, binary=binary)[-1]
                record(label, f"decode batch {batch}", line["decode_step_ms"], round_)
            if prefill:
                suite = {"prefill": {"lengths": list(PREFILL_LENGTHS), "repeats": 3}}
                for line in kiln_lines("bench", "--engine", str(engine), "--suite", json.dumps(suite), env=env,
                                       binary=binary):
                    record(label, f"prefill {line['prompt_len']}", line["prefill_ms"], round_)
    for (label, what), ms in times.items():
        log(f"{log_name}: {label} {what}: median {sorted(ms)[len(ms) // 2]:.3f} ms "
            f"(rounds: {', '.join(f'{m:.3f}' for m in ms)})")


def write_tactics(engine: Path, path: Path | None) -> None:
    """The engine's autotune table as one line per (shape, bucket): the tactic taken and the time of
    each contender, so a profile can be read against what the build chose."""
    header = json.loads(subprocess.run([str(KILN), "inspect", str(engine)], check=True, capture_output=True,
                                       text=True).stdout)
    def best(times: dict) -> str:
        return f"{min(times.values()):.1f} ({min(times, key=times.get)})" if times else "-"

    lines = []
    for e in header.get("autotune", {}).get("entries", []):
        gemv = e.get("kiln_gemv_us") or {}
        lines.append(f"n {e['n']:6} k {e['k']:6} {e['dtype']:6} m {e['bucket']:5}: {e['tactic']:9} {e['us']:8.1f} us "
                     f"(cublaslt {e['cublaslt_us']:.1f}, best kiln-gemv {best(gemv)})")
    if path:
        path.write_text("\n".join(lines) + "\n")
    log(f"{engine.name} tactics, {len(lines)} entries:\n" + "\n".join(lines))


def profile_decode(engine: Path, out: Path, name: str, batch: int) -> None:
    """Per-kernel GPU time and DRAM traffic of about one decode step of `batch` sequences (Nsight
    Compute, direct launches, clocks left alone), summed by kernel name: where the step's time goes,
    and how far each kernel is from the card's bandwidth."""
    import csv
    import shutil

    ncu = shutil.which("ncu") or "/usr/local/cuda/bin/ncu"
    if not Path(ncu).exists():
        log("profile: ncu not found")
        return
    bench_cmd = [str(KILN), "bench", "--engine", str(engine), "--prompt-len", str(DECODE_PROMPT), "--steps", "24",
                 "--batch", str(batch)]
    env = {**os.environ, "KILN_CUDA_GRAPHS": "0"}
    # --cache-control none: caches stay as the step left them (the next kernel's input is often in L2).
    # `kiln-native bench` starts the profiler at its first measured decode step, after the batch's
    # prefills and the warm-up steps.
    cmd = [ncu, "--clock-control", "none", "--cache-control", "none", "--metrics",
           "gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum", "--csv", "--profile-from-start", "off",
           "--launch-count", "400", *bench_cmd]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env)
    (out / f"ncu-{name}.csv").write_text(run.stdout)
    rows = [r for r in csv.reader(line for line in run.stdout.splitlines() if line.startswith('"'))]
    if len(rows) < 2:
        log(f"profile: ncu gave no rows (rc {run.returncode}): {run.stderr.strip()[-300:]}")
        return
    head = rows[0]
    k_id, k_name = head.index("ID"), head.index("Kernel Name")
    k_metric, k_unit, k_value = head.index("Metric Name"), head.index("Metric Unit"), head.index("Metric Value")
    to_us = {"ns": 1e-3, "us": 1.0, "ms": 1e3, "nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3}
    to_bytes = {"byte": 1.0, "Kbyte": 1e3, "Mbyte": 1e6, "Gbyte": 1e9, "KB": 1e3, "MB": 1e6, "GB": 1e9}
    launches: dict[str, dict] = {}
    for r in rows[1:]:
        launch = launches.setdefault(r[k_id], {"name": r[k_name][:60], "us": 0.0, "bytes": 0.0})
        value = float(r[k_value].replace(",", ""))
        if r[k_metric].startswith("gpu__time_duration"):
            launch["us"] = value * to_us.get(r[k_unit], 1.0)
        else:
            launch["bytes"] += value * to_bytes.get(r[k_unit], 1.0)
    totals: dict[str, list[dict]] = {}
    for launch in launches.values():
        totals.setdefault(launch["name"], []).append(launch)
    steps = max(1, sum(len(v) for k, v in totals.items() if "argmax" in k))
    log(f"profile {name}: GPU time per decode step by kernel ({steps} steps seen; GB/s = DRAM read + write)")
    for key, v in sorted(totals.items(), key=lambda kv: -sum(x["us"] for x in kv[1])):
        us, traffic = sum(x["us"] for x in v), sum(x["bytes"] for x in v)
        log(f"  {us / steps:9.1f} us  {len(v) / steps:5.1f} launches  {traffic / max(us, 1e-9) / 1e3:7.0f} GB/s  {key}")
    # One layer's launches of a decode step in detail: what bounds each kernel (throughput, pipe use,
    # occupancy, stalls). The skip passes the step's embedding and first layer.
    detail = [ncu, "--clock-control", "none", "--cache-control", "none", "--section", "SpeedOfLight", "--section",
              "ComputeWorkloadAnalysis", "--section", "Occupancy", "--section", "LaunchStats", "--section",
              "WarpStateStats", "--profile-from-start", "off", "--launch-skip", "12", "--launch-count", "12",
              *bench_cmd]
    run = subprocess.run(detail, capture_output=True, text=True, env=env)
    (out / f"ncu-detail-{name}.txt").write_text(run.stdout + run.stderr[-2000:])


if __name__ == "__main__":
    main()
