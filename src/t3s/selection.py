"""Token selection: turn a confidence profile into per-token loss masks.

Every policy returns, per example, a 0/1 `loss_mask` over all positions of `input_ids` that is
1 only on response tokens kept in the loss; `labels` are the token ids there and -100 elsewhere.

- sft: every response token.
- t3s: all but the Imitation-Anchor tokens, Δc > threshold (Δc = c(selector) - c(base)).
- inverse (-T3S): only the anchors.
- static-high / static-low: all but the fraction p of response tokens with the highest / lowest
  base confidence c(θ0), ranked over the whole corpus.
- random: all but a seeded random fraction p of response tokens (a control the paper lacks).
- excess-loss (Rho-1, TokenCleaning): only the 1 - p share of response tokens with the highest
  excess loss loss(θ0) - loss(reference) = c(reference) - c(θ0), the reference being the probe's
  final checkpoint θf by default or any profiled model sharing the tokenizer.
- entropy ("80/20"): only the 1 - p share of response tokens whose predictive distribution under θ0
  has the highest entropy.
`--match t3s` sets p to the fraction the t3s policy drops with the same selector and threshold.
Both ranked-keep policies never keep a token they cannot score (NaN, e.g. a response's first token).
`loss: dft` trains a policy's masks with Dynamic Fine-Tuning (-sg(p)·log p) instead of NLL.

dLLM students (`t3s.dllm`) train on every response token, so their policies keep the whole response
in `loss_mask` and choose a target set B instead, the `target_mask` column (masked on top of the
random noise, union masking):
- dllm-t3s: B = the yet-to-learn tokens, Δc < −tau (`t3s.dllm.targets.yet_to_learn`).
- dllm-random: a seeded random B of `fraction` of the response tokens, or (`match: dllm-t3s`) of
  the size dllm-t3s selects with the same selector and tau.
Plain `sft` is dLLM SFT for a dLLM student (B = ∅).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, model_validator
from rich.console import Console

from t3s.analysis.lossshare import kept_loss_share, low_share_warning
from t3s.dllm.targets import DEFAULT_TAU, random_targets, yet_to_learn
from t3s.errors import T3SError
from t3s.fingerprint import digest, file_digest
from t3s.io import atomic_dir, read_json, write_json
from t3s.masks import is_anchor, labels_from_mask, response_mask
from t3s.rundir import RunDir, read_profile
from t3s.stage import Attempt, Stage, execute

console = Console(stderr=True)

Policy = Literal[
    "sft", "t3s", "inverse", "static-high", "static-low", "random", "excess-loss", "entropy",
    "dllm-t3s", "dllm-random",
]  # fmt: skip
POLICIES: tuple[str, ...] = Policy.__args__  # type: ignore[attr-defined]
_KEEP_RANKED = ("excess-loss", "entropy")
_BUDGETED = ("static-high", "static-low", "random", *_KEEP_RANKED)
DLLM_POLICIES = ("dllm-t3s", "dllm-random")  # a target set B for a dLLM student, not a keep mask
# excess-loss's default reference: the probe's final checkpoint, profiled as step<final step>.
FINAL = "final"


class SelectOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    policy: Policy = Field(
        description="sft, t3s, inverse, static-high, static-low, random, excess-loss, entropy; "
        "dLLM students: dllm-t3s, dllm-random"
    )
    threshold: float = Field(0.0, ge=0, le=30, description="anchors: Δc > threshold (nats)")
    selector: str = Field("bottleneck", description="profile column playing θb: bottleneck, stepK, ...")
    fraction: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="static/random/excess-loss/entropy: share of response tokens dropped; "
        "dllm-random: share of response tokens in B",
    )
    match: Literal["t3s", "dllm-t3s"] | None = Field(
        None,
        description="static/random/excess-loss/entropy: 't3s' drops the share t3s drops; "
        "dllm-random: 'dllm-t3s' draws as many targets as dllm-t3s selects",
    )
    seed: int = Field(0, description="random policy seed")
    profile: str | None = Field(None, description="cross-model: a profile made by another model")
    name: str | None = Field(None, description="output name under RUN/masks (default: from the policy)")
    # The fields below are dumped only when set, so earlier runs' records and fingerprints stay as they were.
    reference: str | None = Field(
        None,
        exclude_if=lambda v: v is None,
        description="excess-loss: profile column of the reference model (default: final, the probe's θf)",
    )
    loss: Literal["nll", "dft"] = Field(
        "nll",
        exclude_if=lambda v: v == "nll",
        description="training objective on the kept tokens: nll, or dft (Dynamic Fine-Tuning, via TRL)",
    )
    tau: float = Field(
        DEFAULT_TAU,
        ge=0,
        exclude_if=lambda v: v == DEFAULT_TAU,
        description="dllm-t3s (and dllm-random matching it): B = response tokens with Δc < −tau (nats)",
    )

    @model_validator(mode="after")
    def _check(self) -> SelectOptions:
        dllm_random = self.policy == "dllm-random"
        if (self.policy in _BUDGETED or dllm_random) and (self.fraction is None) == (self.match is None):
            raise ValueError(f"policy {self.policy} needs exactly one of fraction or match")
        if not (self.policy in _BUDGETED or dllm_random) and (self.fraction, self.match) != (None, None):
            raise ValueError(f"policy {self.policy} takes no fraction or match")
        if self.match is not None and (self.match == "dllm-t3s") != dllm_random:
            raise ValueError(
                f"policy {self.policy} takes no match {self.match} (dllm-random matches dllm-t3s)"
            )
        if "tau" in self.model_fields_set and self.policy not in DLLM_POLICIES:
            raise ValueError(f"policy {self.policy} takes no tau (dllm-t3s does)")
        if self.policy in DLLM_POLICIES and self.loss != "nll":
            raise ValueError(
                f"policy {self.policy}: a dLLM student trains with the diffusion loss, not {self.loss}"
            )
        if self.reference is not None and self.policy != "excess-loss":
            raise ValueError(f"policy {self.policy} takes no reference (excess-loss does)")
        if self.name is not None and not re.match(r"^[A-Za-z0-9_.-]+$", self.name):
            raise ValueError(f"name {self.name!r}: use letters, digits, '.', '_' and '-'")
        return self

    def output_name(self) -> str:
        if self.name:
            return self.name
        name = self.policy
        if self.selector != "bottleneck":
            name += f"-{self.selector}"
        if self.reference not in (None, FINAL):
            name += f"-{self.reference}"
        if self.profile:
            name += "-cross"
        if self.loss != "nll":
            name += f"-{self.loss}"
        return name


def _column(table: pa.Table, name: str) -> list[np.ndarray]:
    if name not in table.column_names and name.startswith("entropy_"):
        raise T3SError(
            f"the profile has no column {name!r}: it was made before t3s scored entropies; profile it again"
        )
    if name not in table.column_names:
        have = [c.removeprefix("logprob_") for c in table.column_names if c.startswith("logprob_")]
        raise T3SError(
            f"the profile has no column {name!r} (scored: {', '.join(have)}); profile that checkpoint"
        )
    return [np.asarray(v, dtype=np.float32) for v in table.column(name).to_pylist()]


def response_masks(table: pa.Table) -> list[np.ndarray]:
    starts, ends = table.column("response_start").to_pylist(), table.column("response_end").to_pylist()
    ids = table.column("input_ids").to_pylist()
    return [response_mask(len(i), s, e) for i, s, e in zip(ids, starts, ends, strict=True)]


def _drop_ranked(
    values: list[np.ndarray], responses: list[np.ndarray], k: int, highest: bool
) -> list[np.ndarray]:
    """Drop the k response positions with the highest (or lowest) value over the whole corpus."""
    flat = np.concatenate(
        [np.where(r & ~np.isnan(v), v, np.nan) for v, r in zip(values, responses, strict=True)]
    )
    valid = np.flatnonzero(~np.isnan(flat))
    # Stable order: ties broken by corpus position, so reruns drop the same tokens.
    order = valid[np.argsort(-flat[valid] if highest else flat[valid], kind="stable")]
    return _drop_flat(responses, order[:k])


def _keep_ranked(values: list[np.ndarray], responses: list[np.ndarray], n: int) -> list[np.ndarray]:
    """Keep only the n response positions with the highest value over the whole corpus; NaN never."""
    flat = np.concatenate(
        [np.where(r & ~np.isnan(v), v, np.nan) for v, r in zip(values, responses, strict=True)]
    )
    valid = np.flatnonzero(~np.isnan(flat))
    # Stable order: of equal values the earlier corpus position is kept, so reruns keep the same tokens.
    kept = valid[np.argsort(-flat[valid], kind="stable")[:n]]
    keep_flat = np.zeros(len(flat), dtype=bool)
    keep_flat[kept] = True
    return _split_flat(keep_flat, responses)


def _split_flat(flat: np.ndarray, responses: list[np.ndarray]) -> list[np.ndarray]:
    bounds = np.cumsum([0, *(len(r) for r in responses)])
    return [flat[bounds[i] : bounds[i + 1]] for i in range(len(responses))]


def _drop_flat(responses: list[np.ndarray], drop: np.ndarray) -> list[np.ndarray]:
    keep_flat = np.concatenate(responses).copy()
    keep_flat[drop] = False
    return _split_flat(keep_flat, responses)


def select(table: pa.Table, options: SelectOptions) -> list[np.ndarray]:
    """Keep masks (bool, one per example, over all positions) for a policy on a profile table."""
    responses = response_masks(table)
    if options.policy in ("sft", *DLLM_POLICIES):  # a dLLM student may noise and learn every response token
        return responses
    base = _column(table, "logprob_base")
    if options.policy in ("t3s", "inverse"):
        sel = _column(table, f"logprob_{options.selector}")
        anchors = [is_anchor(s - b, options.threshold) for s, b in zip(sel, base, strict=True)]
        if options.policy == "t3s":
            return [r & ~a for r, a in zip(responses, anchors, strict=True)]
        return [r & a for r, a in zip(responses, anchors, strict=True)]
    fraction = options.fraction
    if options.match == "t3s":
        t3s = select(table, options.model_copy(update={"policy": "t3s", "fraction": None, "match": None}))
        fraction = 1 - sum(int(k.sum()) for k in t3s) / sum(int(r.sum()) for r in responses)
    assert fraction is not None
    total = sum(int(r.sum()) for r in responses)
    k = round(fraction * total)
    if options.policy == "excess-loss":
        reference = _column(table, f"logprob_{options.reference or FINAL}")
        return _keep_ranked([r - b for r, b in zip(reference, base, strict=True)], responses, total - k)
    if options.policy == "entropy":
        return _keep_ranked(_column(table, "entropy_base"), responses, total - k)
    if options.policy == "random":
        rng = np.random.default_rng(options.seed)
        positions = np.flatnonzero(np.concatenate(responses))
        return _drop_flat(responses, rng.choice(positions, size=k, replace=False))
    return _drop_ranked(base, responses, k, highest=options.policy == "static-high")


def dllm_targets(table: pa.Table, options: SelectOptions) -> list[np.ndarray]:
    """A dLLM policy's target set B (bool, one per example, over all positions)."""
    responses = response_masks(table)
    if options.policy == "dllm-t3s":
        sel, base = _column(table, f"logprob_{options.selector}"), _column(table, "logprob_base")
        return [yet_to_learn(s - b, r, options.tau) for s, b, r in zip(sel, base, responses, strict=True)]
    if options.match == "dllm-t3s":
        matched = options.model_copy(update={"policy": "dllm-t3s", "fraction": None, "match": None})
        size = sum(int(t.sum()) for t in dllm_targets(table, matched))
    else:
        assert options.fraction is not None  # checked by SelectOptions
        size = round(options.fraction * sum(int(r.sum()) for r in responses))
    return random_targets(responses, size, options.seed)


