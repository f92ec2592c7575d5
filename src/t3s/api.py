"""The Python API: one function per stage of the chain, re-exported from `t3s` (`t3s.probe(...)`).

Each stage function builds the stage and runs it with `t3s.stage.execute`, exactly as the CLI
command of the same name and `t3s run` do (both are built on these functions): a stage done with
the same inputs is skipped and its recorded result returned, one killed part-way resumes. The
defaults are the CLI's. Settings are the pydantic models also re-exported from `t3s`
(`TrainRecipe`, `ProbeSettings`, ...); None means the model's defaults.

    probe(run, model, data)  ->  profile(run)  ->  select(run, "t3s")  ->  train(run, "t3s")
    ->  rrt(run)  ->  evaluate(run, bench, policies=[...])  ->  report(run)

Heavy libraries (torch, transformers, datasets, matplotlib) are imported inside the functions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from t3s.analysis.options import AnalysisOptions, AnalyzeSettings
from t3s.config import CrossModel, EvalSection, ProfileSettings, RunConfig, load_config
from t3s.data import Example, Problem, load_corpus
from t3s.dllm.student import DllmStudent
from t3s.errors import T3SError
from t3s.evaluation import Bench, EvalSettings
from t3s.export import Format
from t3s.probe import ProbeEval, ProbeSettings
from t3s.rundir import RunDir
from t3s.selection import SelectOptions
from t3s.stage import execute
from t3s.tokens import TokenizeConfig
from t3s.training import LoraSettings, TrainRecipe

if TYPE_CHECKING:
    import datasets
    import pyarrow as pa

    from t3s.report import ReportResult

PathLike = str | Path

__all__ = [
    "AnalysisOptions",
    "AnalyzeSettings",
    "Bench",
    "CorpusCheck",
    "CrossModel",
    "DllmStudent",
    "EvalSection",
    "EvalSettings",
    "Example",
    "LoraSettings",
    "ProbeEval",
    "ProbeSettings",
    "Problem",
    "ProfileSettings",
    "RunConfig",
    "SelectOptions",
    "Selection",
    "T3SError",
    "TokenizeConfig",
    "TrainRecipe",
    "analyze",
    "evaluate",
    "evaluate_model",
    "load_config",
    "load_corpus",
    "probe",
    "profile",
    "profile_corpus",
    "report",
    "rrt",
    "rrt_checkpoints",
    "select",
    "train",
    "validate_corpus",
]


# -- the corpus ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class CorpusCheck:
    """What `validate_corpus` found: the good examples, every problem, and (with a model) the token
    count of each example that tokenized."""

    examples: list[Example]
    problems: list[Problem]
    token_lengths: list[int]

    @property
    def ok(self) -> bool:
        return not self.problems


def validate_corpus(
    data: PathLike,
    model: str | None = None,
    *,
    tokenize: TokenizeConfig | None = None,
    trust_remote_code: bool = False,
) -> CorpusCheck:
    """Check every row of a corpus (.jsonl, .parquet or a save_to_disk directory) and, with `model`,
    tokenize it with that model's tokenizer; every problem is collected, none raised."""
    from t3s.data import scan_corpus

    examples, problems = scan_corpus(data)
    lengths: list[int] = []
    if model is not None:
        from t3s.models import load_tokenizer
        from t3s.testbed import resolve_builtin
        from t3s.tokens import tokenize_example

        tok = load_tokenizer(resolve_builtin(model), trust_remote_code=trust_remote_code)
        for ex in examples:
            try:
                item = tokenize_example(tok, ex, tokenize or TokenizeConfig())
            except T3SError as exc:
                problems.append(Problem(f"{data} id {ex.id!r}", None, str(exc).split(": ", 1)[-1]))
                continue
            if item is not None:
                lengths.append(len(item.input_ids))
    return CorpusCheck(examples, problems, lengths)


