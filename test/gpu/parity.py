"""GPU parity: Kiln's CUDA backend against Hugging Face transformers on the same GPU, bf16.

Run on the GPU machine after test/gpu/build_native.sh. For each tiny random checkpoint (made here
with transformers and the parity tier's weight init, saved in bf16): `kiln-native build --target
cuda --precision bf16`, then per prompt `kiln-native generate --steps 64 --logits-out`; transformers
(bf16, cuda) runs its own free-running greedy generation and, teacher-forced on the engine's tokens,
the logits under the same context. Pass: identical greedy tokens and, per step, max|kiln - hf| /
max|hf| < 2e-2 (the CPU parity tier's bf16 rule). Prints one line per case and a summary; exits 1
on a failure.

Usage: python3 test/gpu/parity.py --work DIR
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
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "test" / "parity"))
from make_checkpoints import init_weights, write_tokenizer  # noqa: E402

KILN = ROOT / "native" / "build-cuda" / "kiln-native"
STEPS = 64
PROMPT_LENGTHS = (1, 7, 33, 100)
MAX_REL_ERR = 2e-2

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
}


def make_checkpoint(name: str, config: LlamaConfig, out: Path) -> None:
    torch.manual_seed(11)
    model = LlamaForCausalLM(config)
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results = []
    failed = False
    for name, config in CHECKPOINTS.items():
        ckpt = work / name
        make_checkpoint(name, config, ckpt)
        engine = ckpt / "engine.cuda.kiln"
        t0 = time.time()
        subprocess.run([str(KILN), "build", "--model", str(ckpt), "--precision", "bf16", "--target", "cuda",
                        "--out", str(engine), "--max-seq-len", "256"], check=True, stdout=subprocess.DEVNULL)
        build_s = time.time() - t0
        hf = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.bfloat16).cuda().eval()
        for length in PROMPT_LENGTHS:
            prompt = prompt_of(length, config.vocab_size)
            logits_path = work / f"{name}-{length}.bin"
            out = subprocess.run([str(KILN), "generate", "--engine", str(engine), "--tokens", ",".join(map(str, prompt)),
                                  "--steps", str(STEPS), "--logits-out", str(logits_path)],
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
            ok = same and float(rel.max()) < MAX_REL_ERR
            failed |= not ok
            row = {"checkpoint": name, "prompt_len": length, "tokens_identical": same, "first_diff": first_diff,
                   "max_rel_err": float(rel.max()), "mean_rel_err": float(rel.mean()),
                   "top1_agreement": float((kiln_logits.argmax(1) == ref.argmax(1)).mean()),
                   "build_s": round(build_s, 2), "ok": ok}
            results.append(row)
            print(json.dumps(row), flush=True)
        del hf
        torch.cuda.empty_cache()
    (work / "parity.json").write_text(json.dumps(results, indent=1))
    passed = sum(r["ok"] for r in results)
    print(f"gpu parity: {passed} passed, {len(results) - passed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
