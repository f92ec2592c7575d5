"""The profile stage: per-token log-probs of every response token under several checkpoints, and Δc.

Artifact (Parquet, one row per example): `id`, `input_ids`, `response_start`, `response_end`,
one `logprob_<name>` and one `entropy_<name>` list<float32> column per scored model (same length
as `input_ids`, NaN outside the response; the entropy, in nats, is that of the distribution that
predicted the token) and `delta` = logprob_bottleneck - logprob_base when both are scored.
Scores are cached per (tokens, checkpoint, scoring dtype) fingerprint in shards of examples, so a
killed profile resumes where it stopped and a rerun recomputes nothing; under `accelerate launch`
or torchrun each process scores its own shards, and the main process writes the profile.

Precision. The output layer runs in float32 (`t3s.confidence`), but the rest of the model runs in
the scoring dtype (bf16 by default on GPUs), whose rounding moves every c_t and so Δc. The summary
(`profile.json`) reports the dtype, and under `delta.resolution` a band in nats with the share of
response tokens whose |Δc| is inside it: outside the band Δc's sign, hence the anchor set, is the
one float32 gives; inside, it may not be. Each band is 1.5x the largest |Δc| error measured
against float64 scoring, rounded up to a power of two. Measured on SmolLM2-135M (the testbed
student against a 6-step full fine-tune of it; 32 examples, 1,594 response tokens): largest error
float32 9.6e-5 (band 2^-12), float16 0.147 (band 2^-2), bfloat16 1.11, or 1.21 with a bf16 output
layer (band 2). In bfloat16, 21 tokens (1.3%) changed sides, all with |Δc| < 0.27, and 78% of
the tokens fell inside the band (float32: 0 changed, 11% inside). One small model was measured;
deeper models with larger logits may err more, so the bands are a guide, not a bound: score in
float32 (`--dtype float32`) when the anchor set must be exact.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from rich.console import Console

from t3s.confidence import score
from t3s.errors import T3SError
from t3s.fingerprint import digest, model_fingerprint
from t3s.io import write_json, write_parquet
from t3s.masks import is_anchor
from t3s.progress import bar
from t3s.rundir import RunDir
from t3s.stage import Attempt, Stage, execute
from t3s.tokens import TOKENS_SCHEMA, TokenizeConfig, TokenizedExample, tokens_fingerprint

_NAME = re.compile(r"^[A-Za-z0-9_]+$")
# |Δc| (nats) below which the scoring dtype may flip Δc's sign; see the module docstring.
RESOLUTION = {"float32": 2.0**-12, "float16": 2.0**-2, "bfloat16": 2.0}
# Past this share of tokens inside the band, a half-precision profile's anchor set is worth a warning.
_NOISY_SHARE = 0.1
# What a scoring pass stores per token; part of every score's cache key, so that a profile made
# before a column existed is recomputed, not read without it.
SCORED = ("logprob", "entropy")
console = Console(stderr=True)


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise T3SError(f"checkpoint name {name!r}: use letters, digits and underscores only")
    return name


def _shards(n: int, size: int) -> list[range]:
    return [range(s, min(s + size, n)) for s in range(0, n, size)]


def scoring_dtype(device: str | None, dtype: str | None) -> tuple[torch.device, str]:
    """The device this process scores on and the dtype name (`float32`, `bfloat16`, ...) it scores in."""
    from t3s import distributed
    from t3s.models import resolve_device, resolve_dtype

    dev = resolve_device(device) if device else distributed.state().device
    return dev, str(resolve_dtype(dtype, dev)).removeprefix("torch.")


def score_checkpoint(
    model_path: str,
    items: Sequence[TokenizedExample],
    tokens_fp: str,
    cache_dir: Path,
    *,
    device: str | None = None,
    dtype: str | None = None,
    trust_remote_code: bool = False,
    max_batch_tokens: int = 16384,
    chunk: int = 1024,
    shard_size: int = 64,
    label: str = "",
) -> dict[str, list[np.ndarray]]:
    """Per-token log-probs and entropies (`SCORED`) of `items` under one checkpoint, from cache
    where already computed."""
    from t3s import distributed
    from t3s.models import load_model, resolve_dtype

    state = distributed.state()
    dev, dtype_name = scoring_dtype(device, dtype)
    fp = digest(tokens_fp, model_fingerprint(model_path), dtype_name, SCORED)
    part_dir = cache_dir / fp
    shards = _shards(len(items), shard_size)
    paths = [part_dir / f"part-{k:05d}.parquet" for k in range(len(shards))]
    mine = [k for k in range(len(shards)) if k % state.num_processes == state.process_index]
    todo = [k for k in mine if not paths[k].exists()]
    if todo:
        model = load_model(
            model_path, device=dev, dtype=resolve_dtype(dtype_name, dev), trust_remote_code=trust_remote_code
        )
        total = sum(len(items[i].input_ids) for k in todo for i in shards[k])
        with bar(f"profile {label}".strip(), total=total, unit="tok") as progress:
            for k in todo:
                sub = [items[i] for i in shards[k]]
                values: list[Any] = [None] * len(sub)
                for i, v in score(
                    model,
                    sub,
                    max_batch_tokens=max_batch_tokens,
                    chunk=chunk,
                    on_batch=progress.advance,
                    entropy=True,
                ):
                    values[i] = v
                columns = {name: [v[j].tolist() for v in values] for j, name in enumerate(SCORED)}
                table = pa.table(
                    {"id": [t.id for t in sub], **columns},
                    schema=pa.schema([("id", pa.string()), *((n, pa.list_(pa.float32())) for n in SCORED)]),
                )
                write_parquet(paths[k], table)
        del model
    state.wait_for_everyone()
    if state.is_main_process:
        write_json(part_dir / "source.json", {"model": model_path, "tokens": tokens_fp, "dtype": dtype_name})
    out: dict[str, list[np.ndarray]] = {name: [] for name in SCORED}
    for k, path in enumerate(paths):
        part = pq.read_table(path, columns=list(SCORED))
        if part.num_rows != len(shards[k]):
            raise T3SError(
                f"{path}: holds {part.num_rows} rows, expected {len(shards[k])}; delete it and rerun"
            )
        for name in SCORED:
            out[name].extend(np.asarray(v, dtype=np.float32) for v in part.column(name).to_pylist())
    return out


def profile_table(
    items: Sequence[TokenizedExample],
    scores: dict[str, list[np.ndarray]],
    entropies: dict[str, list[np.ndarray]],
) -> pa.Table:
    base = pa.table(
        {
            "id": [t.id for t in items],
            "input_ids": [t.input_ids for t in items],
            "response_start": [t.response_start for t in items],
            "response_end": [t.response_end for t in items],
        },
        schema=pa.schema([f for f in TOKENS_SCHEMA if f.name != "truncated"]),
    )
    columns = [(f"logprob_{n}", v) for n, v in scores.items()]
    columns += [(f"entropy_{n}", v) for n, v in entropies.items()]
    for column, values in columns:
        base = base.append_column(column, pa.array([v.tolist() for v in values], type=pa.list_(pa.float32())))
    if "base" in scores and "bottleneck" in scores:
        delta = [b - a for a, b in zip(scores["base"], scores["bottleneck"], strict=True)]
        base = base.append_column("delta", pa.array([d.tolist() for d in delta], type=pa.list_(pa.float32())))
    return base


def build_profile(
    models: dict[str, str],
    items: Sequence[TokenizedExample],
    tokens_fp: str,
    out: Path,
    cache_dir: Path,
    **kwargs: Any,
) -> dict[str, Any]:
    """Score every named checkpoint and write the profile Parquet; returns its summary."""
    from t3s import distributed

    main = distributed.state().is_main_process
    scored = {
        check_name(name): score_checkpoint(path, items, tokens_fp, cache_dir, label=name, **kwargs)
        for name, path in models.items()
    }
    scores = {name: s["logprob"] for name, s in scored.items()}
    table = profile_table(items, scores, {name: s["entropy"] for name, s in scored.items()})
    _, dtype_name = scoring_dtype(kwargs.get("device"), kwargs.get("dtype"))
    summary: dict[str, Any] = {
        "examples": len(items),
        "response_tokens": int(sum(t.response_end - t.response_start for t in items)),
        "models": models,
        "fingerprints": {name: model_fingerprint(path) for name, path in models.items()},
        "dtype": dtype_name,
    }
    if "delta" in table.column_names:
        flat = np.concatenate([np.asarray(d, dtype=np.float32) for d in table.column("delta").to_pylist()])
        flat = flat[~np.isnan(flat)]
        band = RESOLUTION.get(dtype_name, RESOLUTION["float32"])
        within = float((np.abs(flat) < band).mean())
        summary["delta"] = {
            "mean": float(flat.mean()),
            "anchor_share": float(is_anchor(flat).mean()),
            "quantiles": {str(q): float(np.quantile(flat, q)) for q in (0.01, 0.1, 0.5, 0.9, 0.99)},
            "resolution": {"band": band, "within_share": within},
        }
        if dtype_name != "float32" and within > _NOISY_SHARE and main:
            console.print(
                f"[yellow]warning:[/] {within:.0%} of response tokens have |Δc| < {band:g} nats, inside "
                f"{dtype_name}'s rounding: their side of the anchor threshold is partly noise; "
                "profile with --dtype float32 (profile.dtype) for an exact anchor set",
                highlight=False,
                soft_wrap=True,
            )
    if main:
        write_parquet(out, table)
        write_json(out.with_suffix(".json"), summary)
    return summary


def check_same_tokenizer(
    models: dict[str, str], expected: str | None, trust_remote_code: bool = False
) -> str:
    """All scored models must share one tokenizer (cross-model selection); returns its fingerprint."""
    from t3s.fingerprint import tokenizer_fingerprint
    from t3s.models import load_tokenizer

    for name, path in models.items():
        fp = tokenizer_fingerprint(load_tokenizer(path, trust_remote_code=trust_remote_code))
        if expected is None:
            expected = fp
        elif fp != expected:
            raise T3SError(
                f"model {name}={path}: its tokenizer differs from the run's (fingerprint {fp} != {expected}); "
                "Δc can only compare models that share a tokenizer"
            )
    assert expected is not None
    return expected


def run_models(run: RunDir, steps: Sequence[int] = (), all_steps: bool = False) -> dict[str, str]:
    """base, bottleneck and the requested probe checkpoints of a run, by profile name."""
    record = run.bottleneck()
    models = {"base": run.base_model(), "bottleneck": run.resolve(record["bottleneck"])}
    available = {f"step{k}": path for k, path in run.checkpoints().items() if k}
    if all_steps:
        models.update(available)
    for k in steps:
        if f"step{k}" not in available:
            raise T3SError(
                f"checkpoint step {k} is not on disk in {run.root} (on disk: {sorted(available) or 'none'}); "
                "keep it with --keep-step or --mode all when probing"
            )
        models[f"step{k}"] = available[f"step{k}"]
    return models


class ProfileStage(Stage):
    """A run's corpus scored under θ0, θb and the asked checkpoints into RUN/profile/profile.parquet."""

    name = "profile"

    def __init__(
        self,
        *,
        steps: Sequence[int] = (),
        all_steps: bool = False,
        extra: dict[str, str] | None = None,
        trust_remote_code: bool = False,
        **scoring: Any,
    ) -> None:
        self.steps, self.all_steps, self.extra = steps, all_steps, extra
        self.trust_remote_code, self.scoring = trust_remote_code, scoring
        self.models: dict[str, str] = {}
        self.items: list[TokenizedExample] = []
        self.tokens_fp = ""

    def inputs(self, run: RunDir) -> tuple[dict[str, str], list[TokenizedExample]]:
        """The models to score, by name, and the examples to score them on."""
        models = run_models(run, self.steps, self.all_steps)
        if self.extra:
            check_same_tokenizer(self.extra, run.fingerprints().get("tokenizer"), self.trust_remote_code)
            models.update(self.extra)
        return models, run.read_tokens()

    def output(self, run: RunDir) -> tuple[Path, Path]:
        """The profile and the cache of its scores."""
        return run.profile, run.profile_cache

    def fingerprint(self, run: RunDir) -> str:
        self.models, self.items = self.inputs(run)
        self.tokens_fp = tokens_fingerprint(self.items)
        _, dtype_name = scoring_dtype(self.scoring.get("device"), self.scoring.get("dtype"))
        fps = {name: model_fingerprint(path) for name, path in self.models.items()}
        return digest(self.tokens_fp, fps, dtype_name, SCORED)

    def outputs_exist(self, run: RunDir) -> bool:
        return self.output(run)[0].exists()

    def run(self, run: RunDir, attempt: Attempt) -> dict[str, Any]:
        out, cache = self.output(run)
        remote = self.trust_remote_code
        summary = build_profile(
            self.models, self.items, self.tokens_fp, out, cache, trust_remote_code=remote, **self.scoring
        )
        return {"summary": summary}


