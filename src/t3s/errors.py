"""The one exception type users see: a single line that names the file, row or field at fault."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError

# Where a setting sits in a settings model or config document: keys and list indexes.
Loc = tuple[str | int, ...]


class T3SError(Exception):
    """A problem with the user's input or environment, reported as one line and a non-zero exit."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


def validation_error(
    exc: ValidationError,
    *,
    source: str | Path | None = None,
    prefix: Loc = (),
    flags: Mapping[Loc, str] | None = None,
    root: str | None = None,
) -> T3SError:
    """The first error of a settings model as one line: `[SOURCE: ]KEY: MESSAGE`.

    The error's location is `prefix` + its location in the model. When `flags` maps that location
    (or the longest part of it that it maps) to the command-line option that gave the value, KEY is
    that option and SOURCE is left out, since the value did not come from there. Otherwise KEY is the
    dotted location, or `root` (default: the model's name) for an error of the whole model.
    """
    err = exc.errors()[0]
    loc: Loc = (*prefix, *err["loc"])
    message = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
    for end in range(len(loc), 0, -1):
        if flags and loc[:end] in flags:
            return T3SError(f"{flags[loc[:end]]}: {message}")
    key = ".".join(str(part) for part in loc) or root or exc.title
    return T3SError(f"{source}: {key}: {message}" if source is not None else f"{key}: {message}")
