"""Debiased teacher mixing: concatenate masked datasets that were each selected on their own teacher.

Each source is a run directory built from one teacher's corpus, with its own probe, its own
Imitation Bottleneck and its own masks (`RUN/masks/<policy>/data.parquet`). Training once on the
concatenation lets every teacher's gains add up instead of diluting them. All sources must share
the student's tokenizer: token ids from different vocabularies cannot be trained together.

The output has the masked-dataset layout of `t3s select`: `data.parquet`, `dataset/` (save_to_disk) and
`stats.json` with per-source counts; ids become `<source>/<id>` so they stay unique.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from t3s.errors import T3SError
from t3s.rundir import RunDir
from t3s.selection import MASKS_FILE, MASKS_SCHEMA, MASKS_STATS, read_masks_stats, save_masks


@dataclass(frozen=True)
class MixSource:
    name: str
    run: Path


def parse_source(spec: str) -> MixSource:
    """`NAME=RUN` or a bare `RUN`, named after its directory."""
    name, sep, run = spec.partition("=")
    if not sep:
        run = spec
        name = Path(spec).resolve().name
    if not name or "/" in name or not run:
        raise T3SError(f"--run {spec!r}: expected RUN or NAME=RUN")
    return MixSource(name, Path(run))


def _tokenizer_fingerprint(source: MixSource) -> str:
    fp = RunDir(source.run).fingerprints().get("tokenizer")
    if not fp:
        raise T3SError(
            f"run {source.run}: manifest.json records no tokenizer fingerprint; "
            "is it a run directory that went through the probe?"
        )
    return str(fp)


def _read_masks(source: MixSource, policy: str) -> pa.Table:
    run = RunDir(source.run)
    table = run.masks(policy)
    path = run.masks_dir(policy) / MASKS_FILE
    missing = [f.name for f in MASKS_SCHEMA if f.name not in table.column_names]
    if missing:
        raise T3SError(f"{path}: missing column(s) {', '.join(missing)}")
    try:
        for f in MASKS_SCHEMA:
            table = table.set_column(table.schema.get_field_index(f.name), f, table[f.name].cast(f.type))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise T3SError(f"{path}: a column does not fit the masked-dataset schema ({exc})") from exc
    lengths = pc.list_value_length(table["input_ids"])
    for column in ("labels", "loss_mask"):
        if not pc.all(pc.equal(pc.list_value_length(table[column]), lengths)).as_py():
            raise T3SError(f"{path}: some row's {column} and input_ids have different lengths")
    ids = pc.binary_join_element_wise(f"{source.name}/", table["id"], "")
    return table.set_column(table.schema.get_field_index("id"), "id", ids)


def _counts(table: pa.Table) -> dict[str, Any]:
    """The totals `t3s select` reports, over a masked dataset."""
    response = int(pc.sum(pc.subtract(table["response_end"], table["response_start"])).as_py() or 0)
    kept = int(pc.sum(pc.list_flatten(table["loss_mask"])).as_py() or 0)
    return {
        "examples": table.num_rows,
        "response_tokens": response,
        "kept_tokens": kept,
        "kept_fraction": kept / max(response, 1),
    }


def mix_masks(sources: Sequence[MixSource], policy: str, out: str | Path) -> dict[str, Any]:
    """Concatenate the sources' `masks/<policy>` datasets into `out`; returns the stats written."""
    out = Path(out)
    if len(sources) < 2:
        raise T3SError("mixing needs at least two --run directories")
    names = [s.name for s in sources]
    if dup := sorted({n for n in names if names.count(n) > 1}):
        raise T3SError(f"two runs are named {dup[0]!r}; name them apart with --run NAME=RUN")
    if "/" in policy or not policy:
        raise T3SError(f"--policy {policy!r}: expected a policy name such as t3s")
    reference = _tokenizer_fingerprint(sources[0])
    for source in sources[1:]:
        fp = _tokenizer_fingerprint(source)
        if fp != reference:
            raise T3SError(
                f"run {source.run} used another tokenizer than run {sources[0].run} "
                f"(fingerprint {fp} != {reference}); mixed masks must all come from the student's tokenizer"
            )
    for source in sources:
        if RunDir(source.run).masks_dir(policy).resolve() == out.resolve():
            raise T3SError(f"--out {out} is the masks directory of run {source.run}; write the mix elsewhere")
    # The output directory is replaced as a whole: never one that holds something else.
    if out.exists() and any(out.iterdir()) and not (out / MASKS_STATS).exists():
        raise T3SError(f"--out {out} exists and is not a masks directory; choose a new directory")
    tables = [_read_masks(s, policy) for s in sources]
    if len({tuple(sorted(t.column_names)) for t in tables}) > 1:
        detail = "; ".join(
            f"{s.name}: {', '.join(t.column_names)}" for s, t in zip(sources, tables, strict=True)
        )
        raise T3SError(f"the runs' masks have different columns ({detail})")
    columns = tables[0].column_names
    try:
        mixed = pa.concat_tables([t.select(columns) for t in tables])
    except pa.ArrowInvalid as exc:
        raise T3SError(f"the runs' masks have different column types ({exc})") from exc
    per_source = []
    for source, table in zip(sources, tables, strict=True):
        own = read_masks_stats(RunDir(source.run).masks_dir(policy))
        if own is not None:
            own.pop("per_example", None)
        per_source.append({"name": source.name, "run": str(source.run), **_counts(table), "stats": own})
    stats = {"policy": policy, "tokenizer": reference, **_counts(mixed), "sources": per_source}
    save_masks(out, mixed, stats)
    return stats
