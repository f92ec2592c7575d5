"""The stage commands: validate, probe, profile, select, export, train, rrt and run.

Each parses its options, calls the API function of the same stage (`t3s.api`) and prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from t3s import api
from t3s.cli.console import console, out, print_testbed_result
from t3s.cli.model_options import FromModel
from t3s.config import ProfileSettings
from t3s.errors import T3SError
from t3s.probe import ProbeSettings
from t3s.rundir import RunDir
from t3s.selection import SelectOptions
from t3s.tokens import TokenizeConfig
from t3s.training import TrainRecipe

Model = Annotated[str, typer.Option("--model", "-m", help="student θ0: a transformers checkpoint directory")]
Data = Annotated[
    Path, typer.Option("--data", "-d", help="corpus: .jsonl, .parquet or a save_to_disk directory")
]
RunOpt = Annotated[Path, typer.Option("--run", "--out", "-o", help="run directory")]
Remote = Annotated[bool, typer.Option(help="allow custom model code from the checkpoint (off by default)")]
Tokenize = Annotated[TokenizeConfig, FromModel()]


# -- validate ------------------------------------------------------------------------------------
def validate(
    data: Data,
    model: Annotated[str | None, typer.Option("--model", "-m", help="also tokenize with this model")] = None,
    *,
    tokenize: Tokenize,
    trust_remote_code: Remote = False,
) -> None:
    """Check a corpus and report every problem, one per row; exit 1 if any."""
    check = api.validate_corpus(data, model, tokenize=tokenize, trust_remote_code=trust_remote_code)
    examples, problems, lengths = check.examples, check.problems, check.token_lengths
    for p in problems:
        out.print(str(p), markup=False, highlight=False)
    table = Table(title=f"{data}")
    table.add_column("rows ok")
    table.add_column("problems")
    table.add_column("teachers")
    table.add_column("tokens (min/mean/max)")
    teachers = sorted({e.teacher or "-" for e in examples})
    tok_stats = f"{min(lengths)}/{sum(lengths) / len(lengths):.0f}/{max(lengths)}" if lengths else "-"
    table.add_row(str(len(examples)), str(len(problems)), ", ".join(teachers), tok_stats)
    console.print(table)
    if problems:
        raise typer.Exit(1)


# -- probe ---------------------------------------------------------------------------------------
PROBE_SETTINGS = FromModel(
    rename={
        "keep_steps": "--keep-step",
        "eval.every": "--eval-every",
        "eval.prompts": "--eval-prompts",
        "eval.batch_size": "--gen-batch-size",
        "eval.seed": "--eval-seed",
        "eval.loss": "--eval-loss",
    },
    flatten={"eval"},
    panel="Probe",
)


def probe(
    model: Model,
    run: RunOpt,
    data: Annotated[Path | None, typer.Option("--data", "-d", help="corpus (default: the run's own)")] = None,
    *,
    recipe: Annotated[TrainRecipe, FromModel(panel="Training recipe")],
    settings: Annotated[ProbeSettings, PROBE_SETTINGS],
    tokenize: Annotated[TokenizeConfig, FromModel(panel="Tokenization")],
    restart: Annotated[bool, typer.Option(help="discard a probe started with other settings")] = False,
    trust_remote_code: Remote = False,
) -> None:
    """Plain SFT from θ0 with training accuracy per checkpoint; picks the Imitation Bottleneck θb."""
    record = api.probe(
        run, model, data, recipe=recipe, settings=settings, tokenize=tokenize,
        restart=restart, trust_remote_code=trust_remote_code,
    )  # fmt: skip
    acc = record.get("train_accuracy")
    acc_text = f", training accuracy {acc:.3f}" if acc is not None else ""
    out.print(f"bottleneck θb: step {record['step']}{acc_text} -> {record['bottleneck']}", highlight=False)


# -- profile -------------------------------------------------------------------------------------
def _parse_models(specs: list[str]) -> dict[str, str]:
    """`NAME=PATH` pairs; bare paths are named base, then bottleneck."""
    from t3s.profile import check_name

    models: dict[str, str] = {}
    defaults = iter(["base", "bottleneck"])
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = next(defaults, ""), spec
            if not name:
                raise T3SError(f"--model {spec!r}: name a third model as NAME=PATH")
        models[check_name(name)] = path
    return models


def profile(
    run: Annotated[Path | None, typer.Option("--run", help="run directory with a finished probe")] = None,
    model: Annotated[
        list[str] | None, typer.Option("--model", "-m", help="NAME=PATH, or base then bottleneck")
    ] = None,
    data: Annotated[Path | None, typer.Option("--data", "-d", help="corpus (standalone mode)")] = None,
    out_path: Annotated[
        Path | None, typer.Option("--out", "-o", help="output .parquet (standalone mode)")
    ] = None,
    *,
    settings: Annotated[
        ProfileSettings, FromModel(rename={"steps": "--step"}, exclude={"cross_models", "extra_models"})
    ],
    tokenize: Tokenize,
    trust_remote_code: Remote = False,
) -> None:
    """Per-token log-probs under θ0, θb (and other checkpoints) and Δc = c(θb) - c(θ0)."""
    if run is not None:
        if data is not None or out_path is not None:
            raise T3SError("--run scores the run's own corpus into RUN/profile; drop --data and --out")
        models = _parse_models(model or [])
        summary = api.profile(run, settings, models=models, trust_remote_code=trust_remote_code)
        where = RunDir(run).profile
    else:
        if not model or data is None or out_path is None:
            raise T3SError("standalone profile needs --model (one or more), --data and --out")
        summary = api.profile_corpus(
            _parse_models(model), data, out_path,
            settings=settings, tokenize=tokenize, trust_remote_code=trust_remote_code,
        )  # fmt: skip
        where = out_path
    delta = summary.get("delta")
    if delta:
        out.print(
            f"Δc: anchor share (Δc > 0) {delta['anchor_share']:.3f}, mean {delta['mean']:+.4f}",
            highlight=False,
        )
    out.print(f"profile -> {where}", highlight=False)


# -- select / export / train / rrt ---------------------------------------------------------------
def select(
    run: Annotated[Path, typer.Option("--run", help="run directory with a profile")],
    *,
    options: Annotated[SelectOptions, FromModel()],
) -> None:
    """Turn Δc into per-token loss masks: input_ids + labels (-100) + loss_mask, as Parquet and HF dataset."""
    selection = api.select(run, options)
    stats = selection.summary
    out.print(
        f"{selection.name}: keeps {stats['kept_tokens']:,} of {stats['response_tokens']:,} response tokens "
        f"({stats['kept_fraction']:.1%}) -> {selection.path}",
        highlight=False,
    )
    if "target_fraction" in stats:  # a dLLM policy: its target set B
        out.print(
            f"{selection.name}: targets B = {stats['target_tokens']:,} response tokens "
            f"(target fraction {stats['target_fraction']:.1%})",
            highlight=False,
        )


def export(
    run: Annotated[Path, typer.Option("--run", help="run directory")],
    policy: Annotated[str, typer.Option(help="masks name under RUN/masks")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="output directory")],
    format: Annotated[str, typer.Option(help="hf (TRL, axolotl, LLaMA-Factory), verl, jsonl")] = "hf",
) -> None:
    """Check a masked dataset and write it for another trainer (see the USAGE.md written beside it)."""
    summary = api.Selection.load(run, policy).export(out_dir, format)  # type: ignore[arg-type]
    out.print(
        f"checked {summary['examples']} examples, {summary['trained_tokens']:,} trained tokens -> {out_dir}",
        highlight=False,
    )


def train(
    run: Annotated[Path, typer.Option("--run", help="run directory with masks")],
    policy: Annotated[str, typer.Option(help="masks name under RUN/masks")],
    save_every: Annotated[int, typer.Option(help="checkpoint to resume from every N steps")] = 10,
    report_to: Annotated[list[str] | None, typer.Option(help="HF Trainer report_to")] = None,
    trust_remote_code: Remote = False,
    dllm_student: Annotated[
        Path | None,
        typer.Option(
            help="train a dLLM student: a YAML file with its settings (kind: dllm, model, diffusion, "
            "sampling), or a run config with a student section"
        ),
    ] = None,
) -> None:
    """Train θ0 on a masked dataset with the probe's recipe; saves RUN/train/<policy>/model."""
    from t3s.dllm.student import load_student

    student = load_student(dllm_student) if dllm_student is not None else None
    summary = api.train(
        run, policy, save_every=save_every, report_to=report_to, trust_remote_code=trust_remote_code,
        student=student,
    )  # fmt: skip
    out.print(
        f"{policy}: final loss {summary['final_loss']} -> {RunDir(run).model_dir(policy)}",
        highlight=False,
    )


