"""Testbed configurations: the built-in demo and YAML files with a top-level `testbed:` key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from t3s.errors import T3SError
from t3s.testbed.runner import TestbedConfig


def testbed_default(run_dir: Path) -> TestbedConfig:
    return TestbedConfig(run_dir=run_dir)


def from_mapping(raw: dict[str, Any], where: str) -> TestbedConfig:
    try:
        return TestbedConfig(**raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "testbed"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        raise T3SError(f"{where}: testbed.{key}: {msg}") from None


def load_testbed(path: Path) -> TestbedConfig:
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if not isinstance(raw, dict) or not isinstance(raw.get("testbed"), dict):
        raise T3SError(f"{path}: a testbed config has a top-level 'testbed:' mapping")
    return from_mapping(raw["testbed"], str(path))
