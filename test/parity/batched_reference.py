"""Transformers' greedy tokens for the batched-runtime parity check (batched.parity.test.ts).

For every checkpoint of the manifest: 32 prompts of different lengths (seeded by the checkpoint
name), each decoded greedily by transformers (fp32, eager attention, KV cache) for its own number of
steps. Writes one JSON file: {checkpoint: {"prompts", "max_tokens", "tokens", "min_margin"}}, where
min_margin is the smallest top-1 minus top-2 logit over the steps (to tell a near-tie from a bug).
"""

from __future__ import annotations

import argparse
import json
import os
import zlib

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

REQUESTS = 32


@torch.no_grad()
def greedy(model: torch.nn.Module, ids: list[int], steps: int) -> tuple[list[int], float]:
    out = model(input_ids=torch.tensor([ids]), use_cache=True)
    tokens: list[int] = []
    margin = float("inf")
    for _ in range(steps):
        row = out.logits[0, -1].float()
        top2 = torch.topk(row, 2).values
        margin = min(margin, float(top2[0] - top2[1]))
        nxt = int(torch.argmax(row))
        tokens.append(nxt)
        out = model(input_ids=torch.tensor([[nxt]]), past_key_values=out.past_key_values, use_cache=True)
    return tokens, margin


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoints", required=True, help="manifest.json of make_checkpoints.py")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.manual_seed(0)
    manifest = json.load(open(args.checkpoints))
    result = {}
    for ck in manifest["checkpoints"]:
        model = AutoModelForCausalLM.from_pretrained(ck["path"], dtype=torch.float32, attn_implementation="eager").eval()
        rng = np.random.default_rng(zlib.crc32(("batched-" + ck["name"]).encode()))
        prompts = [rng.integers(0, ck["vocab_size"], size=int(1 + (i * 7) % 60)).tolist() for i in range(REQUESTS)]
        max_tokens = [4 + i % 13 for i in range(REQUESTS)]
        runs = [greedy(model, p, n) for p, n in zip(prompts, max_tokens)]
        result[ck["name"]] = {
            "prompts": prompts,
            "max_tokens": max_tokens,
            "tokens": [t for t, _ in runs],
            "min_margin": [m for _, m in runs],
        }
    with open(args.out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
