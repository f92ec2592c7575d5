"""The testbed's sections of `t3s report`: the shock with the teacher's style, the final table, the gate.

`t3s.report` adds `SECTIONS` to the report of any run that holds a testbed summary.
"""

from __future__ import annotations

import statistics
from typing import Any

from matplotlib.figure import Figure as MplFigure
from matplotlib.ticker import MaxNLocator

from t3s.analysis import plots
from t3s.report import Figure, Item, ReportContext, ReportRun, Section, SectionBuilder, Table, Text, pct

ORDER_FINAL, ORDER_SHOCK, ORDER_GATE = 2.0, 3.0, 4.0


def _summary(run: ReportRun) -> dict[str, Any] | None:
    data = run.json(run.run.testbed_summary)
    return data if isinstance(data, dict) else None


def shock_figure(curve: list[dict[str, Any]], bottleneck: int | None, teacher: str) -> MplFigure:
    fig = MplFigure(figsize=(15.6, 3.8), layout="constrained")
    axes = fig.subplots(1, 3)
    steps = [r["step"] for r in curve]
    panels = [
        ("Teacher-forced loss (training traces)", "mean NLL per response token (nats)", [("teacher_forced_loss", "loss", None)]),
        ("Accuracy along plain SFT", "greedy accuracy (%)",
         [("train_accuracy", "training prompts", 100), ("heldout_accuracy", "held-out problems", 100)]),
        (f"Answers written in the teacher's style ({teacher})", "share of answers (%)",
         [("teacher_style_train", "training prompts", 100), ("teacher_style_heldout", "held-out problems", 100)]),
    ]  # fmt: skip
    for ax, (title, ylabel, series) in zip(axes, panels, strict=True):
        for key, label, scale in series:
            ys = [r.get(key) for r in curve]
            pts = [(s, y * (scale or 1)) for s, y in zip(steps, ys, strict=True) if y is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=label)
        if bottleneck is not None:
            ax.axvline(
                bottleneck, color=plots.BOTTLENECK_COLOR, linestyle="--", label=f"θb (step {bottleneck})"
            )
        ax.set(title=title, xlabel=plots.STEP_LABEL, ylabel=ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def _final_rows(runs: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]], str]:
    names = list(runs[0]["final"])
    counts = sorted(runs[0]["final"][names[0]].get("by_count", {}), key=int)
    if len(runs) == 1:
        f = runs[0]["final"]
        rows = [[n, f"{100 * f[n]['accuracy']:.1f}% ± {100 * (f[n]['stderr'] or 0):.1f}", f[n]["problems"],
                 *(pct(f[n]["by_count"][c]) for c in counts),
                 pct(f[n]["teacher_style"]), f"{f[n]['mean_tokens']:.1f}"] for n in names]  # fmt: skip
        columns = ["model", "held-out accuracy ± s.e.", "problems", *(f"{c} numbers" for c in counts),
                   "teacher-style answers", "tokens / answer"]  # fmt: skip
        note = "Greedy decoding; the standard error is over problems (one seed)."
        return columns, rows, note
    rows = []
    for n in names:
        accs = [r["final"][n]["accuracy"] for r in runs if n in r["final"]]
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        rows.append([n, f"{100 * statistics.fmean(accs):.1f}% ± {100 * std:.1f}", runs[0]["final"][n]["problems"],
                     len(accs), " / ".join(f"{100 * a:.1f}" for a in accs),
                     pct(statistics.fmean(r["final"][n]["teacher_style"] for r in runs))])  # fmt: skip
    columns = [
        "model",
        "held-out accuracy (mean ± std over seeds)",
        "problems",
        "seeds",
        "per seed (%)",
        "teacher-style answers",
    ]
    return (
        columns,
        rows,
        "Greedy decoding; mean ± standard deviation over seeds, each on the same held-out problems.",
    )


