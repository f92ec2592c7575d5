"""`python -m t3s ARGS`, logging every file this process writes under $T3S_AUDIT_ROOT.

For the multi-process tests: torchrun starts this script once per process, and each appends one
line per write (path, event) to $T3S_AUDIT_DIR/rank-$RANK.log, at once, so a killed job's writes
are logged too. Writes are Python's own file events (audit hooks): open for writing, rename or
replace, remove and rmtree. Writes from native code (safetensors, Arrow, torch.save's zip writer)
are seen through the temporary files and renames of t3s's atomic writes.
"""

from __future__ import annotations

import os
import runpy
import sys
from typing import Any

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _install(root: str, log: str) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def record(path: Any, event: str) -> None:
        if isinstance(path, int):
            return
        path = os.path.abspath(os.fsdecode(path))
        if path.startswith(root + os.sep):
            os.write(fd, f"{event}\t{os.path.relpath(path, root)}\n".encode())

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event == "open":
            path, mode, flags = args
            if (mode is None and flags & _WRITE_FLAGS) or (isinstance(mode, str) and set(mode) & set("wax+")):
                record(path, "open")
        elif event == "os.rename":
            record(args[0], "rename-from")
            record(args[1], "rename-to")
        elif event in ("os.remove", "shutil.rmtree"):
            record(args[0], event)

    sys.addaudithook(hook)


if __name__ == "__main__":
    if "T3S_AUDIT_DIR" in os.environ:
        rank = os.environ.get("RANK", "0")
        root = os.path.abspath(os.environ["T3S_AUDIT_ROOT"])
        _install(root, os.path.join(os.environ["T3S_AUDIT_DIR"], f"rank-{rank}.log"))
    sys.argv = ["t3s", *sys.argv[1:]]
    runpy.run_module("t3s", run_name="__main__", alter_sys=True)