def target_stats(table: pa.Table, targets: Sequence[np.ndarray]) -> dict[str, Any]:
    """The size of B: its tokens and their share of the response tokens."""
    total = sum(int(r.sum()) for r in response_masks(table))
    count = sum(int(t.sum()) for t in targets)
    return {"target_tokens": count, "target_fraction": count / max(total, 1)}


TARGET_MASK = "target_mask"  # a dLLM policy's target set B, beside the masks' usual columns
MASKS_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("input_ids", pa.list_(pa.int32())),
        ("labels", pa.list_(pa.int64())),
        ("loss_mask", pa.list_(pa.int8())),
        ("response_start", pa.int32()),
        ("response_end", pa.int32()),
    ]
)


def masks_table(
    table: pa.Table, keeps: Sequence[np.ndarray], targets: Sequence[np.ndarray] | None = None
) -> pa.Table:
    """The masks' columns; a dLLM policy's `targets` (B, 0/1 over all positions) add `target_mask`."""
    ids = table.column("input_ids").to_pylist()
    labels = [labels_from_mask(i, k).tolist() for i, k in zip(ids, keeps, strict=True)]
    columns = {
        "id": table.column("id"),
        "input_ids": table.column("input_ids"),
        "labels": labels,
        "loss_mask": [k.astype(np.int8).tolist() for k in keeps],
        "response_start": table.column("response_start"),
        "response_end": table.column("response_end"),
    }
    if targets is None:
        return pa.table(columns, schema=MASKS_SCHEMA)
    columns[TARGET_MASK] = [np.asarray(t, dtype=np.int8).tolist() for t in targets]
    return pa.table(columns, schema=MASKS_SCHEMA.append(pa.field(TARGET_MASK, pa.list_(pa.int8()))))


