"""The settings of a dLLM student: its training objective and its sampler (no torch to import them,
so a run config validates without loading torch)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Weighting = Literal["uniform", "1/t"]


class DiffusionSettings(BaseModel):
    """The masked-diffusion objective; the recipe (steps, batch, lr, ...) is the AR one."""

    model_config = ConfigDict(extra="forbid")
    objective: Literal["mdm", "block"] = Field(
        "mdm", description="mdm (LLaDA: one t per sequence) or block (BD3-LM: one t per block)"
    )
    block_size: int = Field(32, ge=1, description="block diffusion: response tokens per block")
    t_min: float = Field(0.3, gt=0, le=1, description="t ~ U(t_min, t_max); dFactory 0.3, LLaDA 0.001")
    t_max: float = Field(0.8, gt=0, le=1, description="dFactory 0.8, LLaDA 1.0")
    weighting: Weighting = Field("uniform", description="uniform (mean over masked tokens) or 1/t (LLaDA)")
    pad_with_eos: bool = Field(
        True,
        description="pad responses with EOS that is noised and trained (LLaDA), so fixed-length sampling ends",
    )

    @model_validator(mode="after")
    def _check(self) -> DiffusionSettings:
        if self.t_min > self.t_max:
            raise ValueError(f"t_min {self.t_min} exceeds t_max {self.t_max}")
        return self


class DiffusionSampling(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    steps: int | None = Field(None, ge=1, description="denoising steps in all (default: one per new token)")
    block_length: int = Field(32, ge=1, description="semi-autoregressive block length")
    remasking: Literal["low_confidence", "random"] = Field(
        "low_confidence", description="which tokens to commit"
    )
    threshold: float | None = Field(
        None, gt=0, le=1, description="also commit every token more confident than this (parallel decoding)"
    )
    attention: Literal["full", "block"] = Field(
        "full", description="full (MDM) or block-causal (block diffusion)"
    )
