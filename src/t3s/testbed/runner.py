"""The built-in testbed end to end: data, teacher traces, the T3S chain, the gate, the summary, the report.

Everything goes through the public pipeline: the teacher is a Python-function backend of
`t3s teacher`, and the chain is `t3s run`'s (`run_pipeline`), held-out evaluation and analyses
included. What is the testbed's own comes after it: the task, the student (stage 0, shipped), the
competence gate, and the share of answers written in the teacher's style, gathered per seed in
RUN/testbed/summary.json, which gives a run the testbed's report sections.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from t3s.config import PolicyList
from t3s.io import read_json, read_jsonl, write_json
from t3s.probe import ProbeEval, ProbeSettings
from t3s.rundir import RunDir
from t3s.selection import SelectOptions
from t3s.testbed.task import Numbers, Split, TaskSpec, make_problems, style_of
from t3s.training import TrainRecipe

VERIFIER = "t3s.testbed.task:verify"


def _testbed_recipe() -> TrainRecipe:
    # TESTBED-NOTES third attempt: AdamW (0.9, 0.95), lr 1e-4, short warmup, the upper half trained.
    return TrainRecipe(
        steps=18, batch_size=16, micro_batch_size=16, lr=1e-4, warmup_steps=3, seed=0,
        freeze_layers=15, freeze_embeddings=True, mixed_precision="no",
    )  # fmt: skip


class TestbedConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    run_dir: Path = Path("runs/demo")
    student: str = Field(
        "builtin", description="'builtin' (SmolLM2-135M + the shipped stage-0 adapter) or a path"
    )
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    counts: list[int] = Field(default_factory=lambda: [3], description="how many numbers a problem sums")
    heldout_counts: list[int] | None = Field(
        default_factory=lambda: [3, 4], description="the held-out problems' counts (None: as in training)"
    )
    low: int = 10
    high: int = 99
    teacher: str = "reverse"
    train_problems: int = Field(256, ge=8)
    heldout_problems: int = Field(96, ge=8, description="the final table's held-out problems")
    curve_prompts: int = Field(16, ge=1, description="training prompts scored at each checkpoint")
    curve_heldout: int = Field(16, ge=1, description="held-out problems scored at each checkpoint")
    eval_every: int = Field(3, ge=1)
    max_new_tokens: int = Field(72, ge=8)
    recipe: TrainRecipe = Field(default_factory=_testbed_recipe)
    profile_steps: list[int] = Field(
        default_factory=list, description="checkpoints scored besides θ0, θb and the final one"
    )
    policies: PolicyList = Field(
        default_factory=lambda: [SelectOptions(policy="t3s"), SelectOptions(policy="inverse")]
    )
    cross_student: str | None = Field(
        None, description="cross-model selection: 'raw' (SmolLM2 without stage 0) or a path"
    )
    rrt: bool = True
    analyses: list[str] = Field(default_factory=lambda: ["shock", "groups", "tokens", "lossshare", "drops"])

    def spec(self) -> TaskSpec:
        return TaskSpec(tuple(self.counts), self.low, self.high)

    def heldout_spec(self) -> TaskSpec:
        return TaskSpec(tuple(self.heldout_counts or self.counts), self.low, self.high)

    def heldout(self) -> list[Numbers]:
        """The held-out problems, the same for every seed."""
        return make_problems(self.heldout_spec(), self.heldout_problems, seed=7_777)


def student_model(name: str) -> str:
    from t3s.testbed.smollm2 import smollm2_path
    from t3s.testbed.student import student_path

    if name == "builtin":
        return str(student_path())
    if name == "raw":
        return str(smollm2_path())
    return name


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    from t3s.io import write_jsonl

    write_jsonl(path, rows)
    return path


def prepare_data(cfg: TestbedConfig, seed: int, root: Path) -> dict[str, Path]:
    """Training prompts (seeded), a held-out benchmark shared by all seeds, and its curve subset."""
    heldout = cfg.heldout()
    train = make_problems(cfg.spec(), cfg.train_problems, seed=1_000 + seed, exclude=set(heldout))
    data = root / "data"
    return {
        "prompts": _write_jsonl(data / "train-prompts.jsonl", Split(train).prompt_rows()),
        "heldout": _write_jsonl(data / "heldout.jsonl", Split(heldout).bench_rows()),
        "curve": _write_jsonl(data / "heldout-curve.jsonl", Split(heldout[: cfg.curve_heldout]).bench_rows()),
    }


def teacher_corpus(cfg: TestbedConfig, prompts: Path, root: Path) -> Path:
    from t3s.teacher.collect import TeacherSettings, collect_traces
    from t3s.teacher.specs import parse_teacher

    spec = parse_teacher(f"{cfg.teacher}=python:t3s.testbed.teachers:{cfg.teacher}")
    settings = TeacherSettings(samples=1, temperature=0.0, max_tokens=256, verifier=VERIFIER)
    collect_traces(prompts, [spec], root / "teacher", settings)
    return root / "teacher" / cfg.teacher / "corpus.jsonl"


def run_config(
    cfg: TestbedConfig, student: str, corpus: Path, paths: dict[str, Path], root: Path, seed: int
) -> Any:
    from t3s.analysis.options import AnalyzeSettings
    from t3s.config import CrossModel, EvalSection, ProfileSettings, RunConfig
    from t3s.evaluation import EvalSettings
    from t3s.tokens import TokenizeConfig

    # With policies to train, the final checkpoint is scored too: persistent drops, token-group curves.
    profile_steps = sorted({*cfg.profile_steps, cfg.recipe.steps}) if cfg.policies else cfg.profile_steps
    probe = ProbeSettings(
        keep_steps=cfg.profile_steps,
        eval=ProbeEval(
            every=cfg.eval_every, prompts=cfg.curve_prompts, max_new_tokens=cfg.max_new_tokens, batch_size=64,
            verifier=VERIFIER, heldout=str(paths["curve"]),
        ),
    )  # fmt: skip
    # Every model greedily on the held-out set, one generate call each (the set is small and a
    # killed demo just reruns it).
    heldout = EvalSettings(samples=1, temperature=0.0, top_p=1.0, max_new_tokens=cfg.max_new_tokens,
                           template="plain", verifier=VERIFIER, batch_size=64, chunk=cfg.heldout_problems)  # fmt: skip
    cross = []
    if cfg.cross_student:
        other = RunDir(root / "cross")
        neck = other.resolve(other.bottleneck()["bottleneck"])
        cross = [CrossModel(name="cross", base=other.base_model(), bottleneck=neck)]
    return RunConfig(
        run_dir=root,
        model=student,
        data=corpus,
        tokenize=TokenizeConfig(template="plain", max_length=160),
        recipe=cfg.recipe.model_copy(update={"seed": seed}),
        probe=probe,
        profile=ProfileSettings(steps=profile_steps, cross_models=cross),
        policies=cfg.policies,
        rrt=cfg.rrt,
        eval=[EvalSection(bench=paths["heldout"], settings=heldout)],
        analyze=AnalyzeSettings(what=cfg.analyses),
    )


def cross_probe(cfg: TestbedConfig, corpus: Path, paths: dict[str, Path], root: Path, seed: int) -> None:
    """Probe the cross student on the same corpus: its own θ0 and θb select for the main student."""
    from t3s.pipeline import run_pipeline

    assert cfg.cross_student is not None
    sub = cfg.model_copy(update={"cross_student": None, "policies": [], "rrt": False, "profile_steps": []})
    chain = run_config(sub, student_model(cfg.cross_student), corpus, paths, root / "cross", seed)
    run_pipeline(chain.model_copy(update={"eval": [], "analyze": None}))  # only probed and profiled


def final_scores(cfg: TestbedConfig, run: RunDir, bench: str, models: list[str]) -> dict[str, Any]:
    """Each model's held-out accuracy (with its standard error) from the chain's evaluation, by
    number of operands, and the share of its answers in the teacher's style."""
    from t3s.evaluation import policy_targets, result_samples

    out: dict[str, Any] = {}
    for target in policy_targets(run, models):
        result = run.eval_result(bench, target.label)
        summary, samples = read_json(result), result_samples(result)
        styles = [style_of(s["completion"]) for s in samples]
        by_count: dict[str, list[bool]] = {}
        for sample in samples:  # ids are s<a>-<b>-<c>...: the number of operands
            by_count.setdefault(str(sample["id"].count("-") + 1), []).append(bool(sample["correct"]))
        m = summary["metrics"]
        out[target.info["policy"]] = {
            "by_count": {k: sum(v) / len(v) for k, v in sorted(by_count.items())},
            "accuracy": m["avg@1"], "stderr": m["avg@1_stderr"], "problems": summary["problems"],
            "teacher_style": styles.count(cfg.teacher) / len(styles), "own_style": styles.count("running") / len(styles),
            "mean_tokens": m["mean_tokens"], "path": summary["model"],
        }  # fmt: skip
    return out


