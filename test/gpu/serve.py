"""The reference half of test/gpu/serve.sh: a random Llama checkpoint, its CUDA engine, and the greedy
tokens `kiln-native generate` (CudaModel alone, one sequence) gives for each prompt.

Writes DIR/cases.json: {engine, cases: [{id, prompt, max_tokens, reference}]}; serve.mjs then runs
the same prompts through the Node ServingEngine and compares.

Usage: python3 test/gpu/serve.py --work DIR --shape tiny|llama3.2-1b
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
KILN = ROOT / "native" / "build" / "cuda" / "kiln-native"

SHAPES = {
    # head_dim 64, GQA 8q/2kv, untied head
    "tiny": {"hidden_size": 512, "intermediate_size": 1408, "num_hidden_layers": 4, "num_attention_heads": 8,
             "num_key_value_heads": 2, "vocab_size": 4096, "max_position_embeddings": 1024,
             "tie_word_embeddings": False, "rope_theta": 10000.0},
    # Llama-3.2-1B: head_dim 64, GQA 32q/8kv, tied head, llama3 RoPE scaling
    "llama3.2-1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                    "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
                    "max_position_embeddings": 131072, "tie_word_embeddings": True, "rope_theta": 500000.0,
                    "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                     "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}},
}
# The tiny shape built without autotuning (serve.sh passes --no-autotune for every shape but tiny):
# one cuBLASLt heuristic algorithm per shape instead of tactics raced per batch bucket.
SHAPES["tiny-untuned"] = SHAPES["tiny"]
# (prompt length, max tokens): short and long prompts, several lengths of output
CASES = [(1, 40), (5, 24), (17, 48), (33, 16), (64, 40), (100, 32), (150, 20), (200, 48)]


def write_checkpoint(shape: str, out: Path) -> dict:
    """Random bf16 weights scaled so logits are well spread (embeddings N(0,1), linears N(0, 1/fan_in))."""
    cfg = dict(SHAPES[shape], architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu",
               rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, torch_dtype="bfloat16")
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator(device="cuda").manual_seed(17)
    H, I, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    D = H // cfg["num_attention_heads"]
    KV = cfg["num_key_value_heads"] * D

    def linear(n: int, k: int) -> torch.Tensor:
        return (torch.randn(n, k, generator=gen, device="cuda") / math.sqrt(k)).to(torch.bfloat16).cpu()

    def norm() -> torch.Tensor:
        return (torch.rand(H, generator=gen, device="cuda") + 0.5).to(torch.bfloat16).cpu()

    t = {"model.embed_tokens.weight": torch.randn(V, H, generator=gen, device="cuda").to(torch.bfloat16).cpu(),
         "model.norm.weight": norm()}
    if not cfg["tie_word_embeddings"]:
        t["lm_head.weight"] = linear(V, H)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = norm()
        t[p + "post_attention_layernorm.weight"] = norm()
        t[p + "self_attn.q_proj.weight"] = linear(H, H)
        t[p + "self_attn.k_proj.weight"] = linear(KV, H)
        t[p + "self_attn.v_proj.weight"] = linear(KV, H)
        t[p + "self_attn.o_proj.weight"] = linear(H, H)
        t[p + "mlp.gate_proj.weight"] = linear(I, H)
        t[p + "mlp.up_proj.weight"] = linear(I, H)
        t[p + "mlp.down_proj.weight"] = linear(H, I)
    save_file(t, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(cfg, indent=1))
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    vocab = {f"t{i}": i for i in range(V)}
    vocab["<unk>"] = 0
    Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>")).save(str(out / "tokenizer.json"))
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--max-seq-len", type=int, default=512)
    ap.add_argument("--no-autotune", action="store_true")
    args = ap.parse_args()
    work = Path(args.work)
    ckpt = work / "checkpoint"
    t0 = time.time()
    cfg = write_checkpoint(args.shape, ckpt)
    engine = work / "engine.cuda.kiln"
    build = [str(KILN), "build", "--model", str(ckpt), "--precision", "bf16", "--target", "cuda", "--out", str(engine),
             "--max-seq-len", str(args.max_seq_len), "--max-batch", str(args.max_batch)]
    subprocess.run(build + (["--no-autotune"] if args.no_autotune else []), check=True, stdout=subprocess.DEVNULL)
    built_s = time.time() - t0
    cases = []
    for n, (length, max_tokens) in enumerate(CASES):
        prompt = [(n * 7919 + k * 104729 + 13) % cfg["vocab_size"] for k in range(length)]
        out = subprocess.run([str(KILN), "generate", "--engine", str(engine), "--tokens", ",".join(map(str, prompt)),
                              "--steps", str(max_tokens)], check=True, capture_output=True, text=True)
        reference = json.loads(out.stdout.strip().splitlines()[-1])["tokens"]
        cases.append({"id": f"c{n}", "prompt": prompt, "max_tokens": max_tokens, "reference": reference})
    (work / "cases.json").write_text(json.dumps({"engine": str(engine), "shape": args.shape, "cases": cases}))
    print(json.dumps({"shape": args.shape, "engine_bytes": engine.stat().st_size, "checkpoint_and_build_s": round(built_s, 1),
                      "cases": len(cases)}), flush=True)


if __name__ == "__main__":
    main()
