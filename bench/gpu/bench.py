"""Kiln CUDA backend vs the HBM roofline and Hugging Face transformers, one run on one card.

For each model shape (Llama-3.2-1B, Llama-3-8B; random bf16 weights written straight to
safetensors, no hub): `kiln-native build --target cuda` (cuBLASLt algorithms autotuned on this card),
then `kiln-native bench` for decode at batch 1/8/64 (prompt 128, 64 timed steps, median step) and
prefill of 128/2048-token prompts; transformers (bf16, eager attention, same card, same shapes, KV
cache, plain forward loop) the same. The card's copy bandwidth (device-to-device cudaMemcpy, bytes
read + written) and bf16 matmul rate are measured first, in the same run.

Roofline: decode is memory-bound, so roofline tok/s = batch / (bytes read per step / copy bandwidth),
bytes = every GEMM weight and the lm_head once + the KV cache rows read by attention; prefill is
compute-bound, so its floor is 2 * params * tokens / the measured matmul rate.
Prints one table; writes gpu-latest.json and gpu-section.md (for bench/RESULTS.md) into --out.
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
KILN = ROOT / "native" / "build-cuda" / "kiln-native"

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
DECODE_BATCHES = (1, 8, 64)
DECODE_PROMPT = 128
DECODE_STEPS = 64
PREFILL_LENGTHS = (128, 2048)


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


def matmul_rate() -> float:
    """bf16 FLOP/s of an 8192^3 product on random data (median of 10)."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    times = []
    for i in range(13):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        a @ b
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


