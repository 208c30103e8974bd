"""GPU parity: Kiln's CUDA backend against Hugging Face transformers on the same GPU.

Run on the GPU machine after test/gpu/build_native.sh. For each random checkpoint (made here with
transformers and the parity tier's weight init, saved in bf16) and precision: `kiln-native build
--target cuda --precision bf16|fp8` (fp8 calibrated on 16 random sequences), then per prompt
`kiln-native generate --steps 64 --logits-out`; transformers (bf16, cuda) runs its own free-running
greedy generation and, teacher-forced on the engine's tokens, the logits under the same context.
The checkpoints: Llama shapes (head_dim 64 and 128, GQA, llama3 RoPE, tied and untied) and a Qwen3
(QK norm, explicit head_dim).
Pass (the CPU parity tier's rules, test/parity/compare.py): bf16: identical greedy tokens and, per
step, max|kiln - hf| / max|hf| < 2e-2; fp8: teacher-forced top-1 agreement >= 0.9 and that error
< 0.15 (fp8-lmhead: fp8 with `--lm-head fp8`, the lm_head in E4M3 too, by the same rule). With
--full-1b the Llama-3.2-1B shape itself (random weights) runs too, bf16 only. With
--kv-dtype fp8 generation keeps an E4M3 KV cache (`generate --kv-dtype fp8`); every case is then
judged by the fp8 rule, since bf16 weights over an fp8 cache no longer give transformers' exact
tokens. Prints one line per case and a summary; exits 1 on a failure.

Usage: python3 test/gpu/parity.py --work DIR [--precisions bf16,fp8,fp8-lmhead] [--full-1b] [--kv-dtype bf16|fp8]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForCausalLM, LlamaConfig, PretrainedConfig, Qwen3Config  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "test" / "parity"))
from compare import BUILDS  # noqa: E402  (each precision name's build: --precision and extra flags)
from make_checkpoints import init_weights, write_tokenizer  # noqa: E402

KILN = ROOT / "native" / "build-cuda" / "kiln-native"
STEPS = 64
PROMPT_LENGTHS = (1, 7, 33, 100)
RULES = {"bf16": {"tokens_identical": True, "max_rel_err": 2e-2},
         "fp8": {"min_top1_agreement": 0.9, "max_rel_err": 0.15}}

CHECKPOINTS = {
    # GQA 8q/2kv, head_dim 64, untied successor head
    "llama-d64": LlamaConfig(hidden_size=512, intermediate_size=1408, num_hidden_layers=4, num_attention_heads=8,
                             num_key_value_heads=2, vocab_size=4096, max_position_embeddings=512, rms_norm_eps=1e-5,
                             tie_word_embeddings=False, rope_theta=10000.0),
    # Llama 3 shape family: head_dim 128, GQA 4, llama3 RoPE scaling, tied embeddings
    "llama3-d128-tied": LlamaConfig(hidden_size=1024, intermediate_size=2816, num_hidden_layers=3,
                                    num_attention_heads=8, num_key_value_heads=2, vocab_size=8192,
                                    max_position_embeddings=1024, rms_norm_eps=1e-5, tie_word_embeddings=True,
                                    rope_theta=500000.0,
                                    rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
    # Qwen3: QK norm, an explicit head_dim 128 (hidden / heads is 64), tied embeddings
    "qwen3-d128-qk-norm": Qwen3Config(hidden_size=512, intermediate_size=1408, num_hidden_layers=3,
                                      num_attention_heads=8, num_key_value_heads=2, head_dim=128, vocab_size=4096,
                                      max_position_embeddings=512, rms_norm_eps=1e-6, tie_word_embeddings=True,
                                      rope_theta=1000000.0, use_sliding_window=False),
}
FULL_1B = LlamaConfig(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                      num_key_value_heads=8, head_dim=64, vocab_size=128256, max_position_embeddings=131072,
                      rms_norm_eps=1e-5, tie_word_embeddings=True, rope_theta=500000.0,
                      rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})


def make_checkpoint(name: str, config: PretrainedConfig, out: Path) -> None:
    torch.manual_seed(11)
    model = AutoModelForCausalLM.from_config(config)
    init_weights(model, 11)
    model = model.to(torch.bfloat16).eval()
    model.save_pretrained(out, safe_serialization=True)
    write_tokenizer(out, config.vocab_size)


def prompt_of(length: int, vocab: int) -> list[int]:
    return [(i * 7919 + 13) % vocab for i in range(length)]


def hf_greedy(model, prompt: list[int], steps: int) -> list[int]:
    ids = torch.tensor([prompt], device="cuda")
    out = model.generate(ids, max_new_tokens=steps, do_sample=False, min_new_tokens=steps,
                         attention_mask=torch.ones_like(ids), pad_token_id=0, eos_token_id=None)
    return out[0, len(prompt):].tolist()


def calibration_file(out: Path, vocab: int) -> Path:
    """16 random sequences of 8-64 tokens (the CPU parity tier's calibration set)."""
    path = out / "calibration.jsonl"
    rng = np.random.default_rng(424242 + vocab)
    lines = [json.dumps(rng.integers(0, vocab, size=int(rng.integers(8, 65))).tolist()) for _ in range(16)]
    path.write_text("\n".join(lines) + "\n")
    return path


def passes(precision: str, same: bool, rel: float, top1: float) -> bool:
    rule = RULES[precision]
    if rule.get("tokens_identical") and not same:
        return False
    return rel < rule["max_rel_err"] and top1 >= rule.get("min_top1_agreement", 0.0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--precisions", default="bf16,fp8")
    ap.add_argument("--full-1b", action="store_true")
    ap.add_argument("--kv-dtype", choices=("bf16", "fp8"), default="bf16")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results = []
    failed = False
    cases = [(name, config, p) for name, config in CHECKPOINTS.items() for p in args.precisions.split(",")]
    if args.full_1b:
        cases.append(("llama3.2-1b-shape", FULL_1B, "bf16"))
    made = set()
    hf = None
    for name, config, precision in cases:
        ckpt = work / name
        if name not in made:
            make_checkpoint(name, config, ckpt)
            del hf
            torch.cuda.empty_cache()
            hf = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.bfloat16).cuda().eval()
            made.add(name)
        engine = ckpt / f"engine.{precision}.cuda.kiln"
        base, extra = BUILDS[precision]
        build = [str(KILN), "build", "--model", str(ckpt), "--precision", base, "--target", "cuda",
                 "--out", str(engine), "--max-seq-len", "256", *extra]
        if base == "fp8":
            build += ["--calibration", str(calibration_file(ckpt, config.vocab_size))]
        t0 = time.time()
        subprocess.run(build, check=True, stdout=subprocess.DEVNULL)
        build_s = time.time() - t0
        for length in PROMPT_LENGTHS:
            prompt = prompt_of(length, config.vocab_size)
            logits_path = work / f"{name}-{precision}-{length}.bin"
            out = subprocess.run([str(KILN), "generate", "--engine", str(engine), "--tokens", ",".join(map(str, prompt)),
                                  "--steps", str(STEPS), "--logits-out", str(logits_path), "--kv-dtype", args.kv_dtype],
                                 check=True, capture_output=True, text=True)
            tokens = json.loads(out.stdout.strip().splitlines()[-1])["tokens"]
            kiln_logits = np.fromfile(logits_path, dtype=np.float32).reshape(STEPS, config.vocab_size)
            with torch.no_grad():
                ref_tokens = hf_greedy(hf, prompt, STEPS)
                forced = torch.tensor([prompt + tokens[:-1]], device="cuda")
                ref = hf(forced).logits[0, len(prompt) - 1:].float().cpu().numpy()
            rel = np.abs(kiln_logits - ref).max(axis=1) / np.abs(ref).max(axis=1)
            same = tokens == ref_tokens
            first_diff = next((i for i, (a, b) in enumerate(zip(tokens, ref_tokens)) if a != b), None)
            top1 = float((np.array(tokens) == ref.argmax(1)).mean())
            ok = passes("fp8" if args.kv_dtype == "fp8" else base, same, float(rel.max()), top1)
            failed |= not ok
            row = {"checkpoint": name, "precision": precision, "kv_dtype": args.kv_dtype, "prompt_len": length,
                   "tokens_identical": same,
                   "first_diff": first_diff, "max_rel_err": float(rel.max()), "mean_rel_err": float(rel.mean()),
                   "top1_agreement": top1, "build_s": round(build_s, 2), "ok": ok}
            results.append(row)
            print(json.dumps(row), flush=True)
        engine.unlink()
    (work / "parity.json").write_text(json.dumps(results, indent=1))
    passed = sum(r["ok"] for r in results)
    print(f"gpu parity: {passed} passed, {len(results) - passed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
