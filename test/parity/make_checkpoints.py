"""Writes tiny random Hugging Face checkpoints for the parity tier.

Every checkpoint is made by transformers' own model class and saved with `save_pretrained(...,
safe_serialization=True)`, so config.json and the safetensors names/layouts are exactly what the hub
has for that architecture. Weights are random with fixed seeds (deterministic across runs).

Why not the default init (normal(0, 0.02)): with it the logits of a random model are nearly uniform
(std ~0.2, top-1/top-2 gaps ~1e-3), so greedy tokens flip on rounding noise and the test says
nothing. Here every projection gets std 1/sqrt(fan_in) (activations keep unit scale through the
layers, so attention and MLP really move the logits), embeddings std 1, the untied lm_head a gain
of LOGIT_GAIN (logit std ~LOGIT_GAIN), RMSNorm gammas uniform(0.5, 1.5) (a gamma of exactly 1 would
hide a wrong gamma fold) and biases normal(0, 0.5) (zero biases would hide a dropped Qwen2 bias).

Usage: make_checkpoints.py OUT_DIR [--only name,name] ; prints a JSON manifest and writes it to
OUT_DIR/manifest.json. Several test files call it on the same OUT_DIR at once: a lock serializes
them, and a manifest stamped with this script's hash and the library versions is reused as is
(the output is deterministic), so no caller ever sees a checkpoint being rewritten under it.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

LOGIT_GAIN = 4.0
SUCCESSOR_WEIGHT = 3.0


@dataclass
class Spec:
    name: str
    arch: str  # what the report calls it
    model_cls: type[PreTrainedModel]
    config: PretrainedConfig
    seed: int
    save_dtype: torch.dtype = torch.float32
    max_shard_size: str | None = None
    notes: list[str] = field(default_factory=list)


def specs() -> list[Spec]:
    common: dict[str, Any] = {"max_position_embeddings": 512, "rms_norm_eps": 1e-5, "bos_token_id": 1, "eos_token_id": 2}
    return [
        Spec(
            "llama",
            "llama",
            LlamaForCausalLM,
            LlamaConfig(
                hidden_size=128, intermediate_size=352, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=1000, tie_word_embeddings=False, rope_theta=10000.0, **common,
            ),
            seed=1,
            notes=["GQA 4q/2kv", "untied", "vocab 1000 and ffn 352 are not multiples of 64 (tile tails)"],
        ),
        Spec(
            "llama3-tied",
            "llama",
            LlamaForCausalLM,
            LlamaConfig(
                hidden_size=256, intermediate_size=512, num_hidden_layers=3, num_attention_heads=8,
                num_key_value_heads=2, vocab_size=1024, tie_word_embeddings=True, rope_theta=500000.0,
                # original_max_position_embeddings is tiny on purpose: with Llama 3's real 8192 the
                # rescaled frequencies barely turn within a 65-token test and a loader that ignored
                # rope_scaling would still pass. At 32 the scaled/smoothed bands are hit for real.
                rope_scaling={
                    "rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0, "original_max_position_embeddings": 32,
                },
                **common,
            ),
            seed=2,
            notes=["llama3 rope_scaling (orig max pos 32 so it matters)", "tied embeddings", "GQA 8q/2kv"],
        ),
        Spec(
            "mistral",
            "mistral",
            MistralForCausalLM,
            MistralConfig(
                hidden_size=128, intermediate_size=320, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=1, vocab_size=768, tie_word_embeddings=False, rope_theta=1000000.0,
                sliding_window=None, **common,
            ),
            seed=3,
            notes=["MQA 4q/1kv", "untied"],
        ),
        Spec(
            "qwen2",
            "qwen2",
            Qwen2ForCausalLM,
            Qwen2Config(
                hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=896, tie_word_embeddings=False, rope_theta=1000000.0,
                use_sliding_window=False, **common,
            ),
            seed=4,
            notes=["QKV bias", "untied"],
        ),
        Spec(
            "qwen3",
            "qwen3",
            Qwen3ForCausalLM,
            Qwen3Config(
                hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=48, vocab_size=640, tie_word_embeddings=True,
                rope_theta=1000000.0, use_sliding_window=False, **common,
            ),
            seed=5,
            notes=["QK RMSNorm", "explicit head_dim 48 != hidden/heads 32", "tied"],
        ),
        Spec(
            "smollm",
            "llama",
            LlamaForCausalLM,
            LlamaConfig(
                hidden_size=96, intermediate_size=256, num_hidden_layers=4, num_attention_heads=3,
                num_key_value_heads=1, vocab_size=512, tie_word_embeddings=True, rope_theta=10000.0, **common,
            ),
            seed=6,
            notes=["SmolLM-like: 3 heads of 32, MQA, tied, 4 layers"],
        ),
        Spec(
            "llama-sharded",
            "llama",
            LlamaForCausalLM,
            LlamaConfig(
                hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=4, vocab_size=1024, tie_word_embeddings=False, **common,
            ),
            seed=7,
            max_shard_size="300KB",
            notes=["sharded safetensors + model.safetensors.index.json", "MHA 4q/4kv"],
        ),
        Spec(
            "llama-bf16",
            "llama",
            LlamaForCausalLM,
            LlamaConfig(
                hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=1024, tie_word_embeddings=False, **common,
            ),
            seed=8,
            save_dtype=torch.bfloat16,
            notes=["weights stored as bf16"],
        ),
    ]


def successor_head(model: PreTrainedModel, gen: torch.Generator) -> torch.Tensor:
    """Untied lm_head = gain * (gaussian + SUCCESSOR_WEIGHT * embedding of a permuted token).

    The residual stream keeps the current token's embedding, so row pi(t) gets a clear spike and the
    model "predicts" a fixed successor of t, shaped by attention/MLP (which move every logit). With a
    purely gaussian head the top-1/top-2 gap is ~0.2 std on average and ~0.01 std for 1 step in 20:
    bf16 rounding (~0.5%) then flips tokens by chance. Tied models get the same effect for free (the
    spike sits on the current token, so after the prompt they mostly repeat it; the prompt's distinct
    tokens still make attention matter). The logit error metric stays sensitive to every layer: a
    negative control in compare.py checks that. SUCCESSOR_WEIGHT 3 puts the smallest top-1/top-2 gap
    of every reference trajectory at >= 0.07 logit std (4-layer llama-sharded; >= 0.4 for the others),
    several times the engine's bf16 error.
    """
    emb = model.get_input_embeddings().weight.detach()
    vocab, hidden = emb.shape
    perm = torch.randperm(vocab, generator=gen)
    head = torch.randn(vocab, hidden, generator=gen)
    head[perm] += SUCCESSOR_WEIGHT * emb
    return head * (LOGIT_GAIN / math.sqrt(hidden))


def init_weights(model: PreTrainedModel, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    with torch.no_grad():
        # named_parameters() lists a tied weight once (under the embedding name).
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or ".ln_" in name or name.endswith("ln_f.weight"):
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
            elif name.endswith(".bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
            elif "embed_tokens" in name or name.endswith("wte.weight") or name.endswith("wpe.weight"):
                p.copy_(torch.randn(p.shape, generator=gen))
            elif name == "lm_head.weight" and not tied:
                p.copy_(successor_head(model, gen))
            elif p.dim() == 2:
                # nn.Linear stores (out, in); GPT-2's Conv1D stores (in, out): fan_in is the one
                # that is not the output width, close enough for a negative test either way.
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[1]))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)


def write_tokenizer(out: Path, vocab_size: int) -> None:
    """A word-level tokenizer.json ("t0".."tN"), so the loader sees the file a real checkpoint has."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    vocab = {f"t{i}": i for i in range(vocab_size)}
    vocab["<unk>"] = 0
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = Whitespace()
    tok.save(str(out / "tokenizer.json"))