def step_bytes(cfg: dict, batch: int, context: int) -> float:
    """Bytes one decode step must read: every GEMM weight and the lm_head (bf16) + KV rows."""
    H, I, L = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    D, nq, nkv, V = cfg["head_dim"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["vocab_size"]
    per_layer = H * (nq + 2 * nkv) * D + nq * D * H + 3 * H * I
    weights = 2 * (L * per_layer + V * H)
    kv = 2 * 2 * L * nkv * D * context * batch
    return weights + kv


def params(cfg: dict) -> int:
    H, I, L = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    D, nq, nkv, V = cfg["head_dim"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["vocab_size"]
    return L * (H * (nq + 2 * nkv) * D + nq * D * H + 3 * H * I) + V * H


def kiln(*args: str) -> dict:
    out = subprocess.run([str(KILN), *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def profile_decode(engine: Path, out: Path, name: str) -> None:
    """Per-kernel GPU time of about one batch-1 decode step (Nsight Compute, direct launches, clocks
    left alone), summed by kernel name: where the step's time goes."""
    import csv
    import shutil

    ncu = shutil.which("ncu") or "/usr/local/cuda/bin/ncu"
    if not Path(ncu).exists():
        log("profile: ncu not found")
        return
    # --cache-control none: caches stay as the step left them (the next kernel's input is often in L2).
    cmd = [ncu, "--clock-control", "none", "--cache-control", "none", "--metrics", "gpu__time_duration.sum", "--csv", "--launch-skip", "1200",
           "--launch-count", "400", str(KILN), "bench", "--engine", str(engine), "--prompt-len", str(DECODE_PROMPT),
           "--steps", "24", "--batch", "1"]
    run = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "KILN_CUDA_GRAPHS": "0"})
    (out / f"ncu-{name}.csv").write_text(run.stdout)
    rows = [r for r in csv.reader(line for line in run.stdout.splitlines() if line.startswith('"'))]
    if len(rows) < 2:
        log(f"profile: ncu gave no rows (rc {run.returncode}): {run.stderr.strip()[-300:]}")
        return
    head = rows[0]
    k_name, k_unit, k_value = head.index("Kernel Name"), head.index("Metric Unit"), head.index("Metric Value")
    scale = {"ns": 1e-3, "us": 1.0, "ms": 1e3, "nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3}
    totals: dict[str, list[float]] = {}
    for r in rows[1:]:
        us = float(r[k_value].replace(",", "")) * scale.get(r[k_unit], 1.0)
        key = r[k_name][:60]
        totals.setdefault(key, []).append(us)
    steps = max(1, sum(len(v) for k, v in totals.items() if "argmax" in k))
    log(f"profile {name}: GPU time per decode step by kernel ({steps} steps seen)")
    for key, v in sorted(totals.items(), key=lambda kv: -sum(kv[1])):
        log(f"  {sum(v) / steps:9.1f} us  {len(v) / steps:5.1f} launches  {key}")


def hf_measure(cfg: dict) -> dict:
    """transformers bf16 eager: decode step time per batch, prefill time per length."""
    from transformers import LlamaConfig, LlamaForCausalLM

    conf = LlamaConfig(**{k: v for k, v in cfg.items() if k not in ("architectures", "model_type", "torch_dtype")})
    conf._attn_implementation = "eager"
    torch.set_default_dtype(torch.bfloat16)  # initialise in bf16 on the GPU: no fp32 copy of an 8B model
    with torch.device("cuda"):
        model = LlamaForCausalLM(conf).eval()
    torch.set_default_dtype(torch.float32)
    res = {"decode": {}, "prefill": {}}
    V = cfg["vocab_size"]
    with torch.no_grad():
        for length in PREFILL_LENGTHS:
            ids = torch.randint(0, V, (1, length), device="cuda")
            times = []
            for i in range(4):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                model(ids, use_cache=True)
                torch.cuda.synchronize()
                if i:
                    times.append(time.perf_counter() - t0)
            res["prefill"][length] = sorted(times)[len(times) // 2] * 1e3
        for batch in DECODE_BATCHES:
            ids = torch.randint(0, V, (batch, DECODE_PROMPT), device="cuda")
            out = model(ids, use_cache=True)
            past = out.past_key_values
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            times = []
            for s in range(DECODE_STEPS + 2):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                out = model(nxt, past_key_values=past, use_cache=True)
                past = out.past_key_values
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)
                nxt.cpu()
                if s >= 2:
                    times.append(time.perf_counter() - t0)
            res["decode"][batch] = sorted(times)[len(times) // 2] * 1e3
            del past, out
    del model
    torch.cuda.empty_cache()
    return res


def write_results(out: Path, card: str, commit: str, bw: float, flops: float, builds: dict, rows: list) -> str:
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    result = {"card": card, "commit": commit, "date": date, "copy_TBps": round(bw / 1e12, 3),
              "matmul_TFLOPs": round(flops / 1e12, 1), "build_s": builds, "rows": rows}
    (out / "gpu-latest.json").write_text(json.dumps(result, indent=1) + "\n")
    header = "| model | phase | batch | Kiln tok/s | Kiln ms | roofline frac | transformers tok/s | vs transformers |"
    lines = [header, "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['phase']} | {r['batch']} | {r['tok_s']} | {r['ms']} | {r['roofline_frac']} | "
                     f"{r['transformers_tok_s']} | {r['vs_transformers']}x |")
    table = "\n".join(lines)
    (out / "gpu-section.md").write_text(
        f"Measured {date} at commit `{commit}` by `bench/gpu/run.sh` on {card}: copy bandwidth "
        f"{bw / 1e12:.2f} TB/s (read+write), bf16 matmul {flops / 1e12:.0f} TFLOP/s; engine builds {builds} s.\n\n"
        + table + "\n")
    return table


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--models", default="llama3.2-1b,llama3-8b")
    ap.add_argument("--no-hf", action="store_true")
    ap.add_argument("--profile", action="store_true", help="also profile a batch-1 decode step with Nsight Compute")
    args = ap.parse_args()
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)

    card = torch.cuda.get_device_name()
    bw = copy_bandwidth()
    flops = matmul_rate()
    log(f"{card}: copy {bw / 1e12:.2f} TB/s (read+write), bf16 matmul {flops / 1e12:.0f} TFLOP/s")
    # The GPU machine gets a working tree without .git: the caller passes the commit.
    commit = os.environ.get("KILN_COMMIT") or subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                                             capture_output=True, text=True).stdout.strip()
    rows = []
    builds = {}
    for name in args.models.split(","):
        ckpt = work / name
        t0 = time.time()
        cfg = write_checkpoint(name, ckpt)
        log(f"{name}: checkpoint in {time.time() - t0:.0f} s")
        engine = work / f"{name}.cuda.kiln"
        t0 = time.time()
        subprocess.run([str(KILN), "build", "--model", str(ckpt), "--precision", "bf16", "--target", "cuda",
                        "--out", str(engine), "--max-seq-len", "4096", "--max-batch", "64"],
                       check=True, stdout=subprocess.DEVNULL)
        builds[name] = round(time.time() - t0, 1)
        log(f"{name}: engine built in {builds[name]} s")
        ours = {"decode": {}, "prefill": {}}
        for batch in DECODE_BATCHES:
            r = kiln("bench", "--engine", str(engine), "--prompt-len", str(DECODE_PROMPT), "--steps", str(DECODE_STEPS),
                     "--batch", str(batch))
            ours["decode"][batch] = r["decode_step_ms"]
            log(f"{name}: kiln decode batch {batch}: {r['decode_step_ms']:.3f} ms/step")
            if batch == 1:
                # What the decode CUDA graphs buy: the same step with direct launches.
                direct = subprocess.run([str(KILN), "bench", "--engine", str(engine), "--prompt-len", str(DECODE_PROMPT),
                                         "--steps", str(DECODE_STEPS), "--batch", "1"], check=True, capture_output=True,
                                        text=True, env={**os.environ, "KILN_CUDA_GRAPHS": "0"})
                ours["no_graphs_ms"] = json.loads(direct.stdout.strip().splitlines()[-1])["decode_step_ms"]
                log(f"{name}: kiln decode batch 1 without CUDA graphs: {ours['no_graphs_ms']:.3f} ms/step")
        if args.profile:
            profile_decode(engine, out, name)
        for length in PREFILL_LENGTHS:
            r = kiln("bench", "--engine", str(engine), "--prompt-len", str(length), "--steps", "2", "--batch", "1")
            ours["prefill"][length] = r["prefill_ms"]
            log(f"{name}: kiln prefill {length}: {r['prefill_ms']:.2f} ms")
        theirs = None if args.no_hf else hf_measure(cfg)
        if theirs:
            log(f"{name}: transformers {theirs}")
        for batch in DECODE_BATCHES:
            ms = ours["decode"][batch]
            tok_s = batch * 1e3 / ms
            context = DECODE_PROMPT + DECODE_STEPS // 2 + 2
            roof = batch / (step_bytes(cfg, batch, context) / bw)
            hf_tok_s = batch * 1e3 / theirs["decode"][batch] if theirs else None
            rows.append(dict(model=name, precision="bf16", batch=batch, phase="decode", tok_s=round(tok_s, 1),
                             ms=round(ms, 3), roofline_frac=round(tok_s / roof, 3),
                             vs_transformers=round(tok_s / hf_tok_s, 2) if hf_tok_s else None,
                             transformers_tok_s=round(hf_tok_s, 1) if hf_tok_s else None,
                             **({"no_graphs_ms": round(ours["no_graphs_ms"], 3)} if batch == 1 else {})))
        for length in PREFILL_LENGTHS:
            ms = ours["prefill"][length]
            floor_ms = 2 * params(cfg) * length / flops * 1e3
            rows.append(dict(model=name, precision="bf16", batch=1, phase=f"prefill-{length}",
                             tok_s=round(length * 1e3 / ms, 1), ms=round(ms, 2), roofline_frac=round(floor_ms / ms, 3),
                             vs_transformers=round(theirs["prefill"][length] / ms, 2) if theirs else None,
                             transformers_tok_s=round(length * 1e3 / theirs["prefill"][length], 1) if theirs else None))
        engine.unlink()
        # Written after every model, so a run cut short still leaves what it measured.
        table = write_results(out, card, commit, bw, flops, builds, rows)
    print(table)



if __name__ == "__main__":
    main()
