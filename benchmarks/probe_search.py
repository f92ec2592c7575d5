"""The adaptive bottleneck search replayed on stored exhaustive probe runs: same θb, fewer tokens?

    python benchmarks/probe_search.py RUN_DIR... [--stride 3] [--margin 0] [--confidence 0.9]

Each RUN_DIR holds a finished exhaustive probe (probe/bottleneck.json, probe/metrics.jsonl and
probe/samples/step-NNNNN.jsonl). Greedy decoding is deterministic, so `t3s.probe_search.replay` (the
live search's own decisions) measures exactly what the live adaptive probe would. Generated tokens
are counted two ways: without sharing (every measured checkpoint generates all its answers: an
upper bound), and with sharing estimated from the stored answers (an answer is reused when the
nearest checkpoint measured before it in the search's order gave the same completion, the case in
which the live check passes, up to float near-ties). Held-out answers are left out of both.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from t3s.probe_search import AdaptiveSearch, Point, replay


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _answer(r: dict) -> tuple:
    return r["completion"], r["num_tokens"], r["finish_reason"], r.get("stop_token")


def bench_run(root: Path, settings: AdaptiveSearch) -> dict:
    probe = root / "probe"
    if not (probe / "bottleneck.json").exists():
        return {"run": str(root), "status": "no finished probe (no probe/bottleneck.json)"}
    record = json.loads((probe / "bottleneck.json").read_text())
    rows = sorted(_read_jsonl(probe / "metrics.jsonl"), key=lambda r: r["step"])
    grid = [r["step"] for r in rows]
    samples = {s: _read_jsonl(probe / "samples" / f"step-{s:05d}.jsonl") for s in grid}
    points = {r["step"]: Point(sum(x["correct"] for x in samples[r["step"]]), r["samples"]) for r in rows}
    tokens = {s: sum(x["num_tokens"] or 0 for x in samples[s]) for s in grid}
    found = replay(grid, points, settings)
    shared = 0
    for k, step in enumerate(found.order):
        before = found.order[:k]
        if not before:
            continue
        near = min(before, key=lambda s: (abs(s - step), s))
        theirs = {x["id"]: _answer(x) for x in samples[near] if x.get("error") is None}
        shared += sum(x["num_tokens"] or 0 for x in samples[step] if theirs.get(x["id"]) == _answer(x))
    total = sum(tokens.values())
    spent = sum(tokens[s] for s in found.order)
    signal = probe / "signal.jsonl"
    losses = {r["step"]: r["own_answer_loss"] for r in _read_jsonl(signal)} if signal.exists() else {}
    losses = {k: v for k, v in losses.items() if v is not None}
    return {
        "run": str(root),
        "status": "ok",
        "grid": f"{len(grid)} ckpts (every {grid[1] - grid[0]})",
        "exhaustive": record["step"],
        "adaptive": found.bottleneck,
        "delta_steps": abs(found.bottleneck - record["step"]),
        "delta_grid": abs(grid.index(found.bottleneck) - grid.index(record["step"])),
        "measured": found.order,
        "share": spent / total,
        "share_shared": (spent - shared) / total,
        "signal_argmax": max(losses, key=lambda k: (losses[k], -k)) if losses else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    defaults = AdaptiveSearch()
    ap.add_argument("--stride", type=int, default=defaults.stride)
    ap.add_argument("--margin", type=float, default=defaults.margin)
    ap.add_argument("--confidence", type=float, default=defaults.confidence)
    args = ap.parse_args()
    settings = AdaptiveSearch(stride=args.stride, margin=args.margin, confidence=args.confidence)
    print(f"adaptive search {settings.model_dump()}; tokens: training answers, greedy")
    print("| run | grid | θb exhaustive | θb adaptive | abs Δ (steps / grid places) | measured (in order) "
          "| generated tokens vs exhaustive | with sharing (est.) | own-answer-loss argmax |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for root in args.runs:
        r = bench_run(root, settings)
        if r["status"] != "ok":
            print(f"| {r['run']} | {r['status']} | | | | | | | |")
            continue
        signal = r["signal_argmax"] if r["signal_argmax"] is not None else "n/a (no signal.jsonl)"
        print(
            f"| {r['run']} | {r['grid']} | {r['exhaustive']} | {r['adaptive']} | "
            f"{r['delta_steps']} / {r['delta_grid']} | {r['measured']} | {r['share']:.0%} | "
            f"{r['share_shared']:.0%} | {signal} |"
        )


if __name__ == "__main__":
    main()
