"""The familiarity sweep: how foreign the teacher's style is to the student, by degrees.

On the built-in testbed the teacher's style words cost the stage-0 student ~12.6 nats a token and
carry ~90% of its teacher-forced loss, so T3S masks them and keeps tokens already known. Here stage 0
is rebuilt with a share P of its answers in the teacher's style (`t3s.testbed.prepare
--teacher-share`; P = 0 is the shipped student, not rebuilt), then one seed of the testbed
comparison runs on each student. Per level it records the competence gate, the shock's depth
(training and held-out accuracy at θ0, θb and the end), the share of θ0's loss on the tokens T3S
keeps, the Δc band table and every model's held-out accuracy.

    python -m t3s.testbed.familiarity [--levels 0,0.005,0.01,0.02,0.05] [--seed 0]
        [--work runs/familiarity] [--config TESTBED.yaml] [--set testbed.KEY=VALUE ...]

Stage 0 keeps the shipped run's settings (--stage0 KEY=VALUE changes one). The comparison's settings are the demo's (`t3s demo`: base, SFT, T3S, −T3S on 96 held-out
problems) without RRT, or a testbed YAML's, with --set overrides on top. Every level lives in
WORK/share-P (stage0/ adapter, run/ testbed run); a killed sweep reruns to resume: stage 0 from its
last checkpoint, the run from its stages. WORK/sweep.json holds the rows, WORK/sweep.md the tables.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from t3s.io import read_json, write_json, write_text
from t3s.rundir import RunDir
from t3s.testbed.runner import TestbedConfig

LEVELS = (0.0, 0.005, 0.01, 0.02, 0.05)
# The shipped stage-0 run's settings (its stage0.json), repeated for every rebuilt level.
STAGE0_ARGS = (
    "steps", "batch_size", "lr", "rank", "problems", "counts", "low", "high", "mix", "mix_style", "eval", "seed"
)  # fmt: skip


def level_dir(work: Path, level: float) -> Path:
    return work / f"share-{level:g}"


def stage0_student(
    level: float, root: Path, teacher: str, changes: dict[str, str] | None = None, base: Path | None = None
) -> tuple[str, dict[str, Any]]:
    """The level's stage-0 student (a merged checkpoint) and its stage-0 record; built if missing, with
    the shipped stage 0's settings but for `changes` (prepare's options, e.g. {"steps": "300"}), on
    `base` (default: SmolLM2-135M-Instruct, whose level 0 is the shipped student)."""
    from t3s.testbed import prepare
    from t3s.testbed.student import STAGE0, student_path

    if level == 0 and not changes and base is None:
        return "builtin", read_json(STAGE0 / "stage0.json")
    adapter = root / "stage0"
    if not (adapter / "stage0.json").exists():
        settings = {k: read_json(STAGE0 / "stage0.json")["args"][k] for k in STAGE0_ARGS} | (changes or {})
        argv = [x for key, value in settings.items() for x in (f"--{key.replace('_', '-')}", str(value))]
        if base is not None:
            argv += ["--base", str(base)]
        prepare.main(
            [*argv, "--teacher-share", str(level), "--teacher-style", teacher, "--out", str(adapter)]
        )
    return str(student_path(adapter, base)), read_json(adapter / "stage0.json")


def _at(curve: list[dict[str, Any]], step: int) -> dict[str, Any]:
    return next(row for row in curve if row["step"] == step)


def level_row(level: float, run_root: Path, stage0: dict[str, Any]) -> dict[str, Any]:
    """One level's measurements, read from its finished testbed run."""
    run = RunDir(run_root)
    summary = read_json(run.testbed_summary)
    share = read_json(run.analysis_dir / "lossshare.json")
    curve, neck = summary["curve"], summary["bottleneck"]
    points = {"θ0": _at(curve, 0), "θb": _at(curve, neck["step"]), "end": _at(curve, neck["final_step"])}
    return {
        "level": level,
        "stage0_accuracy": stage0["heldout_accuracy"],
        "gate": summary["gate"],
        "bottleneck_step": neck["step"],
        "train_accuracy": {k: p["train_accuracy"] for k, p in points.items()},
        "heldout_accuracy": {k: p["heldout_accuracy"] for k, p in points.items()},
        "teacher_style_heldout": {k: p.get("teacher_style_heldout") for k, p in points.items()},
        "anchor_share": share["anchor_share"],
        "non_anchor_loss_share": 1 - share["anchor_loss_share"],
        "kept_loss_share": {name: p["loss_share"] for name, p in share["policies"].items()},
        "bands": share["bands"],
        "final": {name: m["accuracy"] for name, m in summary["final"].items()},
        "problems": next(iter(summary["final"].values()))["problems"],
        "seed": summary["seed"],
    }


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def tables(rows: list[dict[str, Any]]) -> str:
    """The sweep as markdown: one row per level, then the Δc band table per level."""
    models = list(dict.fromkeys(name for r in rows for name in r["final"]))
    head = ["teacher share in stage 0", "stage-0 acc", "gate (forced / own)", "θb",
            "train acc θ0 → θb → end", "held-out θ0 → θb → end", "T3S kept loss share", *models]  # fmt: skip
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        gate = r["gate"]
        cells = [
            f"{100 * r['level']:g}%", _pct(r["stage0_accuracy"]),
            f"{_pct(gate['forced_teacher_prefix_accuracy'])} / {_pct(gate['own_style_accuracy'])}",
            str(r["bottleneck_step"]),
            " → ".join(_pct(v) for v in r["train_accuracy"].values()),
            " → ".join(_pct(v) for v in r["heldout_accuracy"].values()),
            _pct(r["kept_loss_share"].get("t3s")), *(_pct(r["final"].get(m)) for m in models),
        ]  # fmt: skip
        out.append("| " + " | ".join(cells) + " |")
    bands = [b["band"] for b in rows[0]["bands"]] if rows else []
    out += ["", "Δc bands: share of response tokens / share of θ0's teacher-forced loss (%)", ""]
    out += ["| teacher share | " + " | ".join(bands) + " |", "|" + "---|" * (len(bands) + 1)]
    for r in rows:
        cells = [f"{_pct(b['token_share'])} / {_pct(b['loss_share'])}" for b in r["bands"]]
        out.append(f"| {100 * r['level']:g}% | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def base_config(config: Path | None, overrides: list[str]) -> TestbedConfig:
    """Stage 0 keeps the shipped run's settings (--stage0 KEY=VALUE changes one). The comparison's settings: the YAML's or the demo's without RRT, then the --set overrides."""
    from t3s.config_file import parse_set, read_mapping
    from t3s.testbed.config import testbed_from_mapping

    raw = read_mapping(config) if config is not None else {"testbed": {"rrt": False}}
    return testbed_from_mapping(raw, [parse_set(s) for s in overrides], source=config or "--set")


def sweep(
    levels: list[float],
    seed: int,
    work: Path,
    base: TestbedConfig,
    stage0: dict[str, str] | None = None,
    model: Path | None = None,
) -> list[dict[str, Any]]:
    from t3s.testbed.runner import run_testbed

    rows = []
    for level in levels:
        root = level_dir(work, level)
        student, record = stage0_student(level, root, base.teacher, stage0, model)
        cfg = base.model_copy(update={"student": student, "seeds": [seed], "run_dir": root / "run"})
        run_testbed(cfg)
        rows.append(level_row(level, cfg.run_dir, record))
        write_json(
            work / "sweep.json", {"seed": seed, "config": json.loads(base.model_dump_json()), "rows": rows}
        )
        write_text(work / "sweep.md", tables(rows))
        print(tables(rows), flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", default=",".join(f"{x:g}" for x in LEVELS), help="teacher-style shares")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=Path("runs/familiarity"))
    ap.add_argument("--config", type=Path, default=None, help="a testbed YAML (default: the demo's settings)")
    ap.add_argument("--set", action="append", default=[], help="testbed.KEY=VALUE, as for t3s run")
    ap.add_argument(
        "--stage0",
        action="append",
        default=[],
        help="KEY=VALUE: a stage-0 setting (prepare's option) to change",
    )
    ap.add_argument("--base", type=Path, default=None, help="the AR model of stage 0 (default: SmolLM2-135M)")
    args = ap.parse_args(argv)
    stage0 = dict(s.split("=", 1) for s in args.stage0)
    if unknown := sorted(set(stage0) - set(STAGE0_ARGS)):
        ap.error(f"--stage0 {', '.join(unknown)}: stage 0's settings are {', '.join(STAGE0_ARGS)}")
    levels = [float(x) for x in args.levels.split(",")]
    if any(not 0 <= x < 0.9 for x in levels):
        ap.error(f"--levels {args.levels}: shares from 0 to 0.9 (stage 0 keeps 10% in its other style)")
    sweep(levels, args.seed, args.work, base_config(args.config, args.set), stage0, args.base)


if __name__ == "__main__":
    main()