def mask_stats(table: pa.Table, keeps: Sequence[np.ndarray]) -> dict[str, Any]:
    responses = response_masks(table)
    resp = np.array([int(r.sum()) for r in responses])
    kept = np.array([int(k.sum()) for k in keeps])
    if (kept > resp).any() or any((k & ~r).any() for k, r in zip(keeps, responses, strict=True)):
        raise AssertionError("a mask keeps a token outside the response")
    return {
        "examples": len(keeps),
        "response_tokens": int(resp.sum()),
        "kept_tokens": int(kept.sum()),
        "kept_fraction": float(kept.sum() / max(resp.sum(), 1)),
        "dropped_fraction": float(1 - kept.sum() / max(resp.sum(), 1)),
        "examples_with_nothing_kept": int((kept == 0).sum()),
        "per_example": [
            {"id": i, "response_tokens": int(r), "kept_tokens": int(k)}
            for i, r, k in zip(table.column("id").to_pylist(), resp, kept, strict=True)
        ],
    }


# A masked dataset's directory (`RUN/masks/<policy>`, a mix, a test's): the masks as Parquet, the
# same as an HF dataset (save_to_disk), and their stats.
MASKS_FILE, MASKS_HF, MASKS_STATS = "data.parquet", "dataset", "stats.json"


