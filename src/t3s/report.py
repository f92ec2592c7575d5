"""`t3s report`: one self-contained HTML page and a Markdown summary of one or more runs.

A report is a list of sections; a section is a title, an order and content items (text, tables,
figures, preformatted blocks) that render to both HTML and Markdown. Sections come from two
places, and each appears only when its data exists:

- section builders: functions `(ReportContext) -> list[Section]`, in explicit lists: `SECTIONS`
  here for every run, and the testbed's (`t3s.testbed.report_sections.SECTIONS`) for a run that
  holds a testbed summary (`sections_for`). A new feature adds its builder to a list, or passes
  its own list to `build_report`.
- extra items: `RUN/report/extra/*.json` and `*.md` files that any stage may drop in, with no code
  here. JSON: {"title", "order", "text", "markdown", "table": {"columns", "rows", "caption"},
  "tables": [...], "images": ["file.png" or {"path", "caption"}]} (every key optional; paths
  relative to the extra folder); Markdown: the file's first `# ` line is the title.

The HTML embeds every figure as base64 PNG and inlines its CSS: it opens in a browser offline.
The Markdown summary links the same figures, written to `REPORT/figures/`.
"""

from __future__ import annotations

import base64
import html
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from t3s.analysis import artifacts, plots, shock
from t3s.analysis.tokens import visible
from t3s.errors import T3SError
from t3s.io import atomic_path, read_json, read_jsonl, write_text
from t3s.rundir import RunDir


# -- content model -------------------------------------------------------------------------------
@dataclass
class Text:
    text: str


@dataclass
class Table:
    columns: list[str]
    rows: list[list[Any]]
    caption: str = ""


@dataclass
class Figure:
    name: str  # unique file stem under REPORT/figures/
    png: bytes
    caption: str = ""


@dataclass
class Pre:
    text: str
    summary: str = ""  # when set, the block is folded under this line in HTML


@dataclass
class Markdown:
    """Markdown text shown as is in the summary and as preformatted text in the HTML page."""

    text: str


Item = Text | Table | Figure | Pre | Markdown


@dataclass
class Section:
    title: str
    items: list[Item]
    order: float = 50.0
    subsections: list[Section] = field(default_factory=list)


# -- the runs being reported ---------------------------------------------------------------------
class ReportRun:
    """One run directory and tolerant readers of its artifacts (None when missing or unreadable)."""

    def __init__(self, path: Path, label: str) -> None:
        self.run, self.label = RunDir(path), label

    def json(self, path: Path) -> Any:
        try:
            return read_json(path) if path.is_file() else None
        except (ValueError, OSError):
            return None

    def analysis(self, name: str) -> dict[str, Any] | None:
        data = self.json(self.run.analysis_dir / f"{name}.json")
        return data if isinstance(data, dict) else None

    def png(self, path: Path) -> bytes | None:
        return path.read_bytes() if path.is_file() else None

    @property
    def manifest(self) -> dict[str, Any]:
        try:
            return self.run.manifest()
        except T3SError:
            return {}

    @property
    def bottleneck(self) -> dict[str, Any] | None:
        try:
            return self.run.bottleneck()
        except T3SError:
            return None


@dataclass
class ReportContext:
    runs: list[ReportRun]
    out: Path

    def slug(self, run: ReportRun, name: str) -> str:
        return re.sub(r"[^A-Za-z0-9_-]+", "_", f"{run.label}_{name}") if len(self.runs) > 1 else name


# A section builder returns no section when its data does not exist.
SectionBuilder = Callable[[ReportContext], list[Section]]


# -- formatting ----------------------------------------------------------------------------------
def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e5 else f"{value:.3e}"
    return str(value)


def pct(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f}%"


def _titled(
    ctx: ReportContext, title: str, order: float, build: Callable[[ReportRun], list[Item]]
) -> list[Section]:
    """A top-level section with `build`'s items for the run, or one subsection per run when comparing."""
    parts = [(r, items) for r in ctx.runs if (items := build(r))]
    if not parts:
        return []
    if len(ctx.runs) == 1:
        return [Section(title, parts[0][1], order)]
    return [Section(title, [], order, subsections=[Section(r.label, items) for r, items in parts])]