def verdicts(final: dict[str, dict[str, float]], spread: float) -> list[str]:
    """Plain statements of how the policies compare; `spread` is the noise level they must beat."""
    acc = {k: v for k, v in final.items()}
    out = []
    if "t3s" in acc and "sft" in acc:
        diff = acc["t3s"] - acc["sft"]
        out.append(f"T3S {'beats' if diff > spread else 'does not clearly beat'} SFT: {100 * diff:+.1f} points "
                   f"(noise level {100 * spread:.1f}).")  # fmt: skip
    if "t3s" in acc and "base" in acc:
        diff = acc["t3s"] - acc["base"]
        out.append(f"T3S {'ends above' if diff > spread else 'does not end clearly above'} the base student: "
                   f"{100 * diff:+.1f} points (noise level {100 * spread:.1f}).")  # fmt: skip
    if "inverse" in acc and "sft" in acc:
        out.append(
            f"-T3S (anchors only) reaches {100 * acc['inverse']:.1f}% against SFT's {100 * acc['sft']:.1f}%."
        )
    return out


def testbed_final(ctx: ReportContext) -> list[Section]:
    runs = [s for r in ctx.runs if (s := _summary(r))]
    if not runs:
        return []
    columns, rows, note = _final_rows(runs)
    means = {n: statistics.fmean(r["final"][n]["accuracy"] for r in runs) for n in runs[0]["final"]}
    if len(runs) > 1:
        spread = max(statistics.stdev([r["final"][n]["accuracy"] for r in runs]) for n in means)
    else:
        spread = max((v["stderr"] or 0) for v in runs[0]["final"].values())
    items: list[Item] = [Table(columns, rows, note), *(Text(v) for v in verdicts(means, spread))]
    return [Section("Testbed: held-out results", items, ORDER_FINAL)]


def _shock_items(ctx: ReportContext, run: ReportRun) -> list[Item]:
    s = _summary(run)
    if not s or not s.get("curve"):
        return []
    step = (s.get("bottleneck") or {}).get("step")
    teacher = s["config"]["teacher"]
    fig = plots.png_bytes(shock_figure(s["curve"], step, teacher))
    keys = [
        "step",
        "teacher_forced_loss",
        "train_accuracy",
        "heldout_accuracy",
        "teacher_style_train",
        "teacher_style_heldout",
    ]
    rows = [[r.get(k) for k in keys] for r in s["curve"]]
    return [
        Figure(
            ctx.slug(run, "testbed_shock"),
            fig,
            "Plain SFT on the teacher's traces: loss falls monotonically while accuracy crashes and recovers "
            "as the student switches to the teacher's style (hybrid answers in between); θb is the checkpoint "
            "with the lowest training accuracy.",
        ),
        Table(keys, rows),
    ]


def testbed_shock(ctx: ReportContext) -> list[Section]:
    parts = [(r, items) for r in ctx.runs if (items := _shock_items(ctx, r))]
    if not parts:
        return []
    if len(parts) == 1:
        return [Section("Testbed: Imitation Shock and the teacher's style", parts[0][1], ORDER_SHOCK)]
    return [Section("Testbed: Imitation Shock and the teacher's style", [], ORDER_SHOCK,
                    subsections=[Section(r.label, items) for r, items in parts])]  # fmt: skip


def testbed_gate(ctx: ReportContext) -> list[Section]:
    s = next((s for r in ctx.runs if (s := _summary(r))), None)
    if not s or not s.get("gate"):
        return []
    g = s["gate"]
    rows = [["own style (no prefix)", pct(g["own_style_accuracy"]), g["problems"]],
            [f"teacher's first words forced ({g['prefix'].strip()!r})", pct(g["forced_teacher_prefix_accuracy"]), g["problems"]]]  # fmt: skip
    text = ("The competence gate: the base student's greedy accuracy when its answer must start with the teacher's "
            "first words, next to its accuracy in its own style. A gate close to the own-style accuracy means the "
            "student can compute inside the teacher's style, so distillation is a shock, not a fresh start.")  # fmt: skip
    return [
        Section(
            "Testbed: competence gate",
            [Text(text), Table(["base student", "accuracy", "problems"], rows)],
            ORDER_GATE,
        )
    ]


SECTIONS: tuple[SectionBuilder, ...] = (testbed_final, testbed_shock, testbed_gate)
