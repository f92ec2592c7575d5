"""The options of `t3s analyze` and of a run config's `analyze`, apart from the analyses themselves
(`t3s.analysis.runner`), so that reading a config does not load the plotting."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# The analyses, in the order `all` runs them (`t3s.analysis.runner.run_<name>` each).
NAMES = (
    "shock",
    "groups",
    "drops",
    "tokens",
    "lossshare",
    "intervention",
    "gradients",
    "transfer",
    "separability",
)


def analysis_names(names: list[str]) -> list[str]:
    """`names`, every analysis for `[all]`; a ValueError names what exists when one does not."""
    if names == ["all"]:
        return list(NAMES)
    if not names or any(n not in NAMES for n in names):
        raise ValueError(f"use all or a list of {', '.join(NAMES)}")
    return names


class AnalysisOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    threshold: float = Field(0.0, description="anchors are tokens with Δc > threshold")
    compare: Path | None = Field(
        None,
        description="groups: a run directory or profile .parquet scoring checkpoints of a run trained with "
        "anchors masked ('train the other tokens only'), same examples; read with this run's anchors",
    )
    examples: int = Field(32, ge=1, description="examples sampled for the model-side analyses")
    max_tokens: int = Field(512, ge=2, description="tokens kept per sampled example")
    batch_tokens: int = Field(4096, ge=1, description="padded tokens per forward pass")
    chunk: int = Field(1024, ge=1, description="positions per output-layer chunk")
    steps: list[int] = Field(
        default_factory=list, description="analyse this checkpoint only (repeatable; default all)"
    )
    params: str | None = Field(
        None, description="regex of parameter names that take gradients (default: all)"
    )
    lr: float = Field(1e-5, gt=0, description="learning rate of the intervention step and transfer runs")
    rule: Literal["adam", "sgd"] = Field(
        "adam", description="intervention step: adam (a fresh AdamW's first step) or sgd"
    )
    transfer_steps: int = Field(5, ge=1, description="optimizer steps per subset in the transfer matrix")
    top: int = Field(100, ge=1, description="tokens listed per table")
    min_count: int = Field(3, ge=1, description="occurrences a token needs to be ranked")
    sketch_dim: int = Field(256, ge=2, description="dimensions of the token-gradient sketches")
    sketch_checkpoint: str = Field("base", description="base, bottleneck or stepK")
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda, ...")
    dtype: str = Field(
        "auto", description="auto: bf16 on GPU (float32 for intervention, transfer), float32 on CPU"
    )
    seed: int = Field(0, description="seed of the sampled examples and the gradient sketches")
    trust_remote_code: bool = Field(False, description="allow custom model code from checkpoints")


class AnalyzeSettings(AnalysisOptions):
    """A run config's `analyze`: which analyses run after the chain, with `t3s analyze`'s options."""

    what: list[str] = Field(
        default_factory=lambda: ["all"], validate_default=True, description="the analyses; all: every one"
    )

    @field_validator("what")
    @classmethod
    def _known(cls, names: list[str]) -> list[str]:
        return analysis_names(names)
