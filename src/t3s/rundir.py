"""The run directory: where every artifact of a run lives, the manifest, and one reader per record.

Every path inside a run directory is spelled here and nowhere else, and each record has one
source with one reader here (or called from here). The probe's record (θb, the final and kept
checkpoints) lives in the manifest under `probe`; `probe/bottleneck.json` is the same record
written beside the probe for other tools, and t3s never reads it back. θ0 is the model the probe
stage was started with. The manifest is written by the main process only (see `t3s.stage`).
"""

from __future__ import annotations

import contextlib
import platform
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from t3s import __version__
from t3s.errors import T3SError
from t3s.io import read_json, read_jsonl, write_json

if TYPE_CHECKING:
    from t3s.dllm.student import DllmStudent
    from t3s.tokens import TokenizedExample
    from t3s.training import TrainRecipe

_TRACKED_PACKAGES = ("torch", "transformers", "accelerate", "datasets", "peft", "trl", "vllm", "math-verify")


def package_versions() -> dict[str, str]:
    versions = {"t3s": __version__, "python": platform.python_version()}
    for name in _TRACKED_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def read_profile(path: str | Path) -> pa.Table:
    """A profile Parquet: a run's own, a cross-model one or a standalone one."""
    path = Path(path)
    if not path.exists():
        raise T3SError(f"{path}: no profile here; run `t3s profile --run RUN` first")
    return pq.read_table(path)


