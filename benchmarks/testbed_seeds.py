"""The testbed's full comparison over seeds: held-out accuracy of every policy, mean ± std.

    python benchmarks/testbed_seeds.py [--run runs/testbed-full] [--config examples/testbed-full.yaml]
    python benchmarks/testbed_seeds.py --run runs/objectives/seed-0 --run runs/objectives/seed-1 ...

Runs the config first when its run directory holds no result yet (hours on a 2-core CPU; it
resumes where it stopped), then prints one row per model with each seed's accuracy. Several --run
directories (seeds run one at a time, `--set "testbed.seeds=[K]"`) are combined into one table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=Path("examples/testbed-full.yaml"))
    ap.add_argument("--run", type=Path, action="append", help="default: the config's run_dir (repeatable)")
    args = ap.parse_args()

    from t3s.rundir import RunDir
    from t3s.testbed.config import load_testbed
    from t3s.testbed.runner import aggregate

    if missing := [str(run) for run in args.run or [] if not (run / "testbed.json").exists()]:
        ap.error(f"--run {', '.join(missing)}: no testbed.json (an unfinished run: rerun its config)")
    runs = args.run or [load_testbed(args.config).run_dir]
    if not (runs[0] / "testbed.json").exists():
        from t3s.testbed.runner import run_testbed

        start = time.time()
        run_testbed(load_testbed(args.config))
        print(f"ran {args.config} in {(time.time() - start) / 60:.1f} min")
    roots = [Path(r) for run in runs for r in json.loads((run / "testbed.json").read_text())["runs"]]
    summaries = [json.loads(RunDir(r).testbed_summary.read_text()) for r in roots]
    models = aggregate(summaries)["models"]
    seeds = [s["seed"] for s in summaries]
    print(f"\n{', '.join(map(str, runs))}: held-out greedy accuracy (%), {len(seeds)} seeds {seeds}, "
          f"{next(iter(models.values()))['problems']} problems each")  # fmt: skip
    print(f"{'model':>14}  {'mean':>6}  {'std':>5}  per seed")
    for name, row in models.items():
        std = row["std"] if row["std"] is not None else float("nan")
        per = "  ".join(f"{100 * a:5.1f}" for a in row["per_seed"])
        print(f"{name:>14}  {100 * row['mean']:6.1f}  {100 * std:5.1f}  {per}")
    base = models.get("base", {}).get("mean")
    if base is not None:
        spread = max((r["std"] or 0) for r in models.values())
        for name in ("sft", "t3s", "rrt"):
            if name in models:
                print(
                    f"{name} - base: {100 * (models[name]['mean'] - base):+.1f} points (largest seed std {100 * spread:.1f})"
                )
    print(json.dumps({k: round(v["mean"], 4) for k, v in models.items()}))


if __name__ == "__main__":
    main()
