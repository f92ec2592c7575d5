"""Teacher specs: `NAME=TARGET`, with the endpoint options `--teacher-model` and `--api-key-env`.

TARGET is `http(s)://HOST:PORT/v1` (an OpenAI-compatible endpoint), `vllm:PATH` (offline vLLM),
`hf:PATH` (transformers), `python:MODULE:FUNCTION`, or a bare checkpoint PATH (vLLM when installed,
else transformers). `t3s.backends.make_backend` builds each one.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from collections.abc import Sequence

from t3s.backends import BackendSpec
from t3s.errors import T3SError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SPEC_HELP = (
    "NAME=http://HOST:PORT/v1, NAME=vllm:PATH, NAME=hf:PATH, NAME=python:MODULE:FUNCTION or NAME=PATH"
)


def parse_teacher(spec: str) -> BackendSpec:
    name, sep, target = spec.partition("=")
    if not sep or not target:
        raise T3SError(f"--teacher {spec!r}: expected {_SPEC_HELP}")
    if not _NAME.match(name):
        raise T3SError(f"--teacher {spec!r}: name {name!r} must be letters, digits, '_', '.', '-'")
    if target.startswith(("http://", "https://")):
        return BackendSpec("openai", target.rstrip("/"), name)
    for kind in ("vllm", "hf", "python"):
        if target.startswith(f"{kind}:"):
            rest = target[len(kind) + 1 :]
            if not rest or (kind == "python" and rest.count(":") != 1):
                raise T3SError(f"--teacher {spec!r}: expected {_SPEC_HELP}")
            return BackendSpec(kind, rest, name)  # type: ignore[arg-type]
    if "://" in target:
        raise T3SError(f"--teacher {spec!r}: only http:// and https:// endpoints are supported")
    return BackendSpec("vllm" if importlib.util.find_spec("vllm") else "hf", target, name)


def _assignments(values: Sequence[str], option: str, teachers: Sequence[BackendSpec]) -> dict[str, str]:
    """`NAME=VALUE` for one endpoint teacher, or a bare VALUE for every endpoint teacher."""
    names = [t.name for t in teachers]
    endpoints = [t.name for t in teachers if t.kind == "openai"]
    out: dict[str, str] = {}
    for value in values:
        name, sep, rhs = value.partition("=")
        if not sep:
            out.update({n: value for n in endpoints if n not in out})
            continue
        if name not in names:
            raise T3SError(f"{option} {value!r}: no teacher named {name!r} (teachers: {', '.join(names)})")
        if name not in endpoints:
            raise T3SError(f"{option} {value!r}: teacher {name!r} is not an http(s) endpoint")
        out[name] = rhs
    return out


def parse_teachers(
    specs: Sequence[str], models: Sequence[str] = (), api_key_envs: Sequence[str] = ()
) -> list[BackendSpec]:
    """The `--teacher`, `--teacher-model [NAME=]MODEL` and `--api-key-env [NAME=]VAR` options together."""
    if not specs:
        raise T3SError(f"give at least one --teacher {_SPEC_HELP}")
    teachers = [parse_teacher(s) for s in specs]
    names = [t.name for t in teachers]
    if dup := sorted({n for n in names if names.count(n) > 1}):
        raise T3SError(f"--teacher: the name {dup[0]!r} is used twice")
    model = _assignments(models, "--teacher-model", teachers)
    key = _assignments(api_key_envs, "--api-key-env", teachers)
    return [dataclasses.replace(t, model=model.get(t.name), api_key_env=key.get(t.name)) for t in teachers]