def _figure(ctx: ReportContext, run: ReportRun, name: str, caption: str) -> list[Item]:
    png = run.png(run.run.analysis_dir / f"{name}.png")
    return [Figure(ctx.slug(run, name), png, caption)] if png else []


# -- built-in sections ---------------------------------------------------------------------------
def headlines(run: ReportRun) -> dict[str, str]:
    """The few numbers to read first: θb, the accuracy crash, anchor share, persistent drops."""
    out: dict[str, str] = {}
    record = run.bottleneck
    if record is not None:
        out["θb step"] = fmt(record.get("step"))
    rows = run.run.probe_metrics()
    acc = [(r["step"], r["train_accuracy"]) for r in rows if r.get("train_accuracy") is not None]
    if acc and record is not None:
        at_b = next((a for s, a in acc if s == record.get("step")), None)
        out["training accuracy θ0 → θb → final"] = f"{pct(acc[0][1])} → {pct(at_b)} → {pct(acc[-1][1])}"
    summary = run.json(run.run.profile_summary)
    if isinstance(summary, dict) and isinstance(summary.get("delta"), dict):
        out["anchor share (Δc > 0)"] = pct(summary["delta"].get("anchor_share"))
    drops = run.analysis("drops")
    if drops:
        out[f"tokens below θ0 at step {drops.get('final_step')}"] = pct(drops.get("share_below_base"))
    return out


def overview(ctx: ReportContext) -> list[Section]:
    keys: list[str] = []
    numbers = {r.label: headlines(r) for r in ctx.runs}
    for values in numbers.values():
        keys += [k for k in values if k not in keys]
    rows = [[r.label, str(r.run.root), *(numbers[r.label].get(k, "–") for k in keys)] for r in ctx.runs]
    items: list[Item] = [Table(["run", "directory", *keys], rows)]
    if len(ctx.runs) > 1:
        curves = {}
        for r in ctx.runs:
            metrics = r.run.probe_metrics()
            if metrics:
                curves[r.label] = shock.shock_curves(metrics, r.bottleneck, {})
        if curves:
            png = plots.png_bytes(plots.accuracy_overlay_figure(curves))
            items.append(Figure("compare_accuracy", png, "Training accuracy of every run along its probe."))
    return [Section("Overview", items, order=0)]


def _shock_items(ctx: ReportContext, run: ReportRun) -> list[Item]:
    metrics = run.run.probe_metrics()
    if not metrics:
        return []
    caption = "Loss and training accuracy (benchmark accuracy when evaluated) per checkpoint; θb dashed."
    items = _figure(ctx, run, "shock", caption)
    if not items:  # not analysed yet: the curves are cheap to draw from the probe's metrics
        data = shock.shock_curves(metrics, run.bottleneck, artifacts.eval_curves(run.run))
        items = [Figure(ctx.slug(run, "shock"), plots.png_bytes(plots.shock_figure(data)), caption)]
    columns = ["step", "train_loss", "teacher_forced_loss", "train_accuracy", "mean_tokens", "truncated"]
    # Verdicts that failed (the verifier raised or timed out) count as wrong in the accuracy.
    columns += [c for c in ("verifier_errors", "heldout_verifier_errors") if any(c in m for m in metrics)]
    rows = [
        [pct(m.get(c)) if c == "train_accuracy" else fmt(m.get(c)) for c in columns]
        for m in sorted(metrics, key=lambda m: m["step"])
    ]
    items.append(Table(columns, rows, "Probe metrics per evaluated checkpoint (losses in nats per token)."))
    return items


def probe_section(ctx: ReportContext) -> list[Section]:
    return _titled(ctx, "Imitation Shock (probe)", 10, lambda r: _shock_items(ctx, r))


