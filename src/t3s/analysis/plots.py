"""Matplotlib figures for every analysis, from the numbers the analyses save (no pyplot, no global state).

Each function takes the JSON-ready dict an analysis writes and returns a `Figure`, so the report
can redraw any plot from `RUN/analysis/<name>.json` alone.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from t3s.io import atomic_path

ANCHOR_COLOR, OTHER_COLOR, BOTTLENECK_COLOR = "#d62728", "#1f77b4", "#7f7f7f"
STEP_LABEL = "checkpoint (optimizer step)"


def _figure(panels: int, height: float = 3.6) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=(5.2 * panels, height), layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    for ax in axes:
        ax.grid(True, alpha=0.3)
    return fig, list(axes)


def _steps_axes(ax: Axes, title: str, ylabel: str, xlabel: str = STEP_LABEL) -> None:
    """Title and labels of a panel whose x axis counts optimizer steps (integer ticks only)."""
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _mark_bottleneck(ax: Axes, step: int | None) -> None:
    if step is not None:
        ax.axvline(step, color=BOTTLENECK_COLOR, linestyle="--", linewidth=1.2, label=f"θb (step {step})")


def _percent(values: Sequence[float | None]) -> list[float]:
    return [np.nan if v is None else 100.0 * v for v in values]


def _points(xs: Sequence[Any], ys: Sequence[Any]) -> tuple[list[Any], list[Any]]:
    pairs = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def save_png(fig: Figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path


def png_bytes(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def shock_figure(data: dict[str, Any]) -> Figure:
    benchmarks = data.get("benchmarks") or {}
    fig, axes = _figure(3 if benchmarks else 2)
    steps, b = data["steps"], data.get("bottleneck_step")
    ax = axes[0]
    for key, label in (
        ("train_loss", "training loss (batch)"),
        ("teacher_forced_loss", "teacher-forced loss"),
    ):
        xs, ys = _points(steps, data[key])
        if xs:
            ax.plot(xs, ys, marker="o", markersize=3, label=label)
    _mark_bottleneck(ax, b)
    _steps_axes(ax, "Loss along the SFT trajectory", "loss (nats / response token)")
    ax.legend(fontsize=8)
    ax = axes[1]
    xs, ys = _points(steps, data["train_accuracy"])
    ax.plot(xs, _percent(ys), marker="o", markersize=3, color="#2ca02c", label="training accuracy")
    _mark_bottleneck(ax, b)
    _steps_axes(ax, "Training accuracy (Imitation Shock)", "accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.legend(fontsize=8)
    if benchmarks:
        ax = axes[2]
        for bench, curves in benchmarks.items():
            # avg@k is the paper's benchmark score; other metrics only when a bench has no avg@k.
            shown = {m: v for m, v in curves.items() if m.startswith("avg@")} or curves
            for metric, points in shown.items():
                xs, ys = [p[0] for p in points], [p[1] for p in points]
                scale = 100.0 if max(ys) <= 1.0 else 1.0  # fractions become percentages
                ax.plot(xs, [scale * y for y in ys], marker="o", markersize=3, label=f"{bench} {metric}")
        _mark_bottleneck(ax, b)
        _steps_axes(ax, "Benchmark accuracy per checkpoint", "accuracy (%)")
        ax.legend(fontsize=8)
    return fig


def _group_panel(ax: Axes, data: dict[str, Any], title: str, bottleneck: int | None) -> None:
    for key, label, color in (
        ("anchor_mean_dprob", f"anchors (n={data['anchors']:,})", ANCHOR_COLOR),
        ("other_mean_dprob", f"other tokens (n={data['others']:,})", OTHER_COLOR),
    ):
        xs, ys = _points(data["steps"], data[key])
        ax.plot(xs, ys, marker="o", markersize=3, color=color, label=label)
    ax.axhline(0, color="black", linewidth=0.8)
    _mark_bottleneck(ax, bottleneck)
    _steps_axes(ax, title, "mean Δprob = p(θk) − p(θ0)")
    ax.legend(fontsize=8)


def groups_figure(data: dict[str, Any]) -> Figure:
    compare = data.get("compare")
    fig, axes = _figure(2 if compare else 1)
    b = data.get("bottleneck_step")
    _group_panel(axes[0], data, "Token-group dynamics (full objective)", b)
    if compare:
        _group_panel(axes[1], compare, f"Same groups in {compare['label']}", None)
    return fig


def drops_figure(data: dict[str, Any]) -> Figure:
    fig, (ax,) = _figure(1)
    ax.plot(
        data["steps"], _percent(data["share_below_base_by_step"]), marker="o", markersize=3, color="#9467bd"
    )
    _mark_bottleneck(ax, data.get("bottleneck_step"))
    final = 100.0 * data["share_below_base"]
    ax.annotate(
        f"{final:.1f}% at the final step",
        (data["final_step"], final),
        fontsize=8,
        ha="right",
        textcoords="offset points",
        xytext=(-4, 8),
    )
    _steps_axes(ax, "Tokens below their base confidence", "share of response tokens (%)")
    ax.set_ylim(-2, 102)
    ax.legend(fontsize=8)
    return fig


def tokens_figure(data: dict[str, Any], *, bars: int = 25) -> Figure:
    """Word clouds (size ∝ |mean Δc|) when `wordcloud` is installed, else bar charts of the top `bars`."""
    from t3s.analysis.tokens import visible

    try:
        from wordcloud import WordCloud
    except ImportError:
        WordCloud = None
    fig, axes = _figure(2, height=4.2 if WordCloud else 6.0)
    for ax, key, title, color in (
        (axes[0], "rise", "largest confidence rise at θb", ANCHOR_COLOR),
        (axes[1], "drop", "largest confidence drop at θb", OTHER_COLOR),
    ):
        rows = data[key]
        ax.set_title(f"Top {len(rows)} tokens: {title}")
        if not rows:
            ax.text(
                0.5, 0.5, f"no token seen {data['min_count']}+ times moved this way", ha="center", va="center"
            )
            ax.set_axis_off()
        elif WordCloud is not None:
            # Whitespace-only tokens have no word to draw (the tables list them).
            weights: dict[str, float] = {}
            for r in rows:
                if word := r["token"].strip():
                    weights[word] = weights.get(word, 0.0) + abs(r["mean_delta"])
            cloud = WordCloud(
                width=640,
                height=400,
                background_color="white",
                random_state=0,
                color_func=lambda *a, c=color, **k: c,
            )
            if weights:
                ax.imshow(cloud.generate_from_frequencies(weights), interpolation="bilinear")
            ax.set_axis_off()
        else:
            shown = rows[:bars][::-1]
            ax.barh([visible(r["token"]) for r in shown], [r["mean_delta"] for r in shown], color=color)
            ax.set_xlabel("mean Δc = c(θb) − c(θ0) (nats)")
    return fig


def intervention_figure(data: dict[str, Any]) -> Figure:
    fig, axes = _figure(2)
    b = data.get("bottleneck_step")
    xs, ys = _points(data["steps"], data["delta_other_loss"])
    axes[0].plot(xs, ys, marker="o", markersize=3, color=OTHER_COLOR)
    axes[0].axhline(0, color="black", linewidth=0.8)
    _steps_axes(axes[0], "ΔL_other after one anchor-only step", "Δ loss of other tokens (nats)")
    xs, ys = _points(data["steps"], data["anchor_loss"])
    axes[1].plot(xs, ys, marker="o", markersize=3, color=ANCHOR_COLOR)
    _steps_axes(axes[1], "Anchor-token loss L_anchor", "loss (nats / token)")
    for ax in axes:
        _mark_bottleneck(ax, b)
        ax.legend(fontsize=8)
    return fig


def gradients_figure(data: dict[str, Any]) -> Figure:
    fig, axes = _figure(2)
    b = data.get("bottleneck_step")
    xs, ys = _points(data["steps"], data["norm_ratio"])
    axes[0].plot(xs, ys, marker="o", markersize=3, color=ANCHOR_COLOR)
    axes[0].axhline(1, color="black", linewidth=0.8)
    _steps_axes(axes[0], "Gradient norm ratio", "‖g_anchor‖ / ‖g_other‖ (×)")
    xs, ys = _points(data["steps"], data["cosine"])
    axes[1].plot(xs, ys, marker="o", markersize=3, color="#8c564b")
    axes[1].axhline(0, color="black", linewidth=0.8)
    _steps_axes(axes[1], "Cosine between the group gradients", "cos(g_anchor, g_other)")
    axes[1].set_ylim(-1.05, 1.05)
    for ax in axes:
        _mark_bottleneck(ax, b)
        ax.legend(fontsize=8)
    return fig


def transfer_figure(data: dict[str, Any]) -> Figure:
    matrix = np.asarray(data["matrix_percent"], dtype=float)
    fig = Figure(figsize=(6.4, 5.0), layout="constrained")
    ax = fig.subplots()
    limit = float(np.nanmax(np.abs(matrix))) or 1.0
    image = ax.imshow(matrix, cmap="RdBu_r", vmin=-limit, vmax=limit)
    names = data["subsets"]
    ax.set_xticks(range(len(names)), names, rotation=20)
    ax.set_yticks(range(len(names)), names)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, f"{matrix[i, j]:+.1f}%", ha="center", va="center", fontsize=9)
    ax.set(
        title=f"Loss transfer from θ0 ({data['steps']} steps per subset)",
        xlabel="evaluated on",
        ylabel="trained on",
    )
    fig.colorbar(image, ax=ax, label="loss change (%)")
    return fig


def separability_figure(
    data: dict[str, Any], coords: np.ndarray | None, anchors: np.ndarray | None
) -> Figure:
    hist = data["histogram"]
    fig, axes = _figure(2 if coords is not None else 1, height=4.0)
    ax = axes[0]
    edges = np.asarray(hist["edges"])
    for key, label, color in (
        ("anchor_density", "anchors", ANCHOR_COLOR),
        ("other_density", "other tokens", OTHER_COLOR),
    ):
        ax.stairs(hist[key], edges, label=label, color=color, fill=True, alpha=0.4)
    auc = hist.get("auroc_base_confidence")
    ax.set(
        title=f"Base confidence by group (AUROC {auc:.2f})"
        if auc is not None
        else "Base confidence by group",
        xlabel="c(θ0) = log p under θ0 (nats)",
        ylabel="density",
    )
    ax.legend(fontsize=8)
    if coords is not None and anchors is not None:
        ax = axes[1]
        for members, label, color in (
            (~anchors, "other tokens", OTHER_COLOR),
            (anchors, "anchors", ANCHOR_COLOR),
        ):
            ax.scatter(coords[members, 0], coords[members, 1], s=4, alpha=0.4, color=color, label=label)
        share = data.get("pca_variance_share", [0.0, 0.0])
        ax.set(
            title="Token-gradient sketches (PCA)",
            xlabel=f"PC1 ({100 * share[0]:.0f}% of variance)",
            ylabel=f"PC2 ({100 * share[1]:.0f}% of variance)",
        )
        ax.legend(fontsize=8, markerscale=3)
    return fig


def accuracy_overlay_figure(curves: dict[str, dict[str, Any]]) -> Figure:
    """Training accuracy of several runs on one axis (the report's comparison of runs)."""
    fig, (ax,) = _figure(1, height=3.8)
    for label, data in curves.items():
        xs, ys = _points(data["steps"], data["train_accuracy"])
        line = ax.plot(xs, _percent(ys), marker="o", markersize=3, label=label)[0]
        if data.get("bottleneck_step") is not None:
            ax.axvline(data["bottleneck_step"], color=line.get_color(), linestyle="--", linewidth=1)
    _steps_axes(ax, "Training accuracy by run (dashed: θb)", "accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.legend(fontsize=8)
    return fig


def policy_loss_figure(histories: dict[str, list[dict[str, Any]]]) -> Figure:
    """Training loss per logged step of each trained policy (Trainer's log history)."""
    fig, (ax,) = _figure(1, height=3.8)
    for name, rows in histories.items():
        ax.plot(
            [r.get("step") for r in rows], [r["loss"] for r in rows], marker="o", markersize=2, label=name
        )
    _steps_axes(ax, "Training loss by policy", "loss (nats / kept token)", "optimizer step")
    ax.legend(fontsize=8)
    return fig


def lossshare_figure(data: dict[str, Any]) -> Figure:
    """Share of response tokens against share of θ0's loss, per Δc band and per token class."""
    fig, axes = _figure(2)
    panels = [("Per Δc band (nats)", "band", data["bands"]), ("Per token class", "class", data["classes"])]
    for ax, (title, key, rows) in zip(axes, panels, strict=True):
        x = np.arange(len(rows))
        for offset, (field, label, color) in zip(
            (-0.2, 0.2),
            (("token_share", "response tokens", OTHER_COLOR), ("loss_share", "θ0's loss", ANCHOR_COLOR)),
            strict=True,
        ):
            ax.bar(x + offset, _percent([r[field] for r in rows]), width=0.4, label=label, color=color)
        ax.set_xticks(x, [r[key] for r in rows])
        ax.set(title=title, ylabel="share (%)")
        ax.legend()
    return fig
