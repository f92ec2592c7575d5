"""The run configuration of `t3s run CONFIG.yaml`: validated, echoed into the manifest."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
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
from t3s.errors import T3SError
from t3s.evaluation import EvalSettings
from t3s.probe import ProbeSettings
from t3s.selection import SelectOptions
from t3s.tokens import TokenizeConfig
from t3s.training import TrainRecipe


def _home(value: Any) -> Any:
    return os.path.expanduser(value) if isinstance(value, str) else value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TokenizeSettings(_Strict):
    template: Literal["auto", "chat", "plain"] = "auto"
    max_length: int = Field(4096, ge=2)
    overlong: Literal["error", "truncate", "drop"] = "error"

    def config(self) -> TokenizeConfig:
        return TokenizeConfig(self.template, self.max_length, self.overlong)


class CrossModel(_Strict):
    """Another model sharing the tokenizer, with its own θ0 and θb (cross-model selection)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_]+$")
    base: str
    bottleneck: str


class ProfileSettings(_Strict):
    steps: list[int] = Field(default_factory=list, description="extra probe checkpoints to score")
    all_steps: bool = False
    batch_tokens: int = Field(16384, ge=1)
    chunk: int = Field(1024, ge=1)
    device: str = "auto"
    dtype: str = "auto"
    cross_models: list[CrossModel] = Field(default_factory=list)


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
    run_dir: Path
    model: str = Field(description="the student θ0")
    data: Path = Field(description="the distillation corpus")
    trust_remote_code: bool = False
    tokenize: TokenizeSettings = Field(default_factory=TokenizeSettings)
    recipe: TrainRecipe = Field(default_factory=TrainRecipe)
    probe: ProbeSettings = Field(default_factory=ProbeSettings)
    profile: ProfileSettings = Field(default_factory=ProfileSettings)
    policies: PolicyList = Field(default_factory=lambda: [SelectOptions(policy="t3s")])
    save_every: int = Field(10, ge=1, description="resume checkpoints of each retraining")
    rrt: bool = True
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
        if isinstance(tokenize, TokenizeSettings):
            template = tokenize.template
        elif isinstance(tokenize, dict):
            template = tokenize.get("template", "auto")
        else:
            return raw  # not valid: its own error follows
        return {**raw, "eval": [_run_template(section, template) for section in raw["eval"]]}


def _location(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "config"


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read and validate a YAML config; an error names the file and the key."""
    path = Path(path)
    if not path.exists():
        raise T3SError(f"{path}: no such config file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise T3SError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise T3SError(f"{path}: expected a mapping of settings at the top level")
    raw.update(overrides or {})
    try:
        return RunConfig(**raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        raise T3SError(f"{path}: {_location(err['loc'])}: {msg}") from None