def _loss_share_items(data: dict[str, Any]) -> list[Item]:
    """Where θ0's teacher-forced loss sits: by Δc band, by token class, in each policy's kept tokens."""
    bands = [
        [r["band"], pct(r["token_share"]), pct(r["loss_share"]), fmt(r["mean_nll"])] for r in data["bands"]
    ]
    classes = [
        [
            r["class"],
            pct(r["token_share"]),
            pct(r["loss_share"]),
            pct(r["anchor_share"]),
            fmt(r["mean_delta"]),
        ]
        for r in data["classes"]
    ]
    policies = [
        [
            name,
            pct(r["kept_token_share"]),
            pct(r["loss_share"]),
            "low: little left to learn" if r["warning"] else "",
        ]
        for name, r in data["policies"].items()
    ]
    items: list[Item] = [
        Table(
            ["Δc band (nats)", "response tokens", "θ0 loss", "θ0 mean NLL (nats)"],
            bands,
            f"Share of response tokens and of θ0's teacher-forced loss per Δc band (anchors: Δc > "
            f"{fmt(data['threshold'])}, {pct(data['anchor_share'])} of tokens, {pct(data['anchor_loss_share'])} of the loss).",
        ),
        Table(
            ["token class", "response tokens", "θ0 loss", "anchors", "mean Δc"],
            classes,
            "By token class: format (no letter or digit), digits, words.",
        ),
    ]
    if policies:
        items.append(
            Table(
                ["masks", "kept tokens", "θ0 loss kept", ""],
                policies,
                f"θ0's loss carried by the tokens each policy keeps; under {pct(data['low_share'])} the masked "
                "objective has almost nothing left to learn.",
            )
        )
    return items


def _token_items(ctx: ReportContext, run: ReportRun) -> list[Item]:
    items: list[Item] = []
    summary = run.json(run.run.profile_summary)
    if isinstance(summary, dict) and isinstance(summary.get("delta"), dict):
        delta = summary["delta"]
        rows = [
            ["examples", fmt(summary.get("examples"))],
            ["response tokens", fmt(summary.get("response_tokens"))],
            ["anchor share (Δc > 0)", pct(delta.get("anchor_share"))],
            ["mean Δc (nats)", fmt(delta.get("mean"))],
            *[[f"Δc quantile {q}", fmt(v)] for q, v in (delta.get("quantiles") or {}).items()],
            ["checkpoints scored", ", ".join(summary.get("models", {}))],
        ]
        items.append(Table(["profile", "value"], rows, "Δc = c(θb) − c(θ0) per response token."))
    share = run.analysis("lossshare")
    if share:
        items += _loss_share_items(share)
        items += _figure(
            ctx, run, "lossshare", "Share of response tokens and of θ0's loss per Δc band and token class."
        )
    groups = run.analysis("groups")
    if groups:
        items += _figure(
            ctx,
            run,
            "groups",
            f"Mean Δprob of anchors (Δc > {fmt(groups.get('threshold'))}) and of the rest.",
        )
    drops = run.analysis("drops")
    if drops:
        items.append(
            Text(
                f"Persistent drops: {pct(drops.get('share_below_base'))} of response tokens are below their θ0 "
                f"confidence at the final step {drops.get('final_step')} (anchors "
                f"{pct(drops.get('anchor_share_below_base'))}, others {pct(drops.get('other_share_below_base'))})."
            )
        )
        items += _figure(
            ctx, run, "drops", "Share of response tokens below their base confidence, per checkpoint."
        )
    top = run.analysis("tokens")
    if top:
        items += _figure(ctx, run, "tokens", top.get("note") or "Top tokens by mean Δc at θb.")
        for key, title in (("rise", "confidence rise"), ("drop", "confidence drop")):
            rows = [
                [i + 1, visible(r["token"]), r["count"], fmt(r["mean_delta"])]
                for i, r in enumerate(top[key][:20])
            ]
            if rows:
                items.append(
                    Table(
                        ["rank", "token", "count", "mean Δc (nats)"],
                        rows,
                        f"Top 20 by {title} (100 in tokens.md).",
                    )
                )
    return items


def tokens_section(ctx: ReportContext) -> list[Section]:
    return _titled(ctx, "Token groups (Δc at θb)", 20, lambda r: _token_items(ctx, r))


