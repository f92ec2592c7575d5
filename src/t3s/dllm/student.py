"""A dLLM student of a run: the masked-diffusion model trained and evaluated in place of an AR one.

The run's `model` stays the AR selector θ0: its probe and profile give Δc, from which `dllm-t3s`
selects the target set B. The student is trained from `model` (a dLLM checkpoint with a mask
token) with the diffusion objective and evaluated with the diffusion sampler. Δc can only name the
student's tokens when both share a tokenizer, which `check_student_tokenizer` checks (tokenizers
compared, not names).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from t3s.dllm.settings import DiffusionSampling, DiffusionSettings
from t3s.errors import T3SError, validation_error


class DllmStudent(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["dllm"] = Field(description="dllm: a masked-diffusion student")
    model: str = Field(
        description="the dLLM θ0: a checkpoint with a mask token (an A2D conversion by "
        "t3s.dllm.a2d.to_dllm, testbed:smollm2-dllm, or LLaDA with trust_remote_code)"
    )
    diffusion: DiffusionSettings = Field(
        default_factory=DiffusionSettings, description="the masked-diffusion training objective"
    )
    sampling: DiffusionSampling = Field(
        default_factory=DiffusionSampling, description="how `t3s eval` generates with the dLLM"
    )

    @field_validator("model", mode="before")
    @classmethod
    def _home(cls, value: Any) -> Any:
        return os.path.expanduser(value) if isinstance(value, str) else value

    def resolved(self) -> DllmStudent:
        """The student with a built-in model name (testbed:...) made a checkpoint directory."""
        from t3s.testbed import resolve_builtin

        return self.model_copy(update={"model": resolve_builtin(self.model)})


def check_student_tokenizer(selector: str, student: DllmStudent, *, trust_remote_code: bool = False) -> None:
    """Refuse a student whose tokenizer gives the selector's token ids another meaning."""
    from t3s.dllm.targets import check_shared_tokenizer
    from t3s.models import load_tokenizer

    check_shared_tokenizer(
        load_tokenizer(selector, trust_remote_code=trust_remote_code),
        load_tokenizer(student.model, trust_remote_code=trust_remote_code),
        where=f"selector {selector} (for the dLLM student {student.model})",
    )


def load_student(path: Path) -> DllmStudent:
    """A dLLM student from a YAML file: a run config's `student:` section, or the whole run config."""
    from t3s.config_file import read_mapping

    raw = read_mapping(path)
    prefix: tuple[str, ...] = ()
    if "student" in raw:
        raw, prefix = raw["student"], ("student",)
        if not isinstance(raw, dict):
            raise T3SError(f"{path}: student: expected a mapping (kind: dllm, model, ...)")
    try:
        return DllmStudent(**raw)
    except ValidationError as exc:
        raise validation_error(exc, source=path, prefix=prefix) from None
