"""The run directory: where every stage's artifacts live, and the manifest that says which are done."""

from __future__ import annotations

import contextlib
import platform
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from t3s import __version__
from t3s.errors import T3SError
from t3s.io import read_json, write_json

_TRACKED_PACKAGES = ("torch", "transformers", "accelerate", "datasets", "peft", "trl", "vllm", "math-verify")


def package_versions() -> dict[str, str]:
    versions = {"t3s": __version__, "python": platform.python_version()}
    for name in _TRACKED_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


class RunDir:
    """Paths of a run's artifacts and its `manifest.json` (config, versions, fingerprints, stages)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # -- paths -----------------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    @property
    def corpus(self) -> Path:
        return self.root / "corpus.parquet"

    @property
    def tokens(self) -> Path:
        return self.root / "tokens.parquet"

    @property
    def probe_dir(self) -> Path:
        return self.root / "probe"

    @property
    def metrics(self) -> Path:
        return self.probe_dir / "metrics.jsonl"

    @property
    def checkpoints_dir(self) -> Path:
        return self.probe_dir / "checkpoints"

    @property
    def profile_dir(self) -> Path:
        return self.root / "profile"

    @property
    def profile(self) -> Path:
        return self.profile_dir / "profile.parquet"

    def masks_dir(self, policy: str) -> Path:
        return self.root / "masks" / policy

    def train_dir(self, policy: str) -> Path:
        return self.root / "train" / policy

    def resolve(self, path: str) -> str:
        """A path recorded in the manifest: relative ones are inside the run directory."""
        return path if Path(path).is_absolute() or not (self.root / path).exists() else str(self.root / path)

    # -- manifest --------------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        if not self.manifest_path.exists():
            return {}
        try:
            return read_json(self.manifest_path)
        except ValueError as exc:
            raise T3SError(f"{self.manifest_path}: not valid JSON ({exc})") from exc

    def update(self, fn: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        """Read-modify-write the manifest atomically (only the main process calls this)."""
        manifest = self.manifest()
        if not manifest:
            manifest = {"t3s_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        fn(manifest)
        manifest["versions"] = package_versions()
        write_json(self.manifest_path, manifest)
        return manifest

    def stage(self, name: str) -> dict[str, Any]:
        return self.manifest().get("stages", {}).get(name, {})

    def stage_done(self, name: str, fingerprint: str) -> bool:
        info = self.stage(name)
        return info.get("status") == "done" and info.get("fingerprint") == fingerprint

    def set_stage(self, name: str, **info: Any) -> None:
        def fn(m: dict[str, Any]) -> None:
            m.setdefault("stages", {}).setdefault(name, {}).update(info)

        self.update(fn)

    @contextlib.contextmanager
    def running(self, name: str, fingerprint: str, **info: Any) -> Iterator[dict[str, Any]]:
        """Mark a stage running; it is marked done (with the extras the block adds) only on success."""
        start = time.time()
        self.set_stage(name, status="running", fingerprint=fingerprint, started=time.ctime(start), **info)
        extras: dict[str, Any] = {}
        try:
            yield extras
        except BaseException as exc:
            self.set_stage(name, status="failed", error=f"{type(exc).__name__}: {exc}"[:500])
            raise
        self.set_stage(
            name,
            status="done",
            finished=time.ctime(),
            seconds=round(time.time() - start, 2),
            error=None,
            **extras,
        )

    def record(self, key: str, value: Any) -> None:
        def fn(m: dict[str, Any]) -> None:
            m[key] = value

        self.update(fn)

    def check_fingerprint(self, key: str, value: str, what: str) -> None:
        """Refuse to mix inputs: a run keeps the data and tokenizer it was started with."""
        known = self.manifest().get("fingerprints", {}).get(key)
        if known is not None and known != value:
            raise T3SError(
                f"{what} differs from the one run {self.root} was started with "
                f"({key} fingerprint {value} != {known}); use a new run directory"
            )

        def fn(m: dict[str, Any]) -> None:
            m.setdefault("fingerprints", {})[key] = value

        if known is None:
            self.update(fn)