def masks_summary(table: pa.Table, keeps: Sequence[np.ndarray], info: dict[str, Any]) -> dict[str, Any]:
    """`info` and the counts of the masks; a policy that keeps nothing is refused."""
    stats = {**info, **mask_stats(table, keeps)}
    if stats["kept_tokens"] == 0:
        raise T3SError(f"policy {info.get('policy')} keeps no token at all; nothing could be trained")
    return stats


def save_masks(out: Path, masks: pa.Table, stats: dict[str, Any]) -> None:
    """Write a masked dataset directory atomically."""
    import datasets

    datasets.disable_progress_bars()
    with atomic_dir(out) as tmp:
        pq.write_table(masks, tmp / MASKS_FILE)
        datasets.Dataset(masks).save_to_disk(str(tmp / MASKS_HF))
        write_json(tmp / MASKS_STATS, stats)


def write_masks(
    out: Path,
    table: pa.Table,
    keeps: Sequence[np.ndarray],
    info: dict[str, Any],
    targets: Sequence[np.ndarray] | None = None,
) -> dict[str, Any]:
    """Write data.parquet, an HF dataset (dataset/) and stats.json into `out`, atomically."""
    stats = masks_summary(table, keeps, info)
    save_masks(out, masks_table(table, keeps, targets), stats)
    return stats


def read_masks(masks_dir: Path, missing: str | None = None) -> pa.Table:
    """The masks of a masked dataset directory; `missing` is the error when there are none."""
    path = masks_dir / MASKS_FILE
    if not path.exists():
        raise T3SError(missing or f"{masks_dir}: no masked dataset; run `t3s select` first")
    try:
        return pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a broken file
        raise T3SError(f"{path}: not a readable Parquet file ({exc})") from exc