def _mechanism_items(ctx: ReportContext, run: ReportRun) -> list[Item]:
    items: list[Item] = []
    data = run.analysis("intervention")
    if data:
        items += _figure(
            ctx,
            run,
            "intervention",
            f"One {data.get('rule')} step (lr {fmt(data.get('lr'))}) on anchors only at each checkpoint: change of "
            f"the other tokens' loss, and the anchors' loss ({data.get('examples')} examples, "
            f"{data.get('anchor_tokens')} anchor / {data.get('other_tokens')} other tokens).",
        )
    data = run.analysis("gradients")
    if data:
        items += _figure(
            ctx, run, "gradients", "Gradient norm ratio and cosine between anchor and other gradients."
        )
        rows = [
            [s, fmt(r), fmt(c), fmt(a), fmt(o)]
            for s, r, c, a, o in zip(
                data["steps"],
                data["norm_ratio"],
                data["cosine"],
                data["anchor_loss"],
                data["other_loss"],
                strict=True,
            )
        ]
        items.append(
            Table(["step", "‖g_a‖/‖g_o‖", "cosine", "L_anchor", "L_other"], rows, "Gradient dynamics.")
        )
    data = run.analysis("transfer")
    if data:
        names = data["subsets"]
        rows = [[names[i], *(f"{v:+.2f}%" for v in row)] for i, row in enumerate(data["matrix_percent"])]
        items.append(
            Table(
                ["trained on ↓ / evaluated on →", *names],
                rows,
                f"Loss-transfer matrix: % change of each subset's mean loss after {data.get('steps')} steps on one "
                f"subset from θ0 (lr {fmt(data.get('lr'))}; tokens per subset {data.get('tokens')}).",
            )
        )
        items += _figure(ctx, run, "transfer", "Loss-transfer matrix (negative: the loss fell).")
    data = run.analysis("separability")
    if data:
        items += _figure(
            ctx,
            run,
            "separability",
            f"Static separability: AUROC of base confidence {fmt(data['histogram'].get('auroc_base_confidence'), 3)}, "
            f"of the sketches' mean-difference direction {fmt(data.get('auroc_sketch_mean_direction'), 3)} "
            "(0.5: not separable).",
        )
    return items


def mechanisms_section(ctx: ReportContext) -> list[Section]:
    return _titled(ctx, "Why anchors dominate (analyses)", 30, lambda r: _mechanism_items(ctx, r))


def _eval_table(rows: list[dict[str, Any]], key: str, caption: str) -> Table | None:
    """Rows of `curve.jsonl` / `policies.jsonl`: every accuracy metric as mean ± standard error."""
    rows = [r for r in rows if isinstance(r, dict) and key in r]
    if not rows:
        return None
    metrics = [m for m in rows[0] if artifacts.EVAL_METRIC.match(m)]
    extra = [
        c for c in ("problems", "samples", "mean_tokens", "truncated", "verifier_errors") if c in rows[0]
    ]
    if "maj_grouping" in rows[0]:
        caption += f" maj@k votes group answers by {rows[0]['maj_grouping']}."

    def cell(row: dict[str, Any], m: str) -> str:
        se = row.get(f"{m}_stderr")
        return f"{pct(row.get(m))} ± {pct(se)}" if isinstance(se, int | float) else pct(row.get(m))

    table = [[r[key], *(cell(r, m) for m in metrics), *(fmt(r.get(c)) for c in extra)] for r in rows]
    return Table([key, *metrics, *extra], table, caption)


def _eval_items(ctx: ReportContext, run: ReportRun) -> list[Item]:
    items: list[Item] = []
    for bench in run.run.eval_dirs():
        for policies, key, what in (
            (False, "step", "per probe checkpoint"),
            (True, "policy", "per trained policy"),
        ):
            try:
                rows = read_jsonl(run.run.eval_table(bench.name, policies))
            except ValueError:
                continue
            table = _eval_table(
                rows, key, f"{bench.name}: accuracy {what} (mean ± standard error over problems)."
            )
            if table is not None:
                items.append(table)
    return items


def evaluation_section(ctx: ReportContext) -> list[Section]:
    return _titled(ctx, "Evaluation", 40, lambda r: _eval_items(ctx, r))


def _log_rows(log: Path) -> list[dict[str, Any]]:
    """A trained policy's per-step training log (`log.jsonl`, written by `t3s train`)."""
    try:
        rows = read_jsonl(log)
    except ValueError:
        return []
    return [r for r in rows if isinstance(r, dict) and isinstance(r.get("loss"), int | float) and "step" in r]


