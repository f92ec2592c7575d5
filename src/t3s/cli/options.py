"""Options shared by several commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from t3s.errors import T3SError

Model = Annotated[str, typer.Option("--model", "-m", help="student θ0: a transformers checkpoint directory")]
Data = Annotated[
    Path, typer.Option("--data", "-d", help="corpus: .jsonl, .parquet or a save_to_disk directory")
]
RunOpt = Annotated[Path, typer.Option("--run", "--out", "-o", help="run directory")]
TemplateOpt = Annotated[str, typer.Option(help="prompt format: auto (chat template if any), chat, plain")]
MaxLen = Annotated[int, typer.Option(help="maximum tokens per example")]
Overlong = Annotated[str, typer.Option(help="responses beyond --max-length: error, truncate or drop")]
Device = Annotated[str, typer.Option(help="auto (CUDA when present), cpu, cuda, cuda:1, ...")]
Remote = Annotated[bool, typer.Option(help="allow custom model code from the checkpoint (off by default)")]


def _tokenize_config(template: str, max_length: int, overlong: str) -> Any:
    from t3s.tokens import TokenizeConfig

    if template not in ("auto", "chat", "plain"):
        raise T3SError(f"--template {template!r}: use auto, chat or plain")
    if overlong not in ("error", "truncate", "drop"):
        raise T3SError(f"--overlong {overlong!r}: use error, truncate or drop")
    if max_length < 2:
        raise T3SError(f"--max-length {max_length}: must be at least 2")
    return TokenizeConfig(template=template, max_length=max_length, overlong=overlong)  # type: ignore[arg-type]


def _pydantic(cls: Any, **values: Any) -> Any:
    """Build a settings model, turning a validation error into one line that names the key."""
    try:
        return cls(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or cls.__name__
        raise T3SError(f"{key}: {err['msg']}") from None
