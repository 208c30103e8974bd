"""Builds Kiln engines for the parity checkpoints and compares them with Hugging Face transformers.

For every (checkpoint, precision): `kiln-native build`, then for each prompt `kiln-native generate
--steps 32 --logits-out`, then transformers (fp32, CPU) is run on the *same* token sequence (prompt +
the engine's generated tokens) in one forward pass. That is teacher forcing: at every step both sides
see the same context, so one early flip does not turn the rest of the sequence into noise, and one
engine call per prompt is enough. Separately transformers' own free-running greedy sequence is
computed, and "tokens identical" compares the two free-running sequences.

Metrics (per case, over all prompts and steps):
- rel_err: for each step i, max_v |engine[i,v] - ref[i,v]| / max_v |ref[i,v]|; the case reports the
  max (and mean) over steps and prompts. ref = transformers fp32 logits under the same context.
- top1_agreement: fraction of steps where argmax(ref[i]) == the engine's token i.
- tokens_identical: the engine's 32 greedy tokens equal transformers' free-running greedy tokens,
  for every prompt.
- min_ref_margin_at_disagreement: the reference's top-1 minus top-2 logit at each step where they
  disagree, to tell a near-tie from a real bug.

Thresholds (THRESHOLDS below; the vitest file asserts the same numbers from the report):
fp32 tokens identical and rel_err < 1e-4; bf16 tokens identical and rel_err < 2e-2;
int8-weight / fp8: top1_agreement >= 0.9 and rel_err under the stated tolerance; fp8-lmhead (fp8
built with --lm-head fp8, the lm_head in E4M3 too) by fp8's rule.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

STEPS = 32
PROMPT_LENGTHS = (1, 6, 17, 31)
MAX_SEQ_LEN = 128
PRECISIONS = ("fp32", "bf16", "int8-weight", "fp8", "fp8-lmhead")
# Each precision name's build: kiln-native build --precision and the extra flags.
BUILDS: dict[str, tuple[str, list[str]]] = {p: (p, []) for p in PRECISIONS[:4]}
BUILDS["fp8-lmhead"] = ("fp8", ["--lm-head", "fp8"])

# rel_err is max|a-b|/max|b| per step (see module doc). The int8/fp8 tolerances are what a correct
# quantizer reaches on these checkpoints with margin (int8 per-channel weights: ~2^-8 relative weight
# error; fp8 E4M3 weights+activations: 3 mantissa bits, ~2^-4), not a measured engine result.
THRESHOLDS: dict[str, dict[str, Any]] = {
    "fp32": {"tokens_identical": True, "max_rel_err": 1e-4},
    "bf16": {"tokens_identical": True, "max_rel_err": 2e-2},
    "int8-weight": {"min_top1_agreement": 0.9, "max_rel_err": 0.05},
    "fp8": {"min_top1_agreement": 0.9, "max_rel_err": 0.15},
    "fp8-lmhead": {"min_top1_agreement": 0.9, "max_rel_err": 0.15},
}


@dataclass
class Prompt:
    ids: list[int]
    ref_tokens: list[int]
    ref_logits: np.ndarray  # [STEPS, vocab], transformers fp32, free-running


def prompts_for(name: str, vocab: int) -> list[list[int]]:
    # Seeded by the checkpoint name (crc32, stable across runs and Python versions).
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    return [rng.integers(0, vocab, size=n).tolist() for n in PROMPT_LENGTHS]


def calibration_file(out: Path, vocab: int) -> Path:
    """Calibration set for fp8: 16 random sequences of 8-64 tokens, disjoint seed from the prompts."""
    path = out / f"calibration-v{vocab}.jsonl"
    rng = np.random.default_rng(424242 + vocab)
    lines = [json.dumps(rng.integers(0, vocab, size=int(rng.integers(8, 65))).tolist()) for _ in range(16)]
    path.write_text("\n".join(lines) + "\n")
    return path


def load_ref(path: str, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    # attn_implementation="eager": the plain math path, no fused-kernel approximations in the reference.
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="eager")
    return model.eval()


@torch.no_grad()
def greedy(model: torch.nn.Module, ids: list[int]) -> tuple[list[int], np.ndarray]:
    """Free-running greedy decode with the KV cache, returning tokens and the logits that chose them."""
    out = model(input_ids=torch.tensor([ids]), use_cache=True)
    past = out.past_key_values
    row = out.logits[0, -1].float()
    tokens: list[int] = []
    rows: list[np.ndarray] = []
    for _ in range(STEPS):
        rows.append(row.numpy().copy())
        nxt = int(torch.argmax(row))
        tokens.append(nxt)
        out = model(input_ids=torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
        past = out.past_key_values
        row = out.logits[0, -1].float()
    return tokens, np.stack(rows)


@torch.no_grad()
def teacher_forced(model: torch.nn.Module, ids: list[int], generated: list[int]) -> np.ndarray:
    """Logits at the last prompt position and after each generated token but the last: [STEPS, vocab]."""
    seq = ids + generated[:-1]
    logits = model(input_ids=torch.tensor([seq])).logits[0].float()
    return logits[len(ids) - 1 :].numpy()


def rel_err_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a - b).max(axis=1) / np.abs(b).max(axis=1)


def run(cmd: list[str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def build_engine(kiln: str, ckpt: str, precision: str, out: Path, calib: Path | None, autotune: bool) -> dict[str, Any]:
    base, extra = BUILDS[precision]
    cmd = [kiln, "build", "--model", ckpt, "--precision", base, "--out", str(out), *extra]
    cmd += ["--max-seq-len", str(MAX_SEQ_LEN), "--max-batch", "1"]
    if calib is not None:
        cmd += ["--calibration", str(calib)]
    if not autotune:
        cmd.append("--no-autotune")
    t0 = time.perf_counter()
    proc = run(cmd)
    wall = time.perf_counter() - t0
    done: dict[str, Any] | None = None
    for line in proc.stdout.splitlines():
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(msg, dict) and msg.get("phase") == "done":
            done = msg
    ok = proc.returncode == 0 and done is not None and out.exists()
    return {
        "ok": ok,
        "exit_code": proc.returncode,
        "wall_s": round(wall, 3),
        "done": done,
        "stderr_tail": proc.stderr[-2000:],
        "cmd": cmd,
    }


def engine_generate(kiln: str, engine: Path, ids: list[int], vocab: int, logits_path: Path, threads: int) -> tuple[list[int], np.ndarray, dict[str, Any]]:
    cmd = [kiln, "generate", "--engine", str(engine), "--tokens", ",".join(map(str, ids)), "--steps", str(STEPS)]
    cmd += ["--logits-out", str(logits_path), "--threads", str(threads)]
    proc = run(cmd, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"kiln-native generate failed ({proc.returncode}): {proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    raw = np.fromfile(logits_path, dtype="<f4")
    if raw.size != STEPS * vocab:
        raise RuntimeError(f"--logits-out has {raw.size} floats, expected {STEPS}x{vocab}")
    return [int(t) for t in result["tokens"]], raw.reshape(STEPS, vocab), result


def compare_case(
    kiln: str,
    ck: dict[str, Any],
    precision: str,
    prompts: list[Prompt],
    ref: torch.nn.Module,
    ref_bf16: torch.nn.Module | None,
    work: Path,
    calib: Path,
    threads: int,
    autotune: bool,
) -> dict[str, Any]:
    vocab = int(ck["vocab_size"])
    engine = work / f"{ck['name']}.{precision}.kiln"
    report: dict[str, Any] = {
        "checkpoint": ck["name"],
        "arch": ck["arch"],
        "precision": precision,
        "thresholds": THRESHOLDS[precision],
        "definitions": {
            "rel_err": "per step max_v|engine-ref|/max_v|ref|, ref = transformers fp32 on the same context",
            "top1_agreement": "fraction of steps with argmax(ref) == engine token (teacher-forced)",
        },
    }
    build = build_engine(kiln, ck["path"], precision, engine, calib if BUILDS[precision][0] == "fp8" else None, autotune)
    report["build"] = build
    if not build["ok"]:
        report["passed"] = False
        report["error"] = "build failed"
        return report

    per_prompt: list[dict[str, Any]] = []
    all_rel: list[np.ndarray] = []
    agree = total = 0
    identical = True
    hf_bf16_rel: list[np.ndarray] = []
    margins_at_miss: list[float] = []
    try:
        for i, p in enumerate(prompts):
            toks, logits, gen = engine_generate(kiln, engine, p.ids, vocab, work / f"logits-{i}.bin", threads)
            tf = teacher_forced(ref, p.ids, toks)
            rel = rel_err_rows(logits, tf)
            ref_top = tf.argmax(axis=1)
            hits = ref_top == np.array(toks)
            srt = np.sort(tf, axis=1)
            margins = srt[:, -1] - srt[:, -2]
            margins_at_miss += [float(m) for m in margins[~hits]]
            same = toks == p.ref_tokens
            identical &= same
            agree += int(hits.sum())
            total += STEPS
            all_rel.append(rel)
            entry: dict[str, Any] = {
                "prompt_len": len(p.ids),
                "tokens_identical": same,
                "first_divergence": next((j for j, (a, b) in enumerate(zip(toks, p.ref_tokens)) if a != b), None),
                "top1_agreement": float(hits.mean()),
                "max_rel_err": float(rel.max()),
                "mean_rel_err": float(rel.mean()),
                "min_ref_margin": float(margins.min()),
                "prefill_ms": gen.get("prefill_ms"),
                "decode_tok_per_s": gen.get("decode_tok_per_s"),
            }
            if ref_bf16 is not None:
                # How far transformers itself lands in bf16, on the same context: the noise floor.
                hb = rel_err_rows(teacher_forced(ref_bf16, p.ids, toks), tf)
                hf_bf16_rel.append(hb)
                entry["hf_bf16_max_rel_err"] = float(hb.max())
            if not same:
                entry["engine_tokens"] = toks
                entry["ref_tokens"] = p.ref_tokens
            per_prompt.append(entry)
    except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError, KeyError) as e:
        report["passed"] = False
        report["error"] = f"generate failed: {e}"
        report["prompts"] = per_prompt
        return report

    rel_all = np.concatenate(all_rel)
    report.update(
        {
            "tokens_identical": identical,
            "top1_agreement": agree / total,
            "max_rel_err": float(rel_all.max()),
            "mean_rel_err": float(rel_all.mean()),
            "steps_compared": total,
            "min_ref_margin_at_disagreement": min(margins_at_miss) if margins_at_miss else None,
            "prompts": per_prompt,
        }
    )
    if hf_bf16_rel:
        report["hf_bf16_max_rel_err"] = float(np.concatenate(hf_bf16_rel).max())
    t = THRESHOLDS[precision]
    ok = report["max_rel_err"] < t["max_rel_err"]
    if t.get("tokens_identical"):
        ok &= identical
    if "min_top1_agreement" in t:
        ok &= report["top1_agreement"] >= t["min_top1_agreement"]
    report["passed"] = bool(ok)
    return report


def check_broken(kiln: str, bad: dict[str, Any], work: Path) -> dict[str, Any]:
    out = work / f"{bad['name']}.kiln"
    proc = run([kiln, "build", "--model", bad["path"], "--precision", "fp32", "--out", str(out), "--no-autotune"])
    text = proc.stdout + proc.stderr
    mentions = bad["must_mention"] in text
    return {
        "checkpoint": bad["name"],
        "must_mention": bad["must_mention"],
        "exit_code": proc.returncode,
        "mentions": mentions,
        "passed": proc.returncode != 0 and mentions,
        "output_tail": text[-1500:],
    }


def control_no_rope_scaling(kiln: str, ck: dict[str, Any], ref: torch.nn.Module, work: Path, threads: int) -> dict[str, Any]:
    """Negative control: an engine built from the same weights but without rope_scaling in config.json
    must miss the fp32 bar by far. Proves the harness compares against the right reference and that
    the test prompts are long enough for llama3 rope scaling to matter."""
    src = Path(ck["path"])
    dst = work / "control-no-rope-scaling"
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.pop("rope_scaling", None)
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    engine = work / "control-no-rope-scaling.kiln"
    res: dict[str, Any] = {"control": "llama3-tied without rope_scaling", "must_exceed_rel_err": 1e-2}
    b = build_engine(kiln, str(dst), "fp32", engine, None, autotune=False)
    if not b["ok"]:
        return {**res, "passed": False, "error": "build failed", "build": b}
    worst = 0.0
    for i, ids in enumerate(prompts_for(ck["name"], ck["vocab_size"])):
        toks, logits, _ = engine_generate(kiln, engine, ids, ck["vocab_size"], work / f"control-{i}.bin", threads)
        worst = max(worst, float(rel_err_rows(logits, teacher_forced(ref, ids, toks)).max()))
    return {**res, "max_rel_err": worst, "passed": worst > res["must_exceed_rel_err"]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoints", type=Path, required=True, help="manifest.json of make_checkpoints.py")
    ap.add_argument("--kiln", default="native/build/kiln-native")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--precisions", default=",".join(PRECISIONS))
    ap.add_argument("--only", default="", help="comma-separated checkpoint names")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-autotune", action="store_true")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    manifest = json.loads(args.checkpoints.read_text())
    out: Path = args.out.resolve()
    (out / "reports").mkdir(parents=True, exist_ok=True)
    (out / "report.json").unlink(missing_ok=True)  # never let a stale report pass for this run
    work = out / "work"
    work.mkdir(exist_ok=True)
    kiln = str(Path(args.kiln).resolve())
    only = {s for s in args.only.split(",") if s}
    precisions = [p for p in args.precisions.split(",") if p]

    summary: dict[str, Any] = {"cases": [], "broken": [], "controls": [], "versions": {"torch": torch.__version__}}
    import transformers

    summary["versions"]["transformers"] = transformers.__version__
    t_start = time.perf_counter()
    for ck in manifest["checkpoints"]:
        if only and ck["name"] not in only:
            continue
        ref = load_ref(ck["path"])
        ref_bf16 = load_ref(ck["path"], torch.bfloat16) if "bf16" in precisions else None
        prompts = []
        for ids in prompts_for(ck["name"], ck["vocab_size"]):
            toks, logits = greedy(ref, ids)
            prompts.append(Prompt(ids, toks, logits))
        calib = calibration_file(work, ck["vocab_size"])
        for precision in precisions:
            t0 = time.perf_counter()
            rep = compare_case(
                kiln, ck, precision, prompts, ref, ref_bf16 if precision == "bf16" else None,
                work, calib, args.threads, not args.no_autotune,
            )
            rep["seconds"] = round(time.perf_counter() - t0, 2)
            (out / "reports" / f"{ck['name']}--{precision}.json").write_text(json.dumps(rep, indent=2) + "\n")
            line = {k: rep.get(k) for k in ("checkpoint", "precision", "passed", "tokens_identical", "top1_agreement", "max_rel_err", "seconds", "error")}
            print(json.dumps(line), flush=True)
            summary["cases"].append(rep)
        if ck["name"] == "llama3-tied":
            ctl = control_no_rope_scaling(kiln, ck, ref, work, args.threads)
            print(json.dumps({k: ctl.get(k) for k in ("control", "passed", "max_rel_err")}), flush=True)
            summary["controls"].append(ctl)
    for bad in manifest.get("broken", []):
        if only and bad["name"] not in only and "broken" not in only:
            continue
        res = check_broken(kiln, bad, work)
        print(json.dumps({k: res[k] for k in ("checkpoint", "passed", "exit_code", "mentions")}), flush=True)
        summary["broken"].append(res)
    summary["seconds"] = round(time.perf_counter() - t_start, 2)
    (out / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    everything = summary["cases"] + summary["broken"] + summary["controls"]
    return 0 if all(c["passed"] for c in everything) else 1


if __name__ == "__main__":
    # Exit 1 means "a case failed, see the report"; a crash must not look like that.
    try:
        sys.exit(main())
    except Exception:  # noqa: BLE001
        import traceback

        traceback.print_exc()
        sys.exit(2)