def style_curve(run_root: Path, teacher: str) -> list[dict[str, Any]]:
    """Per checkpoint: losses, accuracies and the share of answers written in the teacher's style."""
    run, rows = RunDir(run_root), []
    for m in run.probe_metrics():
        row = {
            k: m.get(k)
            for k in ("step", "train_loss", "teacher_forced_loss", "train_accuracy", "heldout_accuracy")
        }
        for kind, heldout in (("train", False), ("heldout", True)):
            samples = read_jsonl(run.probe_samples(m["step"], heldout))
            if samples:
                row[f"teacher_style_{kind}"] = sum(
                    style_of(s["completion"]) == teacher for s in samples
                ) / len(samples)
        rows.append(row)
    return rows


def run_seed(cfg: TestbedConfig, seed: int, root: Path) -> dict[str, Any]:
    """`t3s run`'s chain on the testbed's data, then its own records: the gate and the summary."""
    from t3s.evaluation import bench_name
    from t3s.pipeline import run_pipeline
    from t3s.stage import execute
    from t3s.testbed.gate import GateStage

    start = time.time()
    student = student_model(cfg.student)
    paths = prepare_data(cfg, seed, root)
    corpus = teacher_corpus(cfg, paths["prompts"], root)
    if cfg.cross_student:
        cross_probe(cfg, corpus, paths, root, seed)
    run = RunDir(root)
    models = run_pipeline(run_config(cfg, student, corpus, paths, root, seed))
    final = final_scores(cfg, run, bench_name(paths["heldout"]), list(models))
    gate_stage = GateStage(cfg.heldout(), cfg.teacher, cfg.max_new_tokens, final["base"]["accuracy"])
    summary = {
        "seed": seed, "final": final, "gate": execute(run, gate_stage)["summary"],
        "curve": style_curve(root, cfg.teacher), "bottleneck": run.bottleneck(),
        "config": json.loads(cfg.model_dump_json()), "seconds": round(time.time() - start, 1),
    }  # fmt: skip
    write_json(run.testbed_summary, summary)
    return summary


