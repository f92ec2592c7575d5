"""`package.module:function` references, as users name verifiers and Python teachers."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from t3s.errors import T3SError


def import_callable(ref: str, what: str) -> Callable[..., Any]:
    """The callable `ref` names; `what` (e.g. "verifier 'x:y'") starts the one-line error."""
    module_name, _, attr = ref.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise T3SError(f"{what}: cannot import {ref} ({exc})") from exc
    if not callable(fn):
        raise T3SError(f"{what}: {ref} is not callable")
    return fn