def _policy_items(ctx: ReportContext, run: ReportRun) -> list[Item]:
    policies = run.run.train_dirs()
    if not policies:
        return []
    stages = run.manifest.get("stages", {})
    rows, histories = [], {}
    for p in policies:
        log = _log_rows(run.run.train_log(p.name))
        weights = any(run.run.model_dir(p.name).glob("*.safetensors")) or any(p.glob("*.safetensors"))
        info = stages.get(f"train:{p.name}", {})
        last = log[-1] if log else {}
        rows.append(
            [p.name, fmt(info.get("status")), fmt(weights), fmt(last.get("step")), fmt(last.get("loss"))]
        )
        if log:
            histories[p.name] = log
    items: list[Item] = [
        Table(
            ["policy", "stage", "weights", "last logged step", "last loss"],
            rows,
            "Trained policies (RUN/train).",
        )
    ]
    if histories:
        fig = plots.policy_loss_figure(histories)
        items.append(Figure(ctx.slug(run, "policies"), plots.png_bytes(fig), "Training loss of each policy."))
    items += _target_items(run)
    return items


def _target_items(run: ReportRun) -> list[Item]:
    """A dLLM run's target sets B (the masks' stats.json): their size beside the random noise."""
    rows = []
    for masks in run.run.masks_dirs():
        stats = run.json(masks / "stats.json")
        if isinstance(stats, dict) and "target_fraction" in stats:
            rows.append([masks.name, fmt(stats.get("target_tokens")), pct(stats["target_fraction"])])
    if not rows:
        return []
    caption = "dLLM target sets B: response tokens masked on top of the random noise (union masking)."
    return [Table(["masks", "target tokens", "target fraction"], rows, caption)]


def policies_section(ctx: ReportContext) -> list[Section]:
    return _titled(ctx, "Trained policies", 50, lambda r: _policy_items(ctx, r))


def _extra_items(run: ReportRun, ctx: ReportContext) -> list[Section]:
    sections = []
    folder = run.run.report_extra_dir
    for path in sorted(folder.glob("*.json")):
        data = run.json(path)
        if isinstance(data, dict):
            sections.append(_extra_json(ctx, run, path, data))
    for path in sorted(folder.glob("*.md")):
        text = path.read_text(encoding="utf-8")
        first = text.lstrip().splitlines()[0] if text.strip() else ""
        title = first[2:].strip() if first.startswith("# ") else path.stem
        sections.append(Section(title, [Markdown(text)], order=60))
    return sections


def _extra_json(ctx: ReportContext, run: ReportRun, path: Path, data: dict[str, Any]) -> Section:
    items: list[Item] = []
    if isinstance(data.get("text"), str):
        items.append(Text(data["text"]))
    if isinstance(data.get("markdown"), str):
        items.append(Markdown(data["markdown"]))
    tables = [data["table"]] if isinstance(data.get("table"), dict) else []
    tables += [t for t in data.get("tables", []) if isinstance(t, dict)]
    for t in tables:
        rows = [[fmt(v) for v in row] for row in t.get("rows", []) if isinstance(row, list)]
        items.append(Table([str(c) for c in t.get("columns", [])], rows, str(t.get("caption", ""))))
    for i, image in enumerate(data.get("images", [])):
        spec = image if isinstance(image, dict) else {"path": image}
        file = path.parent / str(spec.get("path", ""))
        if file.is_file():
            items.append(
                Figure(
                    ctx.slug(run, f"extra_{path.stem}_{i}"), file.read_bytes(), str(spec.get("caption", ""))
                )
            )
    order = data.get("order", 60)
    title = str(data.get("title", path.stem))
    if len(ctx.runs) > 1:
        title = f"{title} ({run.label})"
    return Section(title, items, order=float(order) if isinstance(order, int | float) else 60.0)


def extras_section(ctx: ReportContext) -> list[Section]:
    return [s for r in ctx.runs for s in _extra_items(r, ctx)]


def _config_items(ctx: ReportContext, run: ReportRun) -> list[Item]:
    manifest = run.manifest
    if not manifest:
        return []
    stages = manifest.get("stages", {})
    rows = [
        [name, fmt(info.get("status")), fmt(info.get("seconds")), fmt(info.get("finished"))]
        for name, info in stages.items()
    ]
    items: list[Item] = [Table(["stage", "status", "seconds", "finished"], rows)]
    if manifest.get("config"):
        items.append(Pre(json.dumps(manifest["config"], indent=2, default=str), summary="config"))
    items.append(Pre(json.dumps(manifest, indent=2, default=str), summary="manifest.json"))
    return items


