"""YAML config files: one mapping of settings, with command-line overrides put in before validation.

`t3s run CONFIG --set recipe.lr=2e-5 --set probe.eval.every=5` sets values by their dotted path in
the document (a number indexes a list: `policies.0.threshold`); each value is read as YAML. An error
in an overridden value names the option that set it, not the file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from t3s.errors import Loc, T3SError


@dataclass(frozen=True)
class Override:
    """A value the command line puts at `path` of a config document; `flag` names it in errors."""

    path: tuple[str, ...]
    value: Any
    flag: str


def parse_set(text: str) -> Override:
    """`KEY.PATH=VALUE` of `--set`, the value read as YAML (`5`, `2e-5`, `true`, `[1, 2]`, `null`)."""
    key, sep, value = text.partition("=")
    path = tuple(key.strip().split("."))
    if not sep or not all(path):
        raise T3SError(f"--set {text!r}: write KEY.PATH=VALUE, e.g. --set recipe.lr=2e-5")
    flag = f"--set {key.strip()}"
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise T3SError(f"{flag}: the value is not valid YAML ({str(exc).splitlines()[0]})") from None
    return Override(path, parsed, flag)


def read_mapping(path: Path) -> dict[str, Any]:
    """The top-level mapping of a YAML file; a missing file or bad YAML is a one-line error."""
    if not path.exists():
        raise T3SError(f"{path}: no such config file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise T3SError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise T3SError(f"{path}: expected a mapping of settings at the top level")
    return raw


def _step(node: Any, part: str, override: Override, where: tuple[str, ...]) -> str | int:
    """The key or list index `part` addresses in `node`."""
    if isinstance(node, dict):
        return part
    if isinstance(node, list) and part.isdigit() and int(part) < len(node):
        return int(part)
    what = f"a list of {len(node)} items" if isinstance(node, list) else "not a mapping"
    raise T3SError(f"{override.flag}: {'.'.join(where) or 'the config'} is {what}")


def _leaves(loc: Loc, value: Any) -> list[Loc]:
    """The locations of a value's settings, so that an error inside a mapping names its key."""
    if isinstance(value, dict) and value:
        return [leaf for key, item in value.items() for leaf in _leaves((*loc, str(key)), item)]
    return [loc]


def apply_overrides(raw: dict[str, Any], overrides: Sequence[Override]) -> dict[Loc, str]:
    """Put each value at its path (missing mappings are made on the way).

    Returns the flag that set each overridden location, for `validation_error`.
    """
    flags: dict[Loc, str] = {}
    for override in overrides:
        node: Any = raw
        loc: list[str | int] = []
        for i, part in enumerate(override.path):
            step = _step(node, part, override, override.path[:i])
            loc.append(step)
            if i == len(override.path) - 1:
                node[step] = override.value
            else:
                if isinstance(node, dict) and node.get(step) is None:
                    node[step] = {}  # made here: an unknown key in the path is this option's
                    flags[tuple(loc)] = f"--set {'.'.join(str(p) for p in loc)}"
                node = node[step]
        for leaf in _leaves(tuple(loc), override.value):
            label = ".".join(str(p) for p in leaf)
            flags[leaf] = override.flag if label == ".".join(override.path) else f"--set {label}"
    return flags
