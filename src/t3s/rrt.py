"""Recovering Residual Transfer: θ_RRT = θ0 + (θf - θb), one tensor at a time, shard by shard."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from t3s.errors import T3SError
from t3s.io import atomic_dir

_ARCH_KEYS = (
    "model_type",
    "architectures",
    "hidden_size",
    "num_hidden_layers",
    "vocab_size",
    "intermediate_size",
)


def _weight_map(path: Path) -> dict[str, str]:
    """tensor name -> shard file of a safetensors checkpoint directory."""
    index = path / "model.safetensors.index.json"
    if index.exists():
        return json.loads(index.read_text())["weight_map"]
    single = path / "model.safetensors"
    if not single.exists():
        if (path / "adapter_config.json").exists():
            raise T3SError(f"{path}: a LoRA adapter; RRT needs full checkpoints (merge the adapter first)")
        raise T3SError(f"{path}: no safetensors weights (model.safetensors or its index)")
    with safe_open(single, "pt") as fh:
        return dict.fromkeys(fh.keys(), "model.safetensors")


def _config(path: Path) -> dict[str, Any]:
    cfg = path / "config.json"
    if not cfg.exists():
        raise T3SError(f"{path}: no config.json")
    return json.loads(cfg.read_text())


class _Reader:
    """Open shards lazily, one tensor at a time."""

    def __init__(self, path: Path) -> None:
        self.path, self.map = path, _weight_map(path)
        self._open: dict[str, Any] = {}

    def shape(self, name: str) -> list[int]:
        return list(self._file(name).get_slice(name).get_shape())

    def get(self, name: str) -> torch.Tensor:
        return self._file(name).get_tensor(name)

    def _file(self, name: str) -> Any:
        shard = self.map[name]
        if shard not in self._open:
            self._open[shard] = safe_open(self.path / shard, "pt")
        return self._open[shard]


def rrt(base: str | Path, bottleneck: str | Path, final: str | Path, out: str | Path) -> dict[str, Any]:
    """Write θ0 + (θf - θb) to `out`, refusing models of different architectures or shapes."""
    paths = {"base": Path(base), "bottleneck": Path(bottleneck), "final": Path(final)}
    configs = {k: _config(p) for k, p in paths.items()}
    for key in _ARCH_KEYS:
        values = {k: c.get(key) for k, c in configs.items()}
        if len({json.dumps(v) for v in values.values()}) > 1:
            raise T3SError(f"RRT needs one architecture: {key} differs ({values})")
    readers = {k: _Reader(p) for k, p in paths.items()}
    names = {k: set(r.map) for k, r in readers.items()}
    if not names["base"] == names["bottleneck"] == names["final"]:
        odd = sorted((names["base"] ^ names["final"]) | (names["bottleneck"] ^ names["final"]))[:3]
        raise T3SError(f"RRT needs the same tensors in all three models; these differ: {odd}")
    shards: dict[str, list[str]] = {}
    for name, shard in readers["final"].map.items():
        shards.setdefault(shard, []).append(name)
    with atomic_dir(out) as tmp:
        for shard, tensor_names in sorted(shards.items()):
            tensors = {}
            for name in sorted(tensor_names):
                shapes = {k: r.shape(name) for k, r in readers.items()}
                if not shapes["base"] == shapes["bottleneck"] == shapes["final"]:
                    raise T3SError(f"RRT: tensor {name} has different shapes {shapes}")
                f = readers["final"].get(name)
                value = readers["base"].get(name).float() + (
                    f.float() - readers["bottleneck"].get(name).float()
                )
                tensors[name] = value.to(f.dtype).contiguous()
            save_file(tensors, tmp / shard, metadata={"format": "pt"})
        final_dir = paths["final"]
        for f in final_dir.iterdir():
            if (
                f.is_file()
                and not f.name.endswith((".safetensors", ".bin", ".pt", ".pth"))
                and f.name != "trainer_state.json"
            ):
                shutil.copy2(f, tmp / f.name)
    return {
        "base": str(base),
        "bottleneck": str(bottleneck),
        "final": str(final),
        "tensors": len(names["final"]),
    }