def config_section(ctx: ReportContext) -> list[Section]:
    return _titled(ctx, "Run configuration", 90, lambda r: _config_items(ctx, r))


SECTIONS: tuple[SectionBuilder, ...] = (
    overview,
    probe_section,
    tokens_section,
    mechanisms_section,
    evaluation_section,
    policies_section,
    extras_section,
    config_section,
)


def sections_for(runs: Sequence[ReportRun]) -> list[SectionBuilder]:
    """The sections every run gets, and the testbed's when a run is a testbed run (it has a summary)."""
    if not any(r.run.testbed_summary.is_file() for r in runs):
        return list(SECTIONS)
    from t3s.testbed import report_sections  # imported here: the testbed's sections build on this module

    return [*SECTIONS, *report_sections.SECTIONS]


# -- rendering -----------------------------------------------------------------------------------
CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;color:#222;
background:#eef0f3;line-height:1.45}
main{max-width:1180px;margin:0 auto;padding:20px 36px 60px;background:#fff;min-height:100vh}
h1{margin:8px 0 4px}h2{border-bottom:2px solid #d0d4da;padding-bottom:4px;margin-top:42px}
h3{margin-top:26px;color:#333}.meta{color:#666;font-size:13px}
nav{background:#f6f7f9;border:1px solid #e2e5e9;padding:6px 18px;margin:14px 0;font-size:14px}
nav ul{columns:2;margin:6px 0}a{color:#1f5fbf;text-decoration:none}
.scroll{overflow-x:auto}table{border-collapse:collapse;margin:10px 0 16px;font-size:13.5px}
th,td{border:1px solid #d9dde2;padding:3px 9px;text-align:right;white-space:nowrap}
th{background:#eef1f5}td:first-child,th:first-child{text-align:left}tr:nth-child(even) td{background:#f9fafb}
caption{caption-side:bottom;text-align:left;font-size:12.5px;color:#555;padding-top:4px;white-space:normal}
figure{margin:14px 0 22px}img{max-width:100%;height:auto;border:1px solid #eceef1}
figcaption{font-size:13px;color:#555;margin-top:4px}
pre{background:#f6f8fa;border:1px solid #e6e8eb;padding:10px;overflow:auto;font-size:12px;max-height:460px}
details summary{cursor:pointer;color:#1f5fbf;margin:6px 0}
"""


def _html_item(item: Item) -> str:
    esc = html.escape
    if isinstance(item, Text):
        return f"<p>{esc(item.text)}</p>"
    if isinstance(item, Table):
        head = "".join(f"<th>{esc(str(c))}</th>" for c in item.columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{esc(fmt(v))}</td>" for v in row) + "</tr>" for row in item.rows
        )
        caption = f"<caption>{esc(item.caption)}</caption>" if item.caption else ""
        return f'<div class="scroll"><table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'
    if isinstance(item, Figure):
        data = base64.b64encode(item.png).decode("ascii")
        caption = f"<figcaption>{esc(item.caption)}</figcaption>" if item.caption else ""
        return f'<figure><img src="data:image/png;base64,{data}" alt="{esc(item.caption or item.name)}">{caption}</figure>'
    if isinstance(item, Markdown):
        return f'<pre class="md">{esc(item.text)}</pre>'
    block = f"<pre>{esc(item.text)}</pre>"
    return f"<details><summary>{esc(item.summary)}</summary>{block}</details>" if item.summary else block


def _md_cell(value: Any) -> str:
    return fmt(value).replace("|", "\\|").replace("\n", " ")


def _md_item(item: Item) -> str:
    if isinstance(item, Text | Markdown):
        return item.text.strip()
    if isinstance(item, Table):
        lines = [
            "| " + " | ".join(_md_cell(c) for c in item.columns) + " |",
            "|" + "---|" * len(item.columns),
        ]
        lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in item.rows]
        return "\n".join(lines) + (f"\n\n*{item.caption}*" if item.caption else "")
    if isinstance(item, Figure):
        return f"![{item.caption or item.name}](figures/{item.name}.png)" + (
            f"\n\n*{item.caption}*" if item.caption else ""
        )
    label = f"**{item.summary}**\n\n" if item.summary else ""
    return f"{label}```\n{item.text}\n```"


def _ids(sections: Sequence[Section]) -> list[str]:
    used: dict[str, int] = {}
    out = []
    for s in sections:
        base = re.sub(r"[^a-z0-9]+", "-", s.title.lower()).strip("-") or "section"
        used[base] = used.get(base, 0) + 1
        out.append(base if used[base] == 1 else f"{base}-{used[base]}")
    return out


def render_html(title: str, sections: Sequence[Section], meta: str) -> str:
    ids = _ids(sections)
    toc = "".join(
        f'<li><a href="#{i}">{html.escape(s.title)}</a></li>' for s, i in zip(sections, ids, strict=True)
    )
    body = []
    for s, i in zip(sections, ids, strict=True):
        body.append(f'<section id="{i}"><h2>{html.escape(s.title)}</h2>')
        body += [_html_item(item) for item in s.items]
        for sub in s.subsections:
            body.append(f"<h3>{html.escape(sub.title)}</h3>")
            body += [_html_item(item) for item in sub.items]
        body.append("</section>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body><main>"
        f'<h1>{html.escape(title)}</h1><p class="meta">{html.escape(meta)}</p>'
        f"<nav><strong>Contents</strong><ul>{toc}</ul></nav>{''.join(body)}</main></body></html>\n"
    )


def render_markdown(title: str, sections: Sequence[Section], meta: str) -> str:
    parts = [f"# {title}", f"_{meta}_"]
    for s in sections:
        parts.append(f"## {s.title}")
        parts += [_md_item(item) for item in s.items]
        for sub in s.subsections:
            parts.append(f"### {sub.title}")
            parts += [_md_item(item) for item in sub.items]
    return "\n\n".join(p for p in parts if p) + "\n"


def _figures(sections: Sequence[Section]) -> list[Figure]:
    return [i for s in sections for sub in (s, *s.subsections) for i in sub.items if isinstance(i, Figure)]


@dataclass
class ReportResult:
    html: Path
    markdown: Path
    headlines: dict[str, dict[str, str]]


def _labels(paths: Sequence[Path]) -> list[str]:
    names = [p.resolve().name for p in paths]
    return [n if names.count(n) == 1 else f"{n} ({i + 1})" for i, n in enumerate(names)]


def build_report(
    runs: Sequence[str | Path],
    out: str | Path | None = None,
    builders: Sequence[SectionBuilder] | None = None,
) -> ReportResult:
    """Build every section whose data exists and write `index.html`, `summary.md` and `figures/`.

    `builders` default to the sections for what the runs are (`sections_for`).
    """
    if not runs:
        raise T3SError("report: give at least one --run")
    paths = [Path(r) for r in runs]
    for p in paths:
        if not p.is_dir():
            raise T3SError(f"run {p}: no such directory")
        if not RunDir(p).manifest_path.exists():
            raise T3SError(f"run {p}: no manifest.json; run `t3s probe --run {p}` first")
    out_dir = Path(out) if out is not None else RunDir(paths[0]).report_dir
    ctx = ReportContext(
        [ReportRun(p, label) for p, label in zip(paths, _labels(paths), strict=True)], out_dir
    )
    sections: list[Section] = []
    for builder in builders if builders is not None else sections_for(ctx.runs):
        try:
            sections += builder(ctx)
        except (KeyError, TypeError, ValueError, IndexError, OSError) as exc:
            # Artifacts come from many stages and tools: one malformed file must not sink the report.
            note = f"This section could not be built from the run's files: {type(exc).__name__}: {exc}"
            sections.append(Section(f"{builder.__name__} (not built)", [Text(note)], order=99))
    sections.sort(key=lambda s: s.order)
    title = "T3S report: " + " vs ".join(r.label for r in ctx.runs)
    meta = f"generated {time.strftime('%Y-%m-%d %H:%M:%S')} from " + ", ".join(
        str(p.resolve()) for p in paths
    )
    for fig in _figures(sections):
        with atomic_path(out_dir / "figures" / f"{fig.name}.png") as tmp:
            tmp.write_bytes(fig.png)
    html_path, md_path = out_dir / "index.html", out_dir / "summary.md"
    write_text(html_path, render_html(title, sections, meta))
    write_text(md_path, render_markdown(title, sections, meta))
    return ReportResult(html_path, md_path, {r.label: headlines(r) for r in ctx.runs})
