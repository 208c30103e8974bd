"""A transformers-backed stand-in for `kiln-native` (build / generate), same CLI contract.

Why it exists: it tests the parity harness itself (compare.py must pass a correct implementation and
report the noise a correct bf16 / int8-weight / fp8 implementation has), and it is an executable
statement of the CLI contract. It is never the thing under test.

Precision emulation: bf16 = the model run in torch bfloat16 (weights and activations);
int8-weight = symmetric per-output-channel int8 weights (dequantized), activations fp32;
fp8 = E4M3 per-tensor weights and per-tensor static activation scales from calibration amax.
lm_head, embeddings and norms stay fp32, as DESIGN.md asks of the real engine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

SUPPORTED = {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"}
FP8_MAX = 448.0


def quant_linears(model: torch.nn.Module) -> list[tuple[str, torch.nn.Linear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head")]


def load(path: str, precision: str, act_scales: dict[str, float] | None = None) -> torch.nn.Module:
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="eager").eval()
    if precision == "bf16":
        # lm_head stays fp32 (untie first so the bf16 embedding table stays bf16).
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().float().clone())
        model.lm_head.register_forward_pre_hook(lambda _m, i: (i[0].float(),))
    with torch.no_grad():
        for name, lin in quant_linears(model):
            w = lin.weight.data
            if precision == "int8-weight":
                scale = w.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127.0
                lin.weight.data = (torch.round(w / scale).clamp(-127, 127) * scale).to(w.dtype)
            elif precision == "fp8":
                ws = w.abs().max().clamp_min(1e-12) / FP8_MAX
                lin.weight.data = (w / ws).to(torch.float8_e4m3fn).float() * ws
                s = (act_scales or {}).get(name)
                if s is not None:

                    def qin(_m: torch.nn.Module, inp: tuple[torch.Tensor, ...], s: float = s) -> tuple[torch.Tensor]:
                        x = inp[0]
                        return ((x / s).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float() * s,)

                    lin.register_forward_pre_hook(qin)
    return model


def calibrate(path: str, calib: str) -> dict[str, float]:
    model = load(path, "fp32")
    amax: dict[str, float] = {}
    hooks = []
    for name, lin in quant_linears(model):

        def rec(_m: torch.nn.Module, inp: tuple[torch.Tensor, ...], name: str = name) -> None:
            amax[name] = max(amax.get(name, 0.0), float(inp[0].abs().max()))

        hooks.append(lin.register_forward_pre_hook(rec))
    with torch.no_grad():
        for line in Path(calib).read_text().splitlines():
            if line.strip():
                model(input_ids=torch.tensor([json.loads(line)]))
    return {k: v / FP8_MAX for k, v in amax.items()}


def cmd_build(a: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    cfg = json.loads((Path(a.model) / "config.json").read_text())
    arch = (cfg.get("architectures") or ["?"])[0]
    if arch not in SUPPORTED:
        print(f"error: unsupported architecture {arch}", file=sys.stderr)
        return 2
    print(json.dumps({"phase": "load", "percent": 0}), flush=True)
    try:
        AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)  # raises on bad tensors
    except Exception as e:  # noqa: BLE001 - report whatever transformers says
        print(f"error: {e}", file=sys.stderr)
        return 2
    header = {"model": str(Path(a.model).resolve()), "precision": a.precision, "architecture": arch}
    if a.precision == "fp8":
        if not a.calibration:
            print("error: fp8 needs --calibration", file=sys.stderr)
            return 2
        header["act_scales"] = calibrate(a.model, a.calibration)
    data = json.dumps(header).encode()
    Path(a.out).write_bytes(data)
    done = {"phase": "done", "path": a.out, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    done["seconds"] = round(time.perf_counter() - t0, 3)
    print(json.dumps(done), flush=True)
    return 0


@torch.no_grad()
def cmd_generate(a: argparse.Namespace) -> int:
    if a.threads:
        torch.set_num_threads(a.threads)
    h = json.loads(Path(a.engine).read_text())
    model = load(h["model"], h["precision"], h.get("act_scales"))
    ids = [int(t) for t in a.tokens.split(",")]
    t0 = time.perf_counter()
    out = model(input_ids=torch.tensor([ids]), use_cache=True)
    prefill_ms = (time.perf_counter() - t0) * 1e3
    rows, toks = [], []
    t1 = time.perf_counter()
    for _ in range(a.steps):
        row = out.logits[0, -1].float()
        rows.append(row.numpy())
        toks.append(int(row.argmax()))
        out = model(input_ids=torch.tensor([[toks[-1]]]), past_key_values=out.past_key_values, use_cache=True)
    dt = time.perf_counter() - t1
    if a.logits_out:
        np.stack(rows).astype("<f4").tofile(a.logits_out)
    print(json.dumps({"tokens": toks, "prefill_ms": prefill_ms, "decode_tok_per_s": a.steps / dt}))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--model", required=True)
    b.add_argument("--precision", required=True)
    b.add_argument("--out", required=True)
    b.add_argument("--calibration")
    b.add_argument("--max-seq-len", type=int)
    b.add_argument("--max-batch", type=int)
    b.add_argument("--no-autotune", action="store_true")
    g = sub.add_parser("generate")
    g.add_argument("--engine", required=True)
    g.add_argument("--tokens", required=True)
    g.add_argument("--steps", type=int, default=32)
    g.add_argument("--logits-out")
    g.add_argument("--threads", type=int)
    a = ap.parse_args()
    return cmd_build(a) if a.cmd == "build" else cmd_generate(a)


if __name__ == "__main__":
    sys.exit(main())