class CrossProfileStage(ProfileStage):
    """The run's corpus under another student's θ0 and θb (same tokenizer family), for cross-model
    selection: RUN/profile/cross-<name>.parquet."""

    def __init__(
        self,
        cross: str,
        models: dict[str, str],
        config: TokenizeConfig,
        *,
        trust_remote_code: bool = False,
        **scoring: Any,
    ) -> None:
        super().__init__(trust_remote_code=trust_remote_code, **scoring)
        self.name, self.cross = f"profile:cross-{cross}", cross
        self.cross_models, self.config = models, config

    def inputs(self, run: RunDir) -> tuple[dict[str, str], list[TokenizedExample]]:
        items = _tokenized(self.cross_models, run.corpus, self.config, self.trust_remote_code)
        return self.cross_models, items

    def output(self, run: RunDir) -> tuple[Path, Path]:
        out = run.cross_profile(self.cross)
        return out, _cache_beside(out)


def profile_run(
    run_path: str | Path,
    *,
    steps: Sequence[int] = (),
    all_steps: bool = False,
    extra: dict[str, str] | None = None,
    trust_remote_code: bool = False,
    **kwargs: Any,
) -> dict[str, Any]:
    """Profile a run's corpus under θ0, θb and the asked checkpoints into RUN/profile/profile.parquet."""
    stage = ProfileStage(
        steps=steps, all_steps=all_steps, extra=extra, trust_remote_code=trust_remote_code, **kwargs
    )
    return execute(RunDir(run_path), stage)["summary"]