class RunDir:
    """Paths of a run's artifacts, their readers, and `manifest.json` (config, versions, fingerprints,
    stages)."""

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
    def bottleneck_path(self) -> Path:
        """The probe's record for other tools (written from the manifest's, never read back)."""
        return self.probe_dir / "bottleneck.json"

    def probe_samples(self, step: int, heldout: bool = False) -> Path:
        return self.probe_dir / "samples" / f"{'heldout-' if heldout else ''}step-{step:05d}.jsonl"

    def probe_partial_samples(self, step: int, process: int | str) -> Path:
        """One process's verified samples of a measurement under way, until the step's row is written."""
        return self.probe_dir / f".samples-step-{step:05d}.process-{process}.jsonl"

    @property
    def profile_dir(self) -> Path:
        return self.root / "profile"

    @property
    def profile(self) -> Path:
        return self.profile_dir / "profile.parquet"

    @property
    def profile_summary(self) -> Path:
        return self.profile.with_suffix(".json")

    @property
    def profile_cache(self) -> Path:
        return self.profile_dir / "cache"

    def cross_profile(self, name: str) -> Path:
        """The profile of the run's corpus under another model's θ0 and θb (cross-model selection)."""
        return self.profile_dir / f"cross-{name}.parquet"

    def masks_dir(self, policy: str) -> Path:
        return self.root / "masks" / policy

    def masks_dirs(self) -> list[Path]:
        return sorted(p for p in (self.root / "masks").glob("*") if p.is_dir())

    @property
    def train_root(self) -> Path:
        """Every policy's training, `rrt` included: RUN/train/<policy>."""
        return self.root / "train"

    def train_dir(self, policy: str) -> Path:
        return self.train_root / policy

    def model_dir(self, policy: str) -> Path:
        """A trained policy's model (`rrt` included)."""
        return self.train_dir(policy) / "model"

    def train_log(self, policy: str) -> Path:
        """Per-step training log of a policy (written by `t3s train`)."""
        return self.train_dir(policy) / "log.jsonl"

    def train_checkpoints(self, policy: str) -> Path:
        """A policy's checkpoints while it trains (removed once its model is saved)."""
        return self.train_dir(policy) / "checkpoints"

    def train_dirs(self) -> list[Path]:
        return sorted(p for p in self.train_root.glob("*") if p.is_dir())

    def eval_dir(self, bench: str) -> Path:
        return self.root / "eval" / bench

    def eval_result(self, bench: str, label: str) -> Path:
        """One model's summary on a benchmark (label step-NNNNN or policy-<name>); its samples are
        `<label>.samples.jsonl` beside it (`t3s.evaluation.output_paths`)."""
        return self.eval_dir(bench) / f"{label}.json"

    def eval_dirs(self) -> list[Path]:
        return sorted(p for p in (self.root / "eval").glob("*") if p.is_dir())

    def eval_table(self, bench: str, policies: bool = False) -> Path:
        """A benchmark's rows: by probe step (the held-out curve), or by trained policy."""
        return self.eval_dir(bench) / ("policies.jsonl" if policies else "curve.jsonl")

    @property
    def analysis_dir(self) -> Path:
        return self.root / "analysis"

    @property
    def testbed_dir(self) -> Path:
        """The built-in testbed's own records (competence gate, summary)."""
        return self.root / "testbed"

    @property
    def testbed_gate(self) -> Path:
        return self.testbed_dir / "gate.json"

    @property
    def testbed_summary(self) -> Path:
        """A testbed seed's results; a run that holds one is a testbed run (see `t3s.report`)."""
        return self.testbed_dir / "summary.json"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    @property
    def report_extra_dir(self) -> Path:
        """Report items any stage may drop in (see `t3s.report`)."""
        return self.report_dir / "extra"

    def resolve(self, path: str) -> str:
        """A path recorded in the manifest: relative ones are inside the run directory."""
        return path if Path(path).is_absolute() or not (self.root / path).exists() else str(self.root / path)

    # -- records ---------------------------------------------------------------------------------
    def tokens_table(self) -> pa.Table:
        if not self.tokens.exists():
            raise T3SError(f"run {self.root} has no tokens; run `t3s probe` first")
        return pq.read_table(self.tokens)

    def read_tokens(self) -> list[TokenizedExample]:
        from t3s.tokens import tokens_items

        return tokens_items(self.tokens_table())

    def base_model(self) -> str:
        """θ0: the model the probe was started with (recorded while it runs, too)."""
        base = self.stage("probe").get("model")
        if not base:
            raise T3SError(f"run {self.root} has no probe (no base model recorded); run `t3s probe` first")
        return self.resolve(base)

    def bottleneck(self) -> dict[str, Any]:
        """The finished probe's record: θb's step, its checkpoint, the final one, those kept."""
        record = self.manifest().get("probe")
        if not record or self.stage("probe").get("status") != "done":
            raise T3SError(f"run {self.root} has no finished probe; run `t3s probe --run {self.root}` first")
        return record

    def write_bottleneck(self, record: dict[str, Any]) -> None:
        write_json(self.bottleneck_path, record)
        self.record("probe", record)

    def student(self) -> DllmStudent | None:
        """The run's dLLM student (recorded by `t3s train` with one), or None: an AR run."""
        from t3s.dllm.student import DllmStudent

        record = self.manifest().get("student")
        return DllmStudent(**record) if record else None

    def model(self, name: str) -> str:
        """A model of the run by name: a trained policy's (`rrt` included), else `base` (θ0) or `sft`,
        the probe's final checkpoint (the probe is plain SFT with the recipe every policy trains with).
        In a run with a dLLM student, `base` is the student's θ0 and `sft` is trained like a policy."""
        trained = self.model_dir(name)
        if (trained / "config.json").exists():
            return str(trained)
        student = self.student() if name in ("base", "sft") else None
        if name == "base":
            return student.model if student else self.base_model()
        if name == "sft" and student is None:
            return self.resolve(self.bottleneck()["final"])
        raise T3SError(f"policy {name!r}: no trained model at {trained}; run `t3s train` for it first")

    def checkpoints(self) -> dict[int, str]:
        """Step -> model: θ0 as step 0 and every complete probe checkpoint on disk."""
        from t3s.training import checkpoint_step, list_checkpoints

        found = {checkpoint_step(p): str(p) for p in list_checkpoints(self.checkpoints_dir)}
        return {0: self.base_model(), **found}

    def probe_metrics(self) -> list[dict[str, Any]]:
        """The probe's rows (`probe/metrics.jsonl`) by step; empty before the first measurement."""
        return sorted(read_jsonl(self.metrics), key=lambda r: r["step"])

    def recipe(self) -> TrainRecipe:
        """The probe's training recipe, which every retraining reuses."""
        from t3s.training import TrainRecipe

        recipe = self.manifest().get("recipe")
        if recipe is None:
            raise T3SError(f"run {self.root} records no training recipe; run `t3s probe` first")
        return TrainRecipe(**recipe)

    def profile_table(self) -> pa.Table:
        return read_profile(self.profile)

    def masks(self, policy: str) -> pa.Table:
        from t3s.selection import read_masks

        return read_masks(
            self.masks_dir(policy),
            missing=f"run {self.root}: no masks for policy {policy!r} ({self.masks_dir(policy)} is missing); "
            "run `t3s select` on it first",
        )

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

    def set_stage(self, name: str, **info: Any) -> None:
        def fn(m: dict[str, Any]) -> None:
            m.setdefault("stages", {}).setdefault(name, {}).update(info)

        self.update(fn)

    def record(self, key: str, value: Any) -> None:
        def fn(m: dict[str, Any]) -> None:
            m[key] = value

        self.update(fn)

    def fingerprints(self) -> dict[str, str]:
        """The fingerprints of the inputs a run is bound to: data, tokenizer, tokenize_config."""
        return self.manifest().get("fingerprints", {})

    def check_fingerprint(self, key: str, value: str, what: str) -> None:
        """Refuse to mix inputs: a run keeps the data and tokenizer it was started with."""
        known = self.fingerprints().get(key)
        if known is not None and known != value:
            raise T3SError(
                f"{what} differs from the one run {self.root} was started with "
                f"({key} fingerprint {value} != {known}); use a new run directory"
            )

    def record_fingerprints(self, **values: str) -> None:
        def fn(m: dict[str, Any]) -> None:
            m.setdefault("fingerprints", {}).update(values)

        self.update(fn)
