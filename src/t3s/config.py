"""The run configuration of `t3s run CONFIG.yaml`: validated, echoed into the manifest."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from t3s.analysis.options import AnalyzeSettings
from t3s.config_file import Override, apply_overrides, read_mapping
from t3s.dllm.student import DllmStudent
from t3s.errors import validation_error
from t3s.evaluation import EvalSettings
from t3s.probe import ProbeSettings
from t3s.selection import DLLM_POLICIES, SelectOptions
from t3s.tokens import TokenizeConfig
from t3s.training import TrainRecipe


def _home(value: Any) -> Any:
    return os.path.expanduser(value) if isinstance(value, str) else value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CrossModel(_Strict):
    """Another model sharing the tokenizer, with its own θ0 and θb (cross-model selection)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_]+$", description="the model's name in profile columns")
    base: str = Field(description="its θ0")
    bottleneck: str = Field(description="its θb")


class ProfileSettings(_Strict):
    steps: list[int] = Field(default_factory=list, description="also score probe checkpoint K")
    all_steps: bool = Field(False, description="score every probe checkpoint on disk")
    batch_tokens: int = Field(16384, ge=1, description="padded tokens per forward pass")
    chunk: int = Field(1024, ge=1, description="positions per output-layer chunk (memory O(chunk x vocab))")
    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    dtype: str = Field("auto", description="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16")
    cross_models: list[CrossModel] = Field(
        default_factory=list,
        description="other models sharing the tokenizer, scored for cross-model selection",
    )
    extra_models: dict[str, str] = Field(
        default_factory=dict,
        exclude_if=lambda v: not v,  # dumped only when set: earlier runs' records stay as they were
        description="NAME: PATH of other models sharing the run's tokenizer, scored on the run's own "
        "tokens as logprob_NAME (e.g. an excess-loss reference)",
    )

    @field_validator("extra_models")
    @classmethod
    def _extra_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not re.match(r"^[A-Za-z0-9_]+$", name) or re.match(r"^(base|bottleneck|step\d+)$", name):
                raise ValueError(f"{name!r}: use letters, digits and '_', and not base, bottleneck or stepK")
        return {name: os.path.expanduser(path) for name, path in value.items()}


def _short_policies(value: Any) -> Any:
    """`- t3s` in a policy list is shorthand for `- {policy: t3s}`."""
    if isinstance(value, list):
        return [{"policy": v} if isinstance(v, str) else v for v in value]
    return value


# A policy list as configs write it; the testbed's config uses the same type.
PolicyList = Annotated[list[SelectOptions], BeforeValidator(_short_policies)]


class EvalSection(_Strict):
    """A benchmark scored after the chain, as `t3s eval --run` scores it, into RUN/eval/<bench>/."""

    bench: Annotated[Path, BeforeValidator(_home)] = Field(
        description="id, problem (or prompt), answer: .jsonl, .parquet or a saved dataset"
    )
    models: list[str] | Literal["all"] = Field(
        "all",
        description="the run's models, into policies.jsonl: base, sft, a policy's name, rrt; "
        "all: every model the chain makes",
    )
    steps: list[int] | Literal["all"] | None = Field(
        None, description="probe checkpoints on disk, into curve.jsonl (0 is θ0); all: every one"
    )
    settings: EvalSettings = Field(
        default_factory=EvalSettings,
        description="`t3s eval`'s options; the template is the run's own unless given",
    )


def _run_template(section: Any, template: Any) -> Any:
    settings = section.get("settings", {}) if isinstance(section, dict) else None
    if isinstance(settings, dict) and "template" not in settings:
        return {**section, "settings": {**settings, "template": template}}
    return section


class RunConfig(_Strict):
    run_dir: Path = Field(description="the run directory")
    model: str = Field(description="the student θ0 (with a dLLM student: the AR selector whose Δc selects)")
    data: Path = Field(description="the distillation corpus")
    trust_remote_code: bool = Field(False, description="allow custom model code from the checkpoint")
    tokenize: TokenizeConfig = Field(default_factory=TokenizeConfig, description="how examples are tokenized")
    recipe: TrainRecipe = Field(
        default_factory=TrainRecipe, description="the SFT recipe of probe and retraining"
    )
    probe: ProbeSettings = Field(default_factory=ProbeSettings, description="the probe and its θb search")
    profile: ProfileSettings = Field(default_factory=ProfileSettings, description="the per-token profile")
    policies: PolicyList = Field(
        default_factory=lambda: [SelectOptions(policy="t3s")], description="the masks to select and train"
    )
    save_every: int = Field(10, ge=1, description="resume checkpoints of each retraining")
    rrt: bool = Field(
        True,
        description="finish with Recovering Residual Transfer (AR students only: false by default with a "
        "dLLM student, whose probe is the AR selector's)",
    )
    student: DllmStudent | None = Field(
        None,
        exclude_if=lambda v: v is None,  # dumped only when set: earlier runs' records stay as they were
        description="a dLLM student trained and evaluated in place of `model` (kind: dllm)",
    )
    eval: list[EvalSection] = Field(default_factory=list, description="benchmarks scored after training")
    analyze: AnalyzeSettings | None = Field(None, description="analyses run after the evaluations")
    report: bool = Field(False, description="write RUN/report/ (HTML and Markdown) at the end")

    @field_validator("model", "data", "run_dir", mode="before")
    @classmethod
    def _home(cls, value: Any) -> Any:
        return _home(value)

    @model_validator(mode="before")
    @classmethod
    def _eval_template(cls, raw: Any) -> Any:
        """An eval section prompts as the run was tokenized unless it says otherwise, as `t3s eval --run`."""
        if not isinstance(raw, dict) or not isinstance(raw.get("eval"), list):
            return raw
        tokenize = raw.get("tokenize") or {}
        if isinstance(tokenize, TokenizeConfig):
            template = tokenize.template
        elif isinstance(tokenize, dict):
            template = tokenize.get("template", "auto")
        else:
            return raw  # not valid: its own error follows
        return {**raw, "eval": [_run_template(section, template) for section in raw["eval"]]}

    @model_validator(mode="before")
    @classmethod
    def _dllm_without_rrt(cls, raw: Any) -> Any:
        """RRT moves AR weights along the probe's trajectory; a dLLM student has no such trajectory."""
        if not isinstance(raw, dict) or raw.get("student") is None:
            return raw
        if raw.get("rrt") is True:
            raise ValueError("rrt: a dLLM student has no RRT (its probe is the AR selector's); drop rrt")
        return {**raw, "rrt": False}

    @model_validator(mode="after")
    def _policies_fit_the_student(self) -> RunConfig:
        """A dLLM learns every response token (its policies choose targets); an AR student reads none."""
        dllm = [o.output_name() for o in self.policies if o.policy in DLLM_POLICIES]
        if self.student is None and dllm:
            raise ValueError(f"policies {', '.join(dllm)} select targets for a dLLM student: add student")
        ar = [o.output_name() for o in self.policies if o.policy not in ("sft", *DLLM_POLICIES)]
        if self.student is not None and ar:
            raise ValueError(
                f"policies {', '.join(ar)} are AR loss masks; a dLLM student trains sft, dllm-t3s, dllm-random"
            )
        return self


def load_config(path: str | Path, overrides: Sequence[Override] = ()) -> RunConfig:
    """Read and validate a YAML config; an error names the file and the key (or the overriding option)."""
    path = Path(path)
    raw = read_mapping(path)
    flags = apply_overrides(raw, overrides)
    try:
        return RunConfig(**raw)
    except ValidationError as exc:
        raise validation_error(exc, source=path, flags=flags, root="config") from None
