"""Reading a run's artifacts for the analyses: probe metrics, the profile, eval curves.

Every reader raises a one-line `T3SError` that names the command to run first when its artifact
is missing. The profile is flattened once into aligned 1-D arrays over its *scored* tokens
(response positions with a finite log-prob under θ0), which is what every token statistic needs.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from t3s.errors import T3SError
from t3s.io import read_jsonl
from t3s.masks import is_anchor
from t3s.rundir import RunDir, read_profile

_STEP_COLUMN = re.compile(r"^step(\d+)$")


def probe_metrics(run: RunDir) -> list[dict[str, Any]]:
    rows = run.probe_metrics()
    if not rows:
        raise T3SError(f"{run.metrics}: missing or empty; run `t3s probe --run {run.root}` first")
    return rows


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


# Accuracy-like keys of evaluation rows (their `_stderr` companions are read next to them).
EVAL_METRIC = re.compile(r"^(avg|pass|maj|mean|cons)@\d+$|^acc(uracy)?$")


def eval_curves(run: RunDir) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """bench -> metric -> [(step, value)] from `RUN/eval/<bench>/curve.jsonl`, read defensively.

    Rows without an integer `step` and keys that are not accuracy-like (`avg@k`, `pass@k`, ...,
    `accuracy`) or not finite numbers are skipped: the file is written by another stage.
    """
    curves: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for path in (run.eval_table(d.name) for d in run.eval_dirs()):
        try:
            rows = read_jsonl(path)
        except ValueError:
            continue
        metrics: dict[str, list[tuple[int, float]]] = {}
        for row in rows:
            step = row.get("step") if isinstance(row, dict) else None
            if isinstance(step, bool) or not isinstance(step, int):
                continue
            for key, value in row.items():
                number = _as_number(value)
                if number is not None and EVAL_METRIC.match(str(key)):
                    metrics.setdefault(str(key), []).append((step, number))
        if metrics:
            curves[path.parent.name] = {k: sorted(v) for k, v in metrics.items()}
    return curves


@dataclass(frozen=True)
class Profile:
    """A profile flattened over its scored tokens; `logprobs[name]` and the other arrays are aligned.

    `example` indexes `ids`/`input_ids`, `position` is the token's index in its example.
    """

    ids: list[str]
    input_ids: list[np.ndarray]
    example: np.ndarray
    position: np.ndarray
    token: np.ndarray
    logprobs: dict[str, np.ndarray]
    delta: np.ndarray

    @property
    def steps(self) -> dict[int, str]:
        """Probe step -> logprob column name, for every `logprob_step<K>` column present."""
        found = {int(m.group(1)): name for name in self.logprobs if (m := _STEP_COLUMN.match(name))}
        return dict(sorted(found.items()))

    def anchors(self, threshold: float = 0.0) -> np.ndarray:
        """Imitation-Anchor Tokens (`t3s.masks.is_anchor`); the rest are 'other'."""
        return is_anchor(self.delta, threshold)

    def column(self, name: str, hint: str) -> np.ndarray:
        """The log-probs of checkpoint `name` (e.g. step50), or an error saying to run `hint`."""
        if name not in self.logprobs:
            raise T3SError(f"the profile has no logprob_{name} column; run `{hint}` first")
        return self.logprobs[name]


def _flat(column: pa.ChunkedArray) -> np.ndarray:
    return column.combine_chunks().flatten().to_numpy(zero_copy_only=False)


def profile_from_table(table: pa.Table, where: str) -> Profile:
    names = [c for c in table.column_names if c.startswith("logprob_")]
    if "logprob_base" not in names:
        raise T3SError(f"{where}: the profile has no logprob_base column; run `t3s profile` with θ0 first")
    lengths = np.asarray([len(x) for x in table.column("input_ids").to_pylist()], dtype=np.int64)
    tokens = _flat(table.column("input_ids")).astype(np.int64)
    logprobs = {n[len("logprob_") :]: _flat(table.column(n)).astype(np.float32) for n in names}
    if "delta" in table.column_names:
        delta = _flat(table.column("delta")).astype(np.float32)
    elif "bottleneck" in logprobs:
        delta = logprobs["bottleneck"] - logprobs["base"]
    else:
        raise T3SError(f"{where}: the profile has no Δc (no delta or logprob_bottleneck column)")
    scored = np.isfinite(logprobs["base"]) & np.isfinite(delta)
    example = np.repeat(np.arange(len(lengths)), lengths)
    position = np.arange(len(tokens)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    return Profile(
        ids=[str(x) for x in table.column("id").to_pylist()],
        input_ids=[tokens[offsets[i] : offsets[i + 1]] for i in range(len(lengths))],
        example=example[scored],
        position=position[scored],
        token=tokens[scored],
        logprobs={k: v[scored] for k, v in logprobs.items()},
        delta=delta[scored],
    )


def load_profile(path: Path) -> Profile:
    return profile_from_table(read_profile(path), str(path))


def aligned_profiles(main: pa.Table, other: pa.Table, where: str) -> tuple[Profile, Profile]:
    """Both profiles restricted to their shared examples, in the same order, token for token.

    The second profile (e.g. of a run trained with anchors masked) is read through the first's
    anchors, so their examples must hold identical `input_ids`.
    """
    index = {x: i for i, x in enumerate(other.column("id").to_pylist())}
    keep = [i for i, x in enumerate(main.column("id").to_pylist()) if x in index]
    if not keep:
        raise T3SError(f"{where}: shares no example id with the run's profile")
    main = main.take(keep)
    other = other.take([index[x] for x in main.column("id").to_pylist()])
    if main.column("input_ids").to_pylist() != other.column("input_ids").to_pylist():
        raise T3SError(f"{where}: its examples hold other token ids than the run's profile (another corpus?)")
    if "delta" not in main.column_names:
        raise T3SError("the run's profile has no delta column; run `t3s profile --run RUN` first")
    # The groups are the run's: its Δc (and its θ0 scores when the other profile has none).
    if "delta" in other.column_names:
        other = other.drop_columns(["delta"])
    other = other.append_column("delta", main.column("delta"))
    if "logprob_base" not in other.column_names:
        other = other.append_column("logprob_base", main.column("logprob_base"))
    a, b = profile_from_table(main, "profile"), profile_from_table(other, where)
    if len(a.delta) != len(b.delta):
        raise T3SError(f"{where}: scores other positions than the run's profile")
    return a, b


def compare_profile_path(path: Path) -> Path:
    """`--compare` takes a run directory (its profile) or a profile .parquet file."""
    if path.is_dir():
        return RunDir(path).profile
    if path.suffix != ".parquet":
        raise T3SError(f"--compare {path}: give a run directory or a profile .parquet file")
    return path