def read_masks_stats(masks_dir: Path) -> dict[str, Any] | None:
    """A masked dataset's stats.json, or None when it has none (or not a mapping)."""
    path = masks_dir / MASKS_STATS
    stats = read_json(path) if path.exists() else None
    return stats if isinstance(stats, dict) else None


def check_same_examples(run_tokens: pa.Table, profile: pa.Table, where: str) -> None:
    """A profile made elsewhere must hold exactly the run's examples and token ids."""
    for col in ("id", "input_ids", "response_start", "response_end"):
        if col not in profile.column_names:
            raise T3SError(f"{where}: not a t3s profile (no column {col!r})")
    if profile.num_rows != run_tokens.num_rows:
        raise T3SError(
            f"{where}: {profile.num_rows} examples, the run has {run_tokens.num_rows}; "
            "it was profiled on another corpus or tokenizer"
        )
    for col in ("id", "input_ids", "response_start", "response_end"):
        a, b = run_tokens.column(col), profile.column(col)
        if not a.equals(b.cast(a.type)):
            first = next(
                i for i, (x, y) in enumerate(zip(a.to_pylist(), b.to_pylist(), strict=True)) if x != y
            )
            raise T3SError(
                f"{where}: example {first} ({col}) differs from the run's tokens; "
                "it was profiled on another corpus or tokenizer"
            )


class SelectStage(Stage):
    """A policy's masks on the run's profile (or a cross-model profile) into RUN/masks/<name>/."""

    def __init__(self, options: SelectOptions) -> None:
        self.options = options
        self.policy = options.output_name()
        self.name = f"select:{self.policy}"
        self.table: pa.Table | None = None  # the profile (or, for plain SFT without one, the tokens)
        self.source = ""

    def fingerprint(self, run: RunDir) -> str:
        if self.options.policy == "excess-loss" and self.options.reference in (None, FINAL):
            # θf is the probe's final checkpoint, profiled (`profile.steps`) as step<final step>.
            final = f"step{run.bottleneck()['final_step']}"
            self.options = self.options.model_copy(update={"reference": final})
        options = self.options
        tokens = run.tokens_table()
        if options.policy == "sft" and options.profile is None and not run.profile.exists():
            self.table, self.source = tokens.drop_columns(["truncated"]), "tokens"
            read = run.tokens
        else:
            read = Path(options.profile) if options.profile else run.profile
            self.table, self.source = read_profile(read), str(read)
            check_same_examples(tokens, self.table, str(read))
        return digest(options.model_dump(exclude={"name"}), file_digest(read))

    def outputs_exist(self, run: RunDir) -> bool:
        return (run.masks_dir(self.policy) / MASKS_STATS).exists()

    def run(self, run: RunDir, attempt: Attempt) -> dict[str, Any]:
        assert self.table is not None  # read by fingerprint
        keeps = select(self.table, self.options)
        targets = dllm_targets(self.table, self.options) if self.options.policy in DLLM_POLICIES else None
        info = {"policy": self.options.policy, "options": self.options.model_dump(), "source": self.source}
        info["theta0_loss_share"] = kept_loss_share(self.table, keeps)
        warning = low_share_warning(self.policy, info["theta0_loss_share"])
        if targets is not None:
            info.update(target_stats(self.table, targets))
            if info["target_tokens"] == 0:  # B = ∅ trains exactly as dLLM SFT does: say so
                warning = (
                    f"{self.policy}: no target token (Δc < −{self.options.tau} nowhere); this is dLLM SFT"
                )
        if warning and attempt.main:
            console.print(f"[yellow]warning:[/] {warning}", highlight=False)
        if attempt.main:
            stats = write_masks(run.masks_dir(self.policy), self.table, keeps, info, targets)
        else:
            stats = masks_summary(self.table, keeps, info)
        return {"summary": {k: v for k, v in stats.items() if k != "per_example"}}


def select_run(run_path: str | Path, options: SelectOptions) -> dict[str, Any]:
    """Select on a run's profile (or a cross-model profile) into RUN/masks/<name>/."""
    return execute(RunDir(run_path), SelectStage(options))["summary"]
