"""Testbed configurations: the built-in demo and YAML files with a top-level `testbed:` key."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from t3s.config_file import Override, apply_overrides, read_mapping
from t3s.errors import T3SError, validation_error
from t3s.testbed.runner import TestbedConfig


def testbed_default(run_dir: Path) -> TestbedConfig:
    return TestbedConfig(run_dir=run_dir)


def load_testbed(path: Path, overrides: Sequence[Override] = ()) -> TestbedConfig:
    """Read and validate a testbed YAML; overrides address the document, e.g. `testbed.eval_every`."""
    return testbed_from_mapping(read_mapping(Path(path)), overrides, source=path)


def testbed_from_mapping(
    raw: dict[str, Any], overrides: Sequence[Override] = (), source: Path | str = "the testbed settings"
) -> TestbedConfig:
    """Validate a `{testbed: {...}}` document after the command line's overrides."""
    for override in overrides:
        if override.path[0] != "testbed":
            raise T3SError(f"{override.flag}: a testbed config's settings are under testbed.")
    flags = apply_overrides(raw, overrides)
    if not isinstance(raw.get("testbed"), dict):
        raise T3SError(f"{source}: a testbed config has a top-level 'testbed:' mapping")
    try:
        return TestbedConfig(**raw["testbed"])
    except ValidationError as exc:
        raise validation_error(exc, source=source, prefix=("testbed",), flags=flags) from None
