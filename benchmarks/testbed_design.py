"""Search for a testbed design in which a teacher is worth learning from (issue: the built-in testbed).

For each design: stage 0 makes SmolLM2-135M competent in its own style (LoRA, merged), then for
each seed a corpus of teacher traces goes through the library's own stages (tokenize, probe with
every checkpoint kept, profile, select, train, RRT), and every model is scored greedily on
held-out problems. One JSON line per (design, seed) lands in --out; a table is printed.

    python benchmarks/testbed_design.py --design base,hard --seeds 0,1,2 --out results.jsonl
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

DESIGNS: dict[str, dict[str, Any]] = {}


@dataclass(frozen=True)
class Design:
    name: str
    # stage 0: the student's own style
    s0_counts: tuple[int, ...] = (3,)
    s0_low: int = 10
    s0_high: int = 99
    s0_problems: int = 2000
    s0_steps: int = 150
    s0_lr: float = 1e-3
    s0_mix: float = 0.1
    s0_eval: int = 128
    s0_adapter: str = ""  # an existing stage-0 adapter directory: skip stage 0
    # distillation
    counts: tuple[int, ...] = (3,)
    heldout_counts: tuple[int, ...] = ()  # held-out problems' counts (default: as in training)
    low: int = 10
    high: int = 99
    train: int = 256
    teacher: str = "reverse"
    lr: float = 1e-4
    steps: int = 40
    batch: int = 16
    freeze: int = 15
    warmup: int = 3
    thresholds: tuple[float, ...] = (0.0,)
    heldout: int = 128
    curve_prompts: int = 32
    curve_heldout: int = 48
    eval_every: int = 3
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def design(**kw: Any) -> None:
    d = Design(**kw)
    DESIGNS[d.name] = asdict(d)


design(name="base", notes="TESTBED-NOTES third attempt: 3 two-digit numbers, reverse teacher")
design(name="long", train=512, steps=40, notes="more distinct problems and steps than the demo")
design(name="hard", high=999, low=10, notes="distil on 3 numbers up to 3 digits; stage 0 saw two-digit only")
design(name="narrow", s0_high=49, notes="stage 0 only on numbers 10-49; distil on 10-99")
design(name="few", s0_problems=150, train=1024, notes="stage 0 on 150 problems; distil on 1024 new ones")
design(name="mix34", counts=(3, 4), notes="distil on 3 and 4 numbers; stage 0 saw 3")
design(
    name="retention",
    s0_counts=(3, 4),
    s0_high=49,
    counts=(3,),
    heldout_counts=(3, 4),
    notes="stage 0: 3 and 4 numbers in 10-49; distil on 3 numbers in 10-99; held out: 3 and 4 numbers",
)


def stage0(d: Design, root: Path, device: str) -> tuple[Path, float]:
    from t3s.testbed import prepare
    from t3s.testbed.student import merge_adapter

    adapter = Path(d.s0_adapter) if d.s0_adapter else root / "stage0"
    if not (adapter / "stage0.json").exists():
        prepare.main([
            "--steps", str(d.s0_steps), "--lr", str(d.s0_lr), "--problems", str(d.s0_problems),
            "--counts", ",".join(map(str, d.s0_counts)), "--low", str(d.s0_low), "--high", str(d.s0_high),
            "--mix", str(d.s0_mix), "--out", str(adapter), "--eval", str(d.s0_eval),
        ])  # fmt: skip
    student = root / "student"
    if not (student / "model.safetensors").exists():
        merge_adapter(adapter, student)
    return student, json.loads((adapter / "stage0.json").read_text())["heldout_accuracy"]


def run_seed(d: Design, student: Path, root: Path, seed: int, device: str) -> dict[str, Any]:
    import torch

    from t3s.models import load_model, load_tokenizer
    from t3s.probe import ProbeEval, ProbeSettings, ProbeStage
    from t3s.profile import profile_run
    from t3s.rrt import RRTStage
    from t3s.rundir import RunDir
    from t3s.selection import SelectOptions, read_masks_stats, select_run
    from t3s.stage import execute
    from t3s.testbed.gate import greedy_accuracy
    from t3s.testbed.task import Split, TaskSpec, make_problems, style_of
    from t3s.tokenize_stage import prepare_corpus
    from t3s.tokens import TokenizeConfig, tokens_fingerprint
    from t3s.train import train_policy
    from t3s.training import TrainRecipe

    t0 = time.time()
    spec = TaskSpec(d.counts, d.low, d.high)
    train = make_problems(spec, d.train, 10_000 + seed)
    heldout_spec = TaskSpec(d.heldout_counts or d.counts, d.low, d.high)
    heldout = make_problems(heldout_spec, d.heldout, 99, exclude=set(train))
    rows = Split(train).corpus_rows(d.teacher)
    corpus = root / f"corpus-{seed}.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = RunDir(root / f"run-{seed}")
    tok = load_tokenizer(str(student))
    cfg = TokenizeConfig(template="plain", max_length=256)
    examples, items = prepare_corpus(run, corpus, tok, cfg)
    recipe = TrainRecipe(
        steps=d.steps, batch_size=d.batch, micro_batch_size=d.batch, lr=d.lr, warmup_steps=d.warmup, seed=seed,
        freeze_layers=d.freeze, freeze_embeddings=d.freeze > 0, mixed_precision="no",
    )  # fmt: skip
    bench = root / f"heldout-{seed}.jsonl"
    bench.write_text("".join(json.dumps(r) + "\n" for r in Split(heldout[: d.curve_heldout]).bench_rows()))
    settings = ProbeSettings(eval=ProbeEval(every=d.eval_every, prompts=d.curve_prompts, max_new_tokens=64,
                                            batch_size=128, verifier="t3s.testbed.task:verify", heldout=str(bench)))  # fmt: skip
    execute(run, ProbeStage(str(student), examples, items, tok, cfg, recipe, settings,
                            tokens_fp=tokens_fingerprint(items)))  # fmt: skip
    probe = run.bottleneck()
    profile_run(run.root, device=device, dtype="float32")
    models = {"base": str(student), "sft": run.resolve(probe["final"])}
    names = []
    for thr in d.thresholds:
        for pol in ("t3s", "inverse"):
            name = f"{pol}-thr{thr:g}"
            select_run(run.root, SelectOptions(policy=pol, threshold=thr, name=name))
            train_policy(run.root, name, recipe=recipe, save_every=1000)
            models[name] = str(run.model_dir(name))
            names.append(name)
    execute(run, RRTStage())
    models["rrt"] = str(run.model_dir("rrt"))
    stats = {n: read_masks_stats(run.masks_dir(n))["kept_fraction"] for n in names}
    dev = torch.device(device)
    final: dict[str, Any] = {}
    for name, path in models.items():
        model = load_model(path, device=dev, dtype=torch.float32)
        acc, texts = greedy_accuracy(model, tok, heldout, max_new_tokens=64, batch_size=256)
        styles = [style_of(t) for t in texts]
        final[name] = {"acc": acc, "teacher_style": styles.count(d.teacher) / len(styles)}
        del model
    curve = []
    metrics = run.probe_metrics()
    for m in metrics:
        samples = [json.loads(x) for x in run.probe_samples(m["step"], heldout=True).read_text().splitlines()]
        curve.append({"step": m["step"], "heldout": m["heldout_accuracy"],
                      "teacher_style": sum(style_of(x["completion"]) == d.teacher for x in samples) / len(samples)})  # fmt: skip
    profile = run.stage("profile")["summary"]["delta"]
    shutil.rmtree(run.checkpoints_dir, ignore_errors=True)
    for name in names:
        shutil.rmtree(run.train_dir(name), ignore_errors=True)
    return {"design": d.name, "seed": seed, "final": final, "kept_fraction": stats, "curve": curve,
            "train_curve": [{"step": m["step"], "acc": m["train_accuracy"], "loss": m["teacher_forced_loss"]} for m in metrics],
            "bottleneck": probe["step"], "delta": profile, "seconds": round(time.time() - t0, 1),
            "n_heldout": len(heldout)}  # fmt: skip


def table(rows: list[dict[str, Any]]) -> str:
    lines = []
    for r in rows:
        f = r["final"]
        cells = " ".join(f"{k}={v['acc']:.3f}" for k, v in f.items())
        low = min(c["heldout"] for c in r["curve"]) if r["curve"] else float("nan")
        lines.append(
            f"{r['design']:>8} s{r['seed']} θb={r['bottleneck']:>2} min-heldout={low:.3f} | {cells} | kept {r['kept_fraction']}"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--design", default="base")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--out", type=Path, default=Path("testbed_design.jsonl"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/t3s-design"))
    ap.add_argument("--device", default="auto")
    ap.add_argument(
        "--set", action="append", default=[], help="override a design field: key=value (JSON value)"
    )
    args = ap.parse_args()
    from t3s.models import resolve_device

    device = str(resolve_device(args.device))
    overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    rows = []
    for name in args.design.split(","):
        d = Design(**{**DESIGNS[name], **overrides})
        d = replace(d, counts=tuple(d.counts), s0_counts=tuple(d.s0_counts), thresholds=tuple(d.thresholds),
                    heldout_counts=tuple(d.heldout_counts))  # fmt: skip
        root = args.work / d.name
        root.mkdir(parents=True, exist_ok=True)
        student, s0_acc = stage0(d, root, device)
        for seed in (int(s) for s in args.seeds.split(",")):
            row = run_seed(d, student, root, seed, device)
            row["stage0_accuracy"] = s0_acc
            row["design_fields"] = asdict(d)
            rows.append(row)
            with open(args.out, "a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(table([row]), flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()
