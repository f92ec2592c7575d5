"""`t3s analyze`: run analyses over a run directory and write `RUN/analysis/<name>.{json,parquet,png,md}`.

Each analysis reads the run's artifacts, calls the pure functions of its module, writes its numbers
(JSON, Parquet for per-token data) and a plot, and returns a few headline numbers. Analyses that
need gradients load each checkpoint on the chosen device: float32 on CPUs, bf16 on GPUs, except the
ones that update weights (intervention, transfer), which default to float32 everywhere because a
single step at a training lr is below bf16's resolution for most weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from rich.console import Console

from t3s.analysis import artifacts, groups, lossshare, plots, shock, tokens
from t3s.analysis.artifacts import Profile
from t3s.analysis.options import NAMES, AnalysisOptions, AnalyzeSettings, analysis_names
from t3s.errors import T3SError
from t3s.fingerprint import digest
from t3s.io import write_json, write_parquet, write_text
from t3s.rundir import RunDir, read_profile
from t3s.stage import Attempt, Stage

console = Console(stderr=True)


def _json_safe(value: Any) -> Any:
    """Non-finite floats become null (JSON has no NaN or Infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value


class Context:
    """What one `analyze` call shares between analyses: the run, the options, the loaded profile."""

    def __init__(self, run: RunDir, options: AnalysisOptions) -> None:
        self.run, self.options = run, options
        self.out = run.analysis_dir
        self._profile: Profile | None = None

    @property
    def record(self) -> dict[str, Any]:
        return self.run.bottleneck()

    @property
    def profile(self) -> Profile:
        if self._profile is None:
            self._profile = artifacts.load_profile(self.run.profile)
        return self._profile

    def anchors(self) -> np.ndarray:
        return self.profile.anchors(self.options.threshold)

    def save(self, name: str, data: dict[str, Any], figure: Any | None = None) -> dict[str, Any]:
        data = _json_safe(data)
        write_json(self.out / f"{name}.json", data)
        if figure is not None:
            plots.save_png(figure, self.out / f"{name}.png")
        return data

    # -- model side ------------------------------------------------------------------------------
    def load(self, path: str, *, updates: bool) -> Any:
        import torch

        from t3s.analysis.tokenloss import select_parameters
        from t3s.models import load_model, resolve_device, resolve_dtype

        device = resolve_device(self.options.device)
        if updates and self.options.dtype == "auto":
            dtype = torch.float32
        else:
            dtype = resolve_dtype(self.options.dtype, device)
        model = load_model(path, device=device, dtype=dtype, trust_remote_code=self.options.trust_remote_code)
        select_parameters(model, self.options.params)
        return model

    def checkpoints(self) -> dict[int, str]:
        """Step -> path of θ0 and the probe checkpoints to analyse (all on disk, or --steps)."""
        found = self.run.checkpoints()
        if len(found) < 2:
            raise T3SError(
                f"run {self.run.root} has no probe checkpoint on disk; "
                "probe with --mode all (or --keep-step K) to keep them"
            )
        if not self.options.steps:
            return found
        missing = [s for s in self.options.steps if s not in found]
        if missing:
            raise T3SError(f"--step {missing}: not on disk (on disk: {sorted(found)})")
        return {s: found[s] for s in sorted(set(self.options.steps))}

    def sample_examples(self) -> list[int]:
        from t3s.analysis.tokenloss import sample_examples

        return sample_examples(len(self.profile.ids), self.options.examples, self.options.seed)

    def sample(self, labels: np.ndarray, n_groups: int) -> Any:
        """The seeded example sample with one group label per scored token (-1: none)."""
        from t3s.analysis.tokenloss import token_sample

        return token_sample(self.profile, labels, n_groups, self.sample_examples(), self.options.max_tokens)

    @property
    def loss_kwargs(self) -> dict[str, int]:
        return {"batch_tokens": self.options.batch_tokens, "chunk": self.options.chunk}


# -- the analyses --------------------------------------------------------------------------------
def run_shock(ctx: Context) -> dict[str, Any]:
    try:
        record: dict[str, Any] | None = ctx.record
    except T3SError:  # the probe is still running: its curves so far, without θb
        record = None
    data = shock.shock_curves(artifacts.probe_metrics(ctx.run), record, artifacts.eval_curves(ctx.run))
    ctx.save("shock", data, plots.shock_figure(data))
    return {
        k: data.get(k) for k in ("bottleneck_step", "base_accuracy", "bottleneck_accuracy", "final_accuracy")
    }


def run_groups(ctx: Context) -> dict[str, Any]:
    b = ctx.record.get("step")
    data = groups.group_dynamics(ctx.profile, ctx.anchors(), b)
    data.update(threshold=ctx.options.threshold, bottleneck_step=b)
    if ctx.options.compare is not None:
        path = artifacts.compare_profile_path(ctx.options.compare)
        main, other = artifacts.aligned_profiles(ctx.run.profile_table(), read_profile(path), str(path))
        compare = groups.group_dynamics(other, main.anchors(ctx.options.threshold))
        compare.update(label=f"{ctx.options.compare.name} (train other tokens only)", source=str(path))
        data["compare"] = compare
    data = ctx.save("groups", data, plots.groups_figure(data))
    return {
        "anchor_share": data["anchor_share"],
        "final_anchor_dprob": data["anchor_mean_dprob"][-1],
        "final_other_dprob": data["other_mean_dprob"][-1],
    }


def run_drops(ctx: Context) -> dict[str, Any]:
    record = ctx.record
    data = groups.persistent_drops(ctx.profile, record["final_step"], ctx.anchors(), record.get("step"))
    data.update(threshold=ctx.options.threshold, bottleneck_step=record.get("step"))
    ctx.save("drops", data, plots.drops_figure(data))
    return {"final_step": data["final_step"], "share_below_base": data["share_below_base"]}


def run_tokens(ctx: Context) -> dict[str, Any]:
    from t3s.models import load_tokenizer

    record = ctx.record
    tokenizer = load_tokenizer(ctx.run.base_model(), trust_remote_code=ctx.options.trust_remote_code)
    rows = tokens.aggregate_tokens(ctx.profile.token, ctx.profile.delta, lambda i: tokenizer.decode([i]))
    top = tokens.top_tokens(rows, ctx.options.top, ctx.options.min_count)
    data: dict[str, Any] = {"bottleneck_step": record.get("step"), "min_count": ctx.options.min_count, **top}
    try:
        import wordcloud  # noqa: F401
    except ImportError:
        data["note"] = "wordcloud is not installed (pip install wordcloud): bar charts instead of word clouds"
    ctx.save("tokens", data, plots.tokens_figure(data))
    md = [
        f"# Top tokens by Δc at θb (step {record.get('step')}), seen at least {ctx.options.min_count} times\n"
    ]
    for key, title in (("rise", "confidence rise"), ("drop", "confidence drop")):
        md += [f"\n## Largest {title}\n\n", tokens.markdown_table(top[key])]
    write_text(ctx.out / "tokens.md", "".join(md))
    return {key: [r["token"] for r in top[key][:5]] for key in ("rise", "drop")}


def _per_checkpoint(
    ctx: Context, measure: Callable[[Any, Any], dict[str, float]], updates: bool
) -> dict[str, Any]:
    from t3s.analysis.gradients import ANCHOR

    sample = ctx.sample(ctx.anchors().astype(np.int64) * ANCHOR, 2)
    rows = []
    for step, path in ctx.checkpoints().items():
        model = ctx.load(path, updates=updates)
        rows.append({"step": step, **measure(model, sample)})
        del model
    counts = sample.counts().tolist()
    data: dict[str, Any] = {
        "steps": [r["step"] for r in rows],
        **{k: [r[k] for r in rows] for k in rows[0] if k != "step"},
        "bottleneck_step": ctx.record.get("step"),
        "threshold": ctx.options.threshold,
        "examples": len(sample.input_ids),
        "other_tokens": counts[0],
        "anchor_tokens": counts[1],
        "params": ctx.options.params,
    }
    return data


def _at_bottleneck(data: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    b = data["bottleneck_step"]
    i = min(range(len(data["steps"])), key=lambda k: abs(data["steps"][k] - (b or 0)))
    return {"step": data["steps"][i], **{k: data[k][i] for k in keys}}


def run_intervention(ctx: Context) -> dict[str, Any]:
    from t3s.analysis.gradients import anchor_step

    opts = ctx.options
    data = _per_checkpoint(
        ctx,
        lambda model, sample: anchor_step(model, sample, lr=opts.lr, rule=opts.rule, **ctx.loss_kwargs),
        updates=True,
    )
    data.update(lr=opts.lr, rule=opts.rule)
    data = ctx.save("intervention", data, plots.intervention_figure(data))
    return _at_bottleneck(data, ("delta_other_loss", "anchor_loss"))


def run_gradients(ctx: Context) -> dict[str, Any]:
    from t3s.analysis.gradients import gradient_stats

    data = _per_checkpoint(
        ctx, lambda model, sample: gradient_stats(model, sample, **ctx.loss_kwargs), updates=False
    )
    data = ctx.save("gradients", data, plots.gradients_figure(data))
    return _at_bottleneck(data, ("norm_ratio", "cosine"))


def run_transfer(ctx: Context) -> dict[str, Any]:
    from t3s.analysis.tokenloss import in_sample
    from t3s.analysis.transfer import transfer_labels, transfer_matrix

    profile, opts = ctx.profile, ctx.options
    examples = ctx.sample_examples()
    chosen = in_sample(profile, examples, opts.max_tokens)
    labels = np.full(len(profile.delta), -1, dtype=np.int64)
    labels[chosen] = transfer_labels(ctx.anchors()[chosen], profile.logprobs["base"][chosen])
    sample = ctx.sample(labels, 4)
    base_path = ctx.run.base_model()
    data = transfer_matrix(
        lambda: ctx.load(base_path, updates=True),
        sample,
        steps=opts.transfer_steps,
        lr=opts.lr,
        **ctx.loss_kwargs,
    )
    data.update(threshold=opts.threshold, examples=len(sample.input_ids), params=opts.params)
    data = ctx.save("transfer", data, plots.transfer_figure(data))
    return {"diagonal_percent": [row[i] for i, row in enumerate(data["matrix_percent"])]}


def run_separability(ctx: Context) -> dict[str, Any]:
    from t3s.analysis import separability as sep

    profile, opts, record = ctx.profile, ctx.options, ctx.record
    anchors = ctx.anchors()
    data: dict[str, Any] = {
        "threshold": opts.threshold,
        "histogram": sep.confidence_histogram(profile.logprobs["base"], anchors),
    }
    paths = {"base": ctx.run.base_model(), "bottleneck": ctx.run.resolve(record["bottleneck"])}
    paths.update({f"step{k}": v for k, v in ctx.run.checkpoints().items() if k})
    if opts.sketch_checkpoint not in paths:
        raise T3SError(f"--sketch-checkpoint {opts.sketch_checkpoint!r}: use one of {', '.join(paths)}")
    sample = ctx.sample(anchors.astype(np.int64), 2)
    model = ctx.load(paths[opts.sketch_checkpoint], updates=False)
    sketches, labels = sep.gradient_sketches(
        model, sample, dim=opts.sketch_dim, seed=opts.seed, **ctx.loss_kwargs
    )
    del model
    coords, share = sep.pca2(sketches)
    is_anchor = labels == 1
    data.update(
        sketch_checkpoint=opts.sketch_checkpoint,
        sketch_dim=opts.sketch_dim,
        sketch_tokens=len(labels),
        pca_variance_share=share,
        auroc_sketch_mean_direction=sep.mean_direction_auroc(sketches, is_anchor),
    )
    write_parquet(
        ctx.out / "separability.parquet",
        pa.table(
            {
                "anchor": is_anchor,
                "pc1": coords[:, 0].astype(np.float32),
                "pc2": coords[:, 1].astype(np.float32),
                "sketch": pa.array(list(sketches.astype(np.float32)), type=pa.list_(pa.float32())),
            }
        ),
    )
    data = ctx.save("separability", data, plots.separability_figure(data, coords, is_anchor))
    return {
        "auroc_base_confidence": data["histogram"]["auroc_base_confidence"],
        "auroc_sketch_mean_direction": data["auroc_sketch_mean_direction"],
    }


def _policy_keeps(ctx: Context) -> dict[str, np.ndarray]:
    """Each masked dataset of the run, read as a keep flag per scored token of the profile."""
    from t3s.selection import read_masks

    p = ctx.profile
    out = {}
    for folder in ctx.run.masks_dirs():
        table = read_masks(folder)
        by_id = dict(zip(table.column("id").to_pylist(), table.column("loss_mask").to_pylist(), strict=True))
        if any(i not in by_id for i in p.ids):
            continue  # masks of other examples (e.g. a subset): nothing to read them against
        rows = [np.asarray(by_id[i], dtype=bool) for i in p.ids]
        out[folder.name] = np.fromiter(
            (rows[e][pos] for e, pos in zip(p.example, p.position, strict=True)),
            dtype=bool,
            count=len(p.example),
        )
    return out


def run_lossshare(ctx: Context) -> dict[str, Any]:
    from t3s.models import load_tokenizer

    p = ctx.profile
    tokenizer = load_tokenizer(ctx.run.base_model(), trust_remote_code=ctx.options.trust_remote_code)
    ids, inverse = np.unique(p.token, return_inverse=True)
    classes = np.asarray([lossshare.token_class(tokenizer.decode([int(i)])) for i in ids])[inverse]
    nll = -p.logprobs["base"].astype(np.float64)
    anchors = ctx.anchors()
    policies = {}
    for name, kept in _policy_keeps(ctx).items():
        share = lossshare.loss_share(nll, kept)
        policies[name] = {
            "kept_token_share": float(kept.mean()),
            "loss_share": share,
            "warning": lossshare.low_share_warning(name, share),
        }
    data = {
        "threshold": ctx.options.threshold,
        "bottleneck_step": ctx.record.get("step"),
        "tokens": len(nll),
        "anchor_share": float(anchors.mean()),
        "anchor_loss_share": lossshare.loss_share(nll, anchors),
        "low_share": lossshare.LOW_LOSS_SHARE,
        "bands": lossshare.delta_bands(p.delta, nll),
        "classes": lossshare.by_class(p.delta, nll, classes, ctx.options.threshold),
        "policies": policies,
    }
    data = ctx.save("lossshare", data, plots.lossshare_figure(data))
    return {
        "anchor_loss_share": data["anchor_loss_share"],
        **{f"loss_share_{k}": v["loss_share"] for k, v in policies.items()},
    }


# Each analysis is the function run_<name> above; the names and their order are declared once, in
# `t3s.analysis.options`, which a run config reads without loading this module's plotting.
ANALYSES: dict[str, Callable[[Context], dict[str, Any]]] = {name: globals()[f"run_{name}"] for name in NAMES}


def parse_names(what: str) -> list[str]:
    try:
        return analysis_names([n.strip() for n in what.split(",") if n.strip()])
    except ValueError:
        raise T3SError(
            f"--what {what!r}: use all or a comma-separated list of {', '.join(ANALYSES)}"
        ) from None


def analyze(
    run_path: str | Path,
    names: list[str],
    options: AnalysisOptions,
    *,
    skip_missing: bool = False,
    on_result: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Run the named analyses; with `skip_missing` an analysis whose inputs are missing is skipped
    (its result is {"skipped": reason}) instead of stopping the others."""
    run = RunDir(run_path)
    if not run.root.is_dir():
        raise T3SError(f"run {run.root}: no such directory")
    ctx = Context(run, options)
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        try:
            results[name] = ANALYSES[name](ctx)
        except T3SError as exc:
            if not skip_missing:
                raise
            results[name] = {"skipped": str(exc)}
        if on_result is not None:
            on_result(name, results[name])
    return results


class AnalyzeStage(Stage):
    """The analyses of a run into RUN/analysis/, on the main process; one whose inputs the run lacks
    is skipped (the reason recorded), not an error at the end of a long chain.

    Never skipped as a stage: the analyses read most of the run's artifacts, which no one
    fingerprint covers, and each rewrites its own files.
    """

    name = "analyze"
    skippable = False

    def __init__(self, settings: AnalyzeSettings) -> None:
        self.settings = settings

    def fingerprint(self, run: RunDir) -> str:
        return digest(self.settings.model_dump(mode="json"))

    def run(self, run: RunDir, attempt: Attempt) -> dict[str, Any]:
        if not attempt.main:  # one process writes RUN/analysis/
            return {}
        results = analyze(
            run.root, self.settings.what, self.settings, skip_missing=True, on_result=_say_skipped
        )
        return {"summary": _json_safe(results)}


def _say_skipped(name: str, result: dict[str, Any]) -> None:
    if "skipped" in result:
        console.print(f"analysis {name} skipped: {result['skipped']}", highlight=False, soft_wrap=True)