def aggregate(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and standard deviation over seeds of each model's held-out accuracy."""
    names = list(summaries[0]["final"])
    table = {}
    for name in names:
        accs = [s["final"][name]["accuracy"] for s in summaries if name in s["final"]]
        table[name] = {
            "mean": statistics.fmean(accs), "std": statistics.stdev(accs) if len(accs) > 1 else None,
            "seeds": len(accs), "per_seed": accs, "problems": summaries[0]["final"][name]["problems"],
            "teacher_style": statistics.fmean(s["final"][name]["teacher_style"] for s in summaries),
        }  # fmt: skip
    return {"models": table, "seeds": [s["seed"] for s in summaries]}


def run_testbed(cfg: TestbedConfig) -> dict[str, Any]:
    """Every seed in its own run directory (RUN/seed-K with several seeds), then the report."""
    from t3s.report import build_report

    single = len(cfg.seeds) == 1
    roots = [cfg.run_dir if single else cfg.run_dir / f"seed-{s}" for s in cfg.seeds]
    summaries = [run_seed(cfg, s, root) for s, root in zip(cfg.seeds, roots, strict=True)]
    result = {"aggregate": aggregate(summaries), "runs": [str(r) for r in roots]}
    write_json(cfg.run_dir / "testbed.json", result)
    report = build_report(roots, RunDir(cfg.run_dir).report_dir)
    result["report"] = {"html": str(report.html), "markdown": str(report.markdown)}
    return result
