"""The stage commands: validate, probe, profile, select, export, train, rrt and run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from t3s.cli.console import console, out, print_testbed_result
from t3s.cli.options import (
    Data,
    Device,
    MaxLen,
    Model,
    Overlong,
    Remote,
    RunOpt,
    TemplateOpt,
    _pydantic,
    _tokenize_config,
)
from t3s.errors import T3SError


# -- validate ------------------------------------------------------------------------------------
def validate(
    data: Data,
    model: Annotated[str | None, typer.Option("--model", "-m", help="also tokenize with this model")] = None,
    template: TemplateOpt = "auto",
    max_length: MaxLen = 4096,
    overlong: Overlong = "error",
    trust_remote_code: Remote = False,
) -> None:
    """Check a corpus and report every problem, one per row; exit 1 if any."""
    from t3s.data import Problem, scan_corpus

    examples, problems = scan_corpus(data)
    lengths: list[int] = []
    if model is not None:
        from t3s.models import load_tokenizer
        from t3s.tokens import tokenize_example

        cfg = _tokenize_config(template, max_length, overlong)
        tok = load_tokenizer(model, trust_remote_code=trust_remote_code)
        for ex in examples:
            try:
                item = tokenize_example(tok, ex, cfg)
            except T3SError as exc:
                problems.append(Problem(f"{data} id {ex.id!r}", None, str(exc).split(": ", 1)[-1]))
                continue
            if item is not None:
                lengths.append(len(item.input_ids))
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
def probe(
    model: Model,
    run: RunOpt,
    data: Annotated[Path | None, typer.Option("--data", "-d", help="corpus (default: the run's own)")] = None,
    steps: Annotated[int, typer.Option(help="optimizer steps")] = 50,
    batch_size: Annotated[int, typer.Option(help="global batch size")] = 64,
    micro_batch_size: Annotated[int, typer.Option(help="per-device batch size")] = 8,
    lr: Annotated[float, typer.Option(help="learning rate")] = 1e-5,
    scheduler: Annotated[str, typer.Option(help="transformers lr scheduler name")] = "constant_with_warmup",
    warmup_steps: int = 0,
    seed: int = 42,
    lora: Annotated[bool, typer.Option(help="train LoRA adapters (peft) instead of all weights")] = False,
    lora_r: int = 16,
    freeze_layers: Annotated[int, typer.Option(help="freeze the lowest N decoder layers")] = 0,
    freeze_embeddings: bool = False,
    eval_every: Annotated[int, typer.Option(help="measure training accuracy every N steps")] = 1,
    eval_prompts: Annotated[int | None, typer.Option(help="seeded subset of training prompts")] = None,
    samples: Annotated[int, typer.Option(help="samples per prompt")] = 1,
    temperature: Annotated[float, typer.Option(help="0 = greedy")] = 0.0,
    top_p: float = 1.0,
    max_new_tokens: int = 1024,
    gen_batch_size: Annotated[int, typer.Option(help="prompts per generation batch")] = 32,
    backend: Annotated[str, typer.Option(help="generation backend: transformers or vllm")] = "transformers",
    verifier: Annotated[str, typer.Option(help="'math' or module:function")] = "math",
    max_verifier_errors: Annotated[
        float, typer.Option(help="stop when more of a checkpoint's verdicts are verifier errors (fraction)")
    ] = 0.05,
    heldout: Annotated[
        str | None, typer.Option(help="a benchmark (id, problem, answer) also scored per checkpoint")
    ] = None,
    heldout_prompts: Annotated[
        int | None, typer.Option(help="seeded subset of the held-out benchmark")
    ] = None,
    mode: Annotated[str, typer.Option(help="online (θ0, latest, running min) or all checkpoints")] = "online",
    fixed_step: Annotated[
        int | None, typer.Option(help="T3S-simple: θb = this step, no accuracy search")
    ] = None,
    keep_step: Annotated[
        list[int] | None, typer.Option(help="also keep this checkpoint (repeatable)")
    ] = None,
    report_to: Annotated[
        list[str] | None, typer.Option(help="HF Trainer report_to (wandb, tensorboard, ...)")
    ] = None,
    template: TemplateOpt = "auto",
    max_length: MaxLen = 4096,
    overlong: Overlong = "error",
    restart: Annotated[bool, typer.Option(help="discard a probe started with other settings")] = False,
    trust_remote_code: Remote = False,
) -> None:
    """Plain SFT from θ0 with training accuracy per checkpoint; picks the Imitation Bottleneck θb."""
    from t3s.models import load_tokenizer
    from t3s.probe import ProbeEval, ProbeSettings, ProbeStage
    from t3s.rundir import RunDir
    from t3s.stage import execute
    from t3s.tokenize_stage import prepare_corpus
    from t3s.tokens import tokens_fingerprint
    from t3s.training import LoraSettings, TrainRecipe

    recipe = _pydantic(
        TrainRecipe,
        steps=steps,
        batch_size=batch_size,
        micro_batch_size=micro_batch_size,
        lr=lr,
        scheduler=scheduler,
        warmup_steps=warmup_steps,
        seed=seed,
        lora=LoraSettings(r=lora_r, alpha=2 * lora_r) if lora else None,
        freeze_layers=freeze_layers,
        freeze_embeddings=freeze_embeddings,
        report_to=report_to or [],
    )
    settings = _pydantic(
        ProbeSettings,
        mode=mode,
        fixed_step=fixed_step,
        keep_steps=keep_step or [],
        eval=_pydantic(
            ProbeEval,
            every=eval_every,
            prompts=eval_prompts,
            samples=samples,
            temperature=temperature,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
            batch_size=gen_batch_size,
            backend=backend,
            verifier=verifier,
            max_verifier_errors=max_verifier_errors,
            heldout=heldout,
            heldout_prompts=heldout_prompts,
        ),
    )
    cfg = _tokenize_config(template, max_length, overlong)
    rd = RunDir(run)
    tok = load_tokenizer(model, trust_remote_code=trust_remote_code)
    examples, items = prepare_corpus(rd, data, tok, cfg)
    stage = ProbeStage(
        model, examples, items, tok, cfg, recipe, settings,
        tokens_fp=tokens_fingerprint(items), trust_remote_code=trust_remote_code, restart=restart,
    )  # fmt: skip
    execute(rd, stage)
    record = rd.bottleneck()
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
    step: Annotated[list[int] | None, typer.Option("--step", help="also score probe checkpoint K")] = None,
    all_steps: Annotated[bool, typer.Option(help="score every probe checkpoint on disk")] = False,
    batch_tokens: Annotated[int, typer.Option(help="padded tokens per forward pass")] = 16384,
    chunk: Annotated[
        int, typer.Option(help="positions per output-layer chunk (memory O(chunk x vocab))")
    ] = 1024,
    device: Device = "auto",
    dtype: Annotated[str, typer.Option(help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16")] = "auto",
    template: TemplateOpt = "auto",
    max_length: MaxLen = 4096,
    overlong: Overlong = "error",
    trust_remote_code: Remote = False,
) -> None:
    """Per-token log-probs under θ0, θb (and other checkpoints) and Δc = c(θb) - c(θ0)."""
    from t3s.profile import profile_run, profile_standalone
    from t3s.rundir import RunDir

    kwargs = dict(
        device=device,
        dtype=dtype,
        trust_remote_code=trust_remote_code,
        max_batch_tokens=batch_tokens,
        chunk=chunk,
    )
    if run is not None:
        if data is not None or out_path is not None:
            raise T3SError("--run scores the run's own corpus into RUN/profile; drop --data and --out")
        extra = _parse_models(model or []) if model else {}
        summary = profile_run(run, steps=step or [], all_steps=all_steps, extra=extra, **kwargs)
        where = RunDir(run).profile
    else:
        if not model or data is None or out_path is None:
            raise T3SError("standalone profile needs --model (one or more), --data and --out")
        summary = profile_standalone(
            _parse_models(model), data, out_path, _tokenize_config(template, max_length, overlong), **kwargs
        )
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
    policy: Annotated[str, typer.Option(help="sft, t3s, inverse, static-high, static-low, random")],
    threshold: Annotated[float, typer.Option(help="anchors: Δc > threshold (nats)")] = 0.0,
    selector: Annotated[
        str, typer.Option(help="profile column playing θb: bottleneck, stepK, ...")
    ] = "bottleneck",
    fraction: Annotated[
        float | None, typer.Option(help="static/random: share of response tokens dropped")
    ] = None,
    match: Annotated[str | None, typer.Option(help="static/random: 't3s' drops the share t3s drops")] = None,
    seed: Annotated[int, typer.Option(help="random policy seed")] = 0,
    profile: Annotated[str | None, typer.Option(help="cross-model: a profile made by another model")] = None,
    name: Annotated[
        str | None, typer.Option(help="output name under RUN/masks (default: from the policy)")
    ] = None,
) -> None:
    """Turn Δc into per-token loss masks: input_ids + labels (-100) + loss_mask, as Parquet and HF dataset."""
    from t3s.rundir import RunDir
    from t3s.selection import POLICIES, SelectOptions, select_run

    if policy not in POLICIES:
        raise T3SError(f"--policy {policy!r} does not exist; use one of {', '.join(POLICIES)}")
    options = _pydantic(
        SelectOptions,
        policy=policy,
        threshold=threshold,
        selector=selector,
        fraction=fraction,
        match=match,
        seed=seed,
        profile=profile,
        name=name,
    )
    stats = select_run(run, options)
    out.print(
        f"{options.output_name()}: keeps {stats['kept_tokens']:,} of {stats['response_tokens']:,} response tokens "
        f"({stats['kept_fraction']:.1%}) -> {RunDir(run).masks_dir(options.output_name())}",
        highlight=False,
    )


def export(
    run: Annotated[Path, typer.Option("--run", help="run directory")],
    policy: Annotated[str, typer.Option(help="masks name under RUN/masks")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="output directory")],
    format: Annotated[str, typer.Option(help="hf (TRL, axolotl, LLaMA-Factory), verl, jsonl")] = "hf",
) -> None:
    """Check a masked dataset and write it for another trainer (see the USAGE.md written beside it)."""
    from t3s.export import export_masks
    from t3s.rundir import RunDir

    summary = export_masks(RunDir(run).masks_dir(policy), out_dir, format)  # type: ignore[arg-type]
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
) -> None:
    """Train θ0 on a masked dataset with the probe's recipe; saves RUN/train/<policy>/model."""
    from t3s.rundir import RunDir
    from t3s.train import train_policy

    recipe = RunDir(run).recipe()
    if report_to:
        recipe = recipe.model_copy(update={"report_to": report_to})
    summary = train_policy(
        run, policy, recipe=recipe, save_every=save_every, trust_remote_code=trust_remote_code
    )
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
    from t3s.rrt import rrt as rrt_fn

    summary = rrt_fn(base, bottleneck, final, out_dir)
    out.print(f"RRT: {summary['tensors']} tensors -> {out_dir}", highlight=False)


def run_config(
    config: Annotated[Path, typer.Argument(help="YAML run configuration (see examples/)")],
) -> None:
    """Run the whole chain (probe, profile, select, train each policy, RRT), skipping finished stages.

    A config with a top-level `testbed:` mapping runs the built-in testbed instead (see `t3s demo`).
    """
    import yaml

    from t3s.config import load_config
    from t3s.pipeline import run_pipeline

    if config.exists() and "testbed" in (yaml.safe_load(config.read_text(encoding="utf-8")) or {}):
        from t3s.testbed.config import load_testbed
        from t3s.testbed.runner import run_testbed

        print_testbed_result(run_testbed(load_testbed(config)))
        return
    models = run_pipeline(load_config(config))
    for name, path in models.items():
        out.print(f"{name:>14}: {path}", highlight=False)