def _tokenized(
    models: dict[str, str], data: str | Path, config: TokenizeConfig, trust_remote_code: bool
) -> list[TokenizedExample]:
    """A corpus tokenized by the models' one shared tokenizer."""
    from t3s.data import load_corpus
    from t3s.models import load_tokenizer
    from t3s.tokens import tokenize_corpus

    check_same_tokenizer(models, None, trust_remote_code)
    tokenizer = load_tokenizer(next(iter(models.values())), trust_remote_code=trust_remote_code)
    return tokenize_corpus(tokenizer, load_corpus(data), config)[0]


def _cache_beside(out: Path) -> Path:
    return out.parent / f".{out.stem}.cache"


def profile_standalone(
    models: dict[str, str],
    data: str | Path,
    out: str | Path,
    config: TokenizeConfig,
    *,
    trust_remote_code: bool = False,
    **kwargs: Any,
) -> dict[str, Any]:
    """Profile any corpus under any models sharing a tokenizer, without a run directory."""
    out = Path(out)
    if out.suffix != ".parquet":
        raise T3SError(f"--out {out}: the profile is a .parquet file")
    items = _tokenized(models, data, config, trust_remote_code)
    cache = _cache_beside(out)
    return build_profile(
        models, items, tokens_fingerprint(items), out, cache, trust_remote_code=trust_remote_code, **kwargs
    )