def build(spec: Spec, out: Path) -> dict[str, Any]:
    torch.manual_seed(spec.seed)
    model = spec.model_cls(spec.config)
    init_weights(model, spec.seed)
    model = model.to(spec.save_dtype).eval()
    if out.exists():
        shutil.rmtree(out)
    kwargs: dict[str, Any] = {"safe_serialization": True}
    if spec.max_shard_size:
        kwargs["max_shard_size"] = spec.max_shard_size
    model.save_pretrained(out, **kwargs)
    write_tokenizer(out, spec.config.vocab_size)
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    return {
        "name": spec.name,
        "arch": spec.arch,
        "path": str(out),
        "architectures": model.config.architectures,
        "vocab_size": spec.config.vocab_size,
        "layers": spec.config.num_hidden_layers,
        "hidden": spec.config.hidden_size,
        "saved_dtype": str(spec.save_dtype).removeprefix("torch."),
        "shards": shards,
        "params": sum(p.numel() for p in model.parameters()),
        "notes": spec.notes,
    }


def write_broken(root: Path, base: Path) -> list[dict[str, Any]]:
    """Checkpoints the compiler must refuse, each with the name its error has to mention."""
    out: list[dict[str, Any]] = []

    gpt2_dir = root / "bad-gpt2"
    if gpt2_dir.exists():
        shutil.rmtree(gpt2_dir)
    cfg = GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=512, n_positions=128)
    gpt2 = GPT2LMHeadModel(cfg)
    init_weights(gpt2, 99)
    gpt2.save_pretrained(gpt2_dir, safe_serialization=True)
    out.append({"name": "bad-gpt2", "path": str(gpt2_dir), "must_mention": "GPT2LMHeadModel"})

    tensors = load_file(str(base / "model.safetensors"))
    missing = "model.layers.1.mlp.down_proj.weight"
    d = root / "bad-missing-tensor"
    if d.exists():
        shutil.rmtree(d)
    shutil.copytree(base, d)
    save_file({k: v for k, v in tensors.items() if k != missing}, str(d / "model.safetensors"), {"format": "pt"})
    out.append({"name": "bad-missing-tensor", "path": str(d), "must_mention": missing})

    wrong = "model.layers.0.self_attn.k_proj.weight"
    d = root / "bad-misshapen-tensor"
    if d.exists():
        shutil.rmtree(d)
    shutil.copytree(base, d)
    bad = dict(tensors)
    rows, cols = bad[wrong].shape
    bad[wrong] = torch.zeros(rows + 16, cols, dtype=bad[wrong].dtype)
    save_file(bad, str(d / "model.safetensors"), {"format": "pt"})
    out.append({"name": "bad-misshapen-tensor", "path": str(d), "must_mention": wrong})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--only", default="", help="comma-separated checkpoint names")
    args = ap.parse_args()
    only = {s for s in args.only.split(",") if s}
    root: Path = args.out.resolve()
    root.mkdir(parents=True, exist_ok=True)
    import transformers

    stamp = hashlib.sha256(
        Path(__file__).read_bytes() + f"{torch.__version__} {transformers.__version__} {sorted(only)}".encode()
    ).hexdigest()
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = root / "manifest.json"
        if path.exists():
            old = json.loads(path.read_text())
            if old.get("stamp") == stamp:
                print(json.dumps(old))
                return
            path.unlink()  # stale: no reader may trust the checkpoints while they are rewritten
        torch.set_num_threads(1)  # determinism of init does not depend on it, but keep runs comparable
        manifest: dict[str, Any] = {"stamp": stamp, "checkpoints": [], "broken": []}
        for spec in specs():
            if only and spec.name not in only:
                continue
            manifest["checkpoints"].append(build(spec, root / spec.name))
        if not only or "broken" in only:
            manifest["broken"] = write_broken(root, root / "llama")
        tmp = root / "manifest.json.tmp"
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
        tmp.replace(path)  # atomic: readers see the old manifest or the complete new one
        print(json.dumps(manifest))


if __name__ == "__main__":
    main()