# -- the stages of a run -------------------------------------------------------------------------
def probe(
    run: PathLike,
    model: str,
    data: PathLike | None = None,
    *,
    recipe: TrainRecipe | None = None,
    settings: ProbeSettings | None = None,
    tokenize: TokenizeConfig | None = None,
    restart: bool = False,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Tokenize `data` into the run (None: the run's own corpus), then plain SFT from θ0 = `model`
    (a checkpoint directory, or testbed:smollm2) with training accuracy per checkpoint.

    Returns θb's record: `step`, `train_accuracy`, `bottleneck` and `final` (checkpoints relative
    to the run), `checkpoints`. `restart` discards a probe started with other inputs.
    """
    from t3s.models import load_tokenizer
    from t3s.probe import ProbeStage
    from t3s.testbed import resolve_builtin
    from t3s.tokenize_stage import prepare_corpus
    from t3s.tokens import tokens_fingerprint

    rd = RunDir(run)
    model = resolve_builtin(model)
    tokenize = tokenize or TokenizeConfig()
    tok = load_tokenizer(model, trust_remote_code=trust_remote_code)
    examples, items = prepare_corpus(rd, data, tok, tokenize)
    stage = ProbeStage(
        model, examples, items, tok, tokenize, recipe or TrainRecipe(), settings or ProbeSettings(),
        tokens_fp=tokens_fingerprint(items), trust_remote_code=trust_remote_code, restart=restart,
    )  # fmt: skip
    execute(rd, stage)
    return rd.bottleneck()


def _scoring(settings: ProfileSettings) -> dict[str, Any]:
    return {
        "device": settings.device,
        "dtype": settings.dtype,
        "max_batch_tokens": settings.batch_tokens,
        "chunk": settings.chunk,
    }


def profile(
    run: PathLike,
    settings: ProfileSettings | None = None,
    *,
    models: Mapping[str, str] | None = None,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Per-token log-probs of the run's responses under θ0, θb (and `settings.steps`, and
    `settings.extra_models` and `models`: NAME -> checkpoint) and Δc, into
    RUN/profile/profile.parquet; then each of `settings.cross_models` into
    RUN/profile/cross-<name>.parquet. Returns the profile's summary."""
    from t3s.profile import CrossProfileStage, profile_run

    rd, settings = RunDir(run), settings or ProfileSettings()
    scoring = _scoring(settings)
    summary = profile_run(
        run,
        steps=settings.steps,
        all_steps=settings.all_steps,
        extra={**settings.extra_models, **(models or {})} or None,
        trust_remote_code=trust_remote_code,
        **scoring,
    )
    for cross in settings.cross_models:
        # Another student's tokens, made as the run's own were.
        config = TokenizeConfig(**rd.stage("tokenize")["config"])
        cross_models = {"base": cross.base, "bottleneck": cross.bottleneck}
        execute(
            rd,
            CrossProfileStage(
                cross.name, cross_models, config, trust_remote_code=trust_remote_code, **scoring
            ),
        )
    return summary


@dataclass(frozen=True)
class Selection:
    """A policy's masked dataset, RUN/masks/<name>/: `input_ids`, `labels` (-100 where a token is
    not trained: prompt, padding, dropped tokens), `loss_mask` (1 where trained), as Parquet, an HF
    dataset and stats.json. `summary` holds its counts (kept_tokens, kept_fraction, ...)."""

    name: str
    path: Path
    summary: dict[str, Any]

    @classmethod
    def load(cls, run: PathLike, name: str) -> Selection:
        """The masks a policy's `select` wrote into a run."""
        from t3s.selection import read_masks_stats

        path = RunDir(run).masks_dir(name)
        stats = read_masks_stats(path) or {}
        return cls(name, path, {k: v for k, v in stats.items() if k != "per_example"})

    def table(self) -> pa.Table:
        """id, input_ids, labels, loss_mask, response_start, response_end: one row per example."""
        from t3s.selection import read_masks

        return read_masks(self.path)

    def to_dataset(self) -> datasets.Dataset:
        """The masks as a `datasets.Dataset`, what `t3s export --format hf` writes: TRL's SFTTrainer
        and any trainer taking input_ids + labels (-100) train on it unchanged."""
        import datasets

        datasets.disable_progress_bars()
        return datasets.Dataset(self.table())

    def export(self, out: PathLike, format: Format = "hf") -> dict[str, Any]:
        """Check the masks and write them for another trainer (hf, verl or jsonl) with a USAGE.md;
        returns the counts checked (examples, trained_tokens)."""
        from t3s.export import export_masks

        return export_masks(self.path, out, format)


def select(run: PathLike, options: SelectOptions | str) -> Selection:
    """A policy's per-token loss masks from the run's profile, into RUN/masks/<name>/.

    `options` is a SelectOptions, or a policy name with its default options (`"t3s"`: every
    response token but the Imitation Anchors, Δc > 0).
    """
    from t3s.selection import select_run

    if isinstance(options, str):
        options = SelectOptions(policy=options)  # type: ignore[arg-type]  # checked by the model
    summary = select_run(run, options)
    return Selection(options.output_name(), RunDir(run).masks_dir(options.output_name()), summary)


def train(
    run: PathLike,
    policy: str,
    *,
    recipe: TrainRecipe | None = None,
    save_every: int = 10,
    report_to: Sequence[str] | None = None,
    trust_remote_code: bool = False,
    student: DllmStudent | None = None,
) -> dict[str, Any]:
    """θ0 trained on RUN/masks/<policy> with the probe's recipe (or `recipe`) into
    RUN/train/<policy>/model, resumable from a checkpoint every `save_every` steps; `report_to`
    replaces the recipe's HF Trainer loggers. Returns the summary (base, masks, steps, final_loss).

    With a dLLM `student`, its θ0 is trained with the diffusion objective on the masks (those of
    sft, dllm-t3s or dllm-random); the run records the student, whose sampler `evaluate` then uses
    for the run's models (base is the student's θ0)."""
    from t3s.stage import processes
    from t3s.train import train_policy

    if report_to:
        recipe = (recipe or RunDir(run).recipe()).model_copy(update={"report_to": list(report_to)})
    if student is not None:
        student = student.resolved()
        if processes().is_main_process:
            RunDir(run).record("student", student.model_dump(mode="json"))
    return train_policy(
        run, policy, recipe=recipe, save_every=save_every, trust_remote_code=trust_remote_code,
        student=student,
    )  # fmt: skip


def rrt(run: PathLike) -> dict[str, Any]:
    """Recovering Residual Transfer of the run's probe, θ0 + (θf - θb), into RUN/train/rrt/model.
    Returns its summary (the three models, the tensor count; empty on other processes)."""
    from t3s.rrt import RRTStage

    summary: dict[str, Any] = execute(RunDir(run), RRTStage()).get("summary", {})
    return summary


def evaluate(
    run: PathLike,
    bench: PathLike | Bench,
    settings: EvalSettings | None = None,
    *,
    steps: Sequence[int] | None = None,
    policies: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Score the run's models on a benchmark (id, problem, answer) into RUN/eval/<bench>/: θ0 and
    every probe checkpoint on disk (or just `steps`; 0 is θ0), or the named `policies` (trained
    ones, base, sft, rrt; ["all"]: every trained model). The prompt template is the run's unless
    `settings` sets one. In a run with a dLLM student (recorded by `train`), the policies (base: the
    student's θ0) generate with its diffusion sampler. Returns one row of metrics per model (the
    curve, or the policies' table), generated tokens included."""
    from t3s.evaluation import evaluate_run, load_bench, run_template

    if steps and policies:
        raise T3SError("evaluate: pass steps (probe checkpoints) or policies (trained models), not both")
    rd, settings = RunDir(run), settings or EvalSettings()
    if "template" not in settings.model_fields_set:
        settings = settings.model_copy(update={"template": run_template(rd)})
    bench = bench if isinstance(bench, Bench) else load_bench(bench)
    return evaluate_run(run, bench, settings, steps=steps, policies=policies)


def analyze(
    run: PathLike,
    what: str | Sequence[str] = "all",
    options: AnalysisOptions | None = None,
    *,
    on_result: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """The paper's analyses of a run (numbers and plots under RUN/analysis/): "all" (those whose
    inputs the run lacks are skipped, with the reason as their result) or the named ones.
    `on_result(name, result)` is called as each finishes."""
    from t3s.analysis.runner import analyze as run_analyses
    from t3s.analysis.runner import parse_names

    names = parse_names(what if isinstance(what, str) else ",".join(what))
    every = isinstance(what, str) and what.strip() == "all"
    return run_analyses(run, names, options or AnalysisOptions(), skip_missing=every, on_result=on_result)


def report(runs: PathLike | Sequence[PathLike], out: PathLike | None = None) -> ReportResult:
    """One self-contained HTML page and a Markdown summary of the runs (the first holds it, in
    FIRST_RUN/report unless `out`); returns their paths and each run's headline numbers."""
    from t3s.report import build_report

    return build_report([runs] if isinstance(runs, str | Path) else list(runs), out)


# -- the same tools outside a run directory -------------------------------------------------------
def profile_corpus(
    models: Mapping[str, str],
    data: PathLike,
    out: PathLike,
    *,
    settings: ProfileSettings | None = None,
    tokenize: TokenizeConfig | None = None,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Profile any corpus under any models sharing a tokenizer (NAME -> checkpoint; `base` and
    `bottleneck` give Δc) into `out` (.parquet), without a run directory."""
    from t3s.profile import profile_standalone

    return profile_standalone(
        dict(models),
        data,
        out,
        tokenize or TokenizeConfig(),
        trust_remote_code=trust_remote_code,
        **_scoring(settings or ProfileSettings()),
    )


def rrt_checkpoints(base: PathLike, bottleneck: PathLike, final: PathLike, out: PathLike) -> dict[str, Any]:
    """θ0 + (θf - θb) into `out`, shard by shard; θb and θf may be LoRA adapters over θ0."""
    from t3s.rrt import rrt as transfer

    return transfer(base, bottleneck, final, out)


def evaluate_model(
    model: str, bench: PathLike | Bench, out: PathLike, settings: EvalSettings | None = None
) -> dict[str, Any]:
    """Score one checkpoint on a benchmark: `out` X.json gets the summary and X.samples.jsonl every
    sample (or a directory gets results.json and samples.jsonl); resumes from the samples file."""
    from t3s.evaluation import evaluate as score_model
    from t3s.evaluation import load_bench

    bench = bench if isinstance(bench, Bench) else load_bench(bench)
    return score_model(model, bench, settings or EvalSettings(), out)