def rrt(
    base: Annotated[Path, typer.Option("--base", help="θ0")],
    bottleneck: Annotated[
        Path, typer.Option("--bottleneck", help="θb: a checkpoint or a LoRA adapter over θ0")
    ],
    final: Annotated[
        Path, typer.Option("--final", help="θf, the final SFT checkpoint or a LoRA adapter over θ0")
    ],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="output directory")],
) -> None:
    """Recovering Residual Transfer: write θ0 + (θf - θb), shard by shard."""
    summary = api.rrt_checkpoints(base, bottleneck, final, out_dir)
    out.print(f"RRT: {summary['tensors']} tensors -> {out_dir}", highlight=False)


def run_config(
    config: Annotated[Path, typer.Argument(help="YAML run configuration (see examples/)")],
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", help="KEY.PATH=VALUE: override a setting of the config, e.g. recipe.lr=2e-5 (repeatable)"
        ),
    ] = None,
    run_dir: Annotated[Path | None, typer.Option(help="run directory, in place of the config's")] = None,
) -> None:
    """Run the whole chain (probe, profile, select, train each policy, RRT, then the config's eval,
    analyze and report sections), skipping finished stages.

    A config with a top-level `testbed:` mapping runs the built-in testbed instead (see `t3s demo`);
    its settings are overridden as testbed.KEY.
    """
    import yaml

    from t3s.config import load_config
    from t3s.config_file import Override, parse_set
    from t3s.pipeline import run_pipeline

    overrides = [parse_set(text) for text in set_ or []]
    testbed = config.exists() and "testbed" in (yaml.safe_load(config.read_text(encoding="utf-8")) or {})
    if run_dir is not None:
        overrides.append(
            Override(("testbed", "run_dir") if testbed else ("run_dir",), str(run_dir), "--run-dir")
        )
    if testbed:
        from t3s.testbed.config import load_testbed
        from t3s.testbed.runner import run_testbed

        print_testbed_result(run_testbed(load_testbed(config, overrides)))
        return
    from t3s.distributed import state

    models = run_pipeline(load_config(config, overrides))
    if state().is_main_process:
        for name, path in models.items():
            out.print(f"{name:>14}: {path}", highlight=False)
