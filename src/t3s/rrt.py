"""Recovering Residual Transfer: θ_RRT = θ0 + (θf - θb), one tensor at a time, shard by shard.

θb and θf are full checkpoints or PEFT LoRA adapters over θ0. An adapter stands for
θ = θ0 + (B @ A) * scaling on each layer it adapts (plus any tensor it saves whole, such as
modules_to_save), so LoRA runs need no merged copies on disk.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from t3s.errors import T3SError
from t3s.fingerprint import digest, model_fingerprint
from t3s.io import atomic_dir
from t3s.rundir import RunDir
from t3s.stage import Attempt, Stage

if TYPE_CHECKING:
    from t3s.training import TrainRecipe

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
            raise T3SError(
                f"{path}: a LoRA adapter; RRT needs θ0 as a full checkpoint (merge the adapter first)"
            )
        raise T3SError(f"{path}: no safetensors weights (model.safetensors or its index)")
    with safe_open(single, "pt") as fh:
        return dict.fromkeys(fh.keys(), "model.safetensors")


def _config(path: Path) -> dict[str, Any]:
    cfg = path / "config.json"
    if not cfg.exists():
        raise T3SError(f"{path}: no config.json")
    return json.loads(cfg.read_text())


class _Reader:
    """A full checkpoint: open shards lazily, one tensor at a time."""

    def __init__(self, path: Path) -> None:
        self.path, self.map = path, _weight_map(path)
        self._open: dict[str, Any] = {}

    def shape(self, name: str) -> list[int]:
        return list(self._file(name).get_slice(name).get_shape())

    def shapes(self) -> dict[str, list[int]]:
        return {name: self.shape(name) for name in self.map}

    def get(self, name: str) -> torch.Tensor:
        return self._file(name).get_tensor(name)

    def value(self, name: str, base: torch.Tensor) -> torch.Tensor:
        return self.get(name)

    def _file(self, name: str) -> Any:
        shard = self.map[name]
        if shard not in self._open:
            self._open[shard] = safe_open(self.path / shard, "pt")
        return self._open[shard]


# -- LoRA adapters ----------------------------------------------------------------------------------

_PEFT_PREFIX = "base_model.model."
# adapter_config.json keys that RRT handles or that change no merged weight. Any other key set to a
# non-empty value is a PEFT variant (DoRA, LoRA biases, target_parameters, ...) that B @ A would get wrong.
_HANDLED_KEYS = frozenset(
    {
        "peft_type", "task_type", "base_model_name_or_path", "revision", "inference_mode", "peft_version",
        "auto_mapping", "r", "lora_alpha", "lora_dropout", "use_rslora", "rank_pattern", "alpha_pattern",
        "target_modules", "exclude_modules", "layers_to_transform", "layers_pattern", "fan_in_fan_out",
        "modules_to_save", "bias", "init_lora_weights", "eva_config", "megatron_core", "qalora_group_size",
    }
)  # fmt: skip
# Initialisations that touch only A and B; PiSSA, OLoRA, CorDA, LoftQ, ... rewrite θ0's weights too.
_PLAIN_INITS = (True, False, "gaussian", "eva", "orthogonal")
# adapter tensor suffix -> (matrix, layer stores its weight transposed: embeddings always do)
_LOW_RANK = {
    ".lora_A.weight": ("a", False),
    ".lora_B.weight": ("b", False),
    ".lora_embedding_A": ("a", True),
    ".lora_embedding_B": ("b", True),
}


@dataclass
class _Delta:
    """One adapted layer: its weight changes by (B @ A) * scaling, transposed where the layer stores W^T."""

    a: str = ""
    b: str = ""
    transpose: bool = False
    scaling: float = 0.0


def _check_lora_config(where: str, cfg: dict[str, Any]) -> None:
    if cfg.get("peft_type", "LORA") != "LORA":
        raise T3SError(f"{where}: a {cfg['peft_type']} adapter; RRT handles LoRA adapters only")
    for key, value in sorted(cfg.items()):
        if key not in _HANDLED_KEYS and value:
            raise T3SError(
                f"{where}: adapter_config.json sets {key}={value!r}; RRT handles plain LoRA adapters only "
                "(merge the adapter into a full checkpoint first)"
            )
    if cfg.get("init_lora_weights", True) not in _PLAIN_INITS:
        raise T3SError(
            f"{where}: init_lora_weights={cfg['init_lora_weights']!r} changes θ0's weights as well; "
            "RRT needs an adapter over θ0 itself"
        )
    if cfg.get("bias", "none") != "none":
        raise T3SError(f"{where}: bias={cfg['bias']!r} trains θ0's biases; RRT handles bias: none only")


def _base_name(where: str, key: str, name: str, base: dict[str, list[int]]) -> str:
    """θ0's tensor for an adapter tensor: the same name, else the one name that differs by a prefix."""
    if name in base:
        return name
    hits = [n for n in base if n.endswith("." + name) or name.endswith("." + n)]
    if len(hits) != 1:
        what = "no tensor" if not hits else f"several tensors ({', '.join(hits[:3])})"
        raise T3SError(f"{where}: adapter tensor {key} ({name}) matches {what} of θ0")
    return hits[0]


def _alpha(cfg: dict[str, Any], module: str) -> float:
    """lora_alpha of one layer; alpha_pattern keys match a name's tail, as PEFT's get_pattern_key does."""
    for pattern, alpha in (cfg.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return float(alpha)
    return float(cfg["lora_alpha"])


def _plan_adapter(
    where: str, cfg: dict[str, Any], shapes: dict[str, list[int]], base: dict[str, list[int]]
) -> tuple[dict[str, _Delta], dict[str, str]]:
    """Map an adapter's tensors onto θ0's: low-rank deltas and whole tensors, both by θ0 tensor name.

    Refuses unsupported adapters and any tensor that fits no tensor of θ0, before anything is written.
    """
    _check_lora_config(where, cfg)
    layers: dict[str, _Delta] = {}
    whole: dict[str, str] = {}
    for key in sorted(shapes):
        name = key.removeprefix(_PEFT_PREFIX)
        suffix = next((s for s in _LOW_RANK if name.endswith(s)), None)
        if suffix is not None:
            matrix, embedding = _LOW_RANK[suffix]
            layer = layers.setdefault(name.removesuffix(suffix), _Delta())
            setattr(layer, matrix, key)
            layer.transpose = embedding or bool(cfg.get("fan_in_fan_out"))
            continue
        if re.search(r"(^|\.)(lora_\w+|modules_to_save|original_module)(\.|$)", name):
            raise T3SError(f"{where}: adapter tensor {key} is of a kind RRT does not handle")
        # A tensor saved whole (modules_to_save; an adapted embedding's own weight) replaces θ0's.
        target = _base_name(where, key, name.replace(".base_layer.", "."), base)
        if shapes[key] != base[target]:
            raise T3SError(
                f"{where}: adapter tensor {key} has shape {shapes[key]}, θ0's {target} {base[target]}"
            )
        whole[target] = key
    deltas: dict[str, _Delta] = {}
    for module, layer in layers.items():
        if not (layer.a and layer.b):
            raise T3SError(f"{where}: layer {module} has only one of its LoRA matrices A and B")
        rank = shapes[layer.a][0]
        shape = [shapes[layer.b][0], shapes[layer.a][1]]
        target = _base_name(where, layer.a, module + ".weight", base)
        if (shape[::-1] if layer.transpose else shape) != base[target]:
            raise T3SError(f"{where}: layer {module}: B @ A has shape {shape}, θ0's {target} {base[target]}")
        layer.scaling = _alpha(cfg, module) / (math.sqrt(rank) if cfg.get("use_rslora") else rank)
        deltas[target] = layer
    return deltas, whole


class _Adapter:
    """A LoRA adapter over θ0, read lazily: θ = (the tensor it saves whole, else θ0's) + its delta."""

    def __init__(self, path: Path, base: dict[str, list[int]]) -> None:
        weights = path / "adapter_model.safetensors"
        if not weights.exists():
            raise T3SError(f"{path}: no adapter_model.safetensors")
        cfg = json.loads((path / "adapter_config.json").read_text())
        self._fh = safe_open(weights, "pt")
        names = self._fh.keys()  # a safe_open handle is not iterable itself
        shapes = {k: list(self._fh.get_slice(k).get_shape()) for k in names}
        self.deltas, self.whole = _plan_adapter(str(path), cfg, shapes, base)

    def value(self, name: str, base: torch.Tensor) -> torch.Tensor:
        value = (self._fh.get_tensor(self.whole[name]) if name in self.whole else base).float()
        layer = self.deltas.get(name)
        if layer is None:
            return value
        delta = self._fh.get_tensor(layer.b).float() @ self._fh.get_tensor(layer.a).float()
        return value + (delta.T if layer.transpose else delta) * layer.scaling


def _is_adapter(path: Path) -> bool:
    return (path / "adapter_config.json").exists()


def _planned_lora(
    model: Path, recipe: TrainRecipe, trust_remote_code: bool
) -> tuple[dict[str, Any], dict[str, list[int]]]:
    """The adapter config and tensor shapes the recipe's LoRA will save, from a weightless (meta) model."""
    from peft.utils import get_peft_model_state_dict
    from transformers import AutoConfig, AutoModelForCausalLM

    from t3s.training import prepare_model

    config = AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)
    # PEFT's warnings here would come again, and matter, when the probe builds the real model.
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peft_model = prepare_model(
            AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code), recipe
        )
        state = get_peft_model_state_dict(peft_model)
    return peft_model.peft_config["default"].to_dict(), {k: list(v.shape) for k, v in state.items()}


def check_rrt_inputs(model: str, recipe: TrainRecipe, *, trust_remote_code: bool = False) -> None:
    """Refuse, before any stage runs, a run whose RRT would fail once every policy has trained."""
    path = Path(model)
    if not path.is_dir():
        raise T3SError(f"rrt: model {model!r} is not a local checkpoint directory, whose shards RRT reads")
    base = _Reader(path).shapes()
    _config(path)
    if recipe.lora is not None:
        cfg, shapes = _planned_lora(path, recipe, trust_remote_code)
        _plan_adapter("rrt with recipe.lora", cfg, shapes, base)


def rrt(base: str | Path, bottleneck: str | Path, final: str | Path, out: str | Path) -> dict[str, Any]:
    """Write θ0 + (θf - θb) to `out`, refusing models of different architectures or shapes.

    θb and θf may be LoRA adapters over θ0; the output then has θ0's shard layout and files.
    """
    paths = {"base": Path(base), "bottleneck": Path(bottleneck), "final": Path(final)}
    base_reader = _Reader(paths["base"])
    base_shapes = base_reader.shapes()
    readers: dict[str, _Reader | _Adapter] = {"base": base_reader}
    for k in ("bottleneck", "final"):
        readers[k] = _Adapter(paths[k], base_shapes) if _is_adapter(paths[k]) else _Reader(paths[k])
    full = {k: r for k, r in readers.items() if isinstance(r, _Reader)}
    configs = {k: _config(paths[k]) for k in full}
    for key in _ARCH_KEYS:
        values = {k: c.get(key) for k, c in configs.items()}
        if len({json.dumps(v) for v in values.values()}) > 1:
            raise T3SError(f"RRT needs one architecture: {key} differs ({values})")
    names = {k: set(r.map) for k, r in full.items()}
    if len({frozenset(n) for n in names.values()}) > 1:
        union = set().union(*names.values())
        odd = sorted(union - set.intersection(*names.values()))[:3]
        raise T3SError(f"RRT needs the same tensors in all three models; these differ: {odd}")
    # The output follows θf's shard layout and files, or θ0's where θf is an adapter.
    layout = "final" if "final" in full else "base"
    shards: dict[str, list[str]] = {}
    for name, shard in full[layout].map.items():
        shards.setdefault(shard, []).append(name)
    with atomic_dir(out) as tmp:
        for shard, tensor_names in sorted(shards.items()):
            tensors = {}
            for name in sorted(tensor_names):
                shapes = {k: r.shape(name) for k, r in full.items()}
                if len({tuple(s) for s in shapes.values()}) > 1:
                    raise T3SError(f"RRT: tensor {name} has different shapes {shapes}")
                b = base_reader.get(name)
                f = readers["final"].value(name, b)
                value = b.float() + (f.float() - readers["bottleneck"].value(name, b).float())
                tensors[name] = value.to(f.dtype if layout == "final" else b.dtype).contiguous()
            save_file(tensors, tmp / shard, metadata={"format": "pt"})
        for f in paths[layout].iterdir():
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
        "tensors": len(full[layout].map),
    }


class RRTStage(Stage):
    """θ0 + (θf - θb) of the run's probe into RUN/train/rrt/model (written by the main process)."""

    name = policy = "rrt"  # its model is RUN/train/rrt/model, beside the trained policies'

    def __init__(self) -> None:
        self.paths: list[str] = []  # θ0, θb, θf

    def fingerprint(self, run: RunDir) -> str:
        record = run.bottleneck()
        self.paths = [run.base_model(), run.resolve(record["bottleneck"]), run.resolve(record["final"])]
        return digest([model_fingerprint(p) for p in self.paths])

    def outputs_exist(self, run: RunDir) -> bool:
        return run.model_dir(self.policy).exists()

    def run(self, run: RunDir, attempt: Attempt) -> dict[str, Any]:
        return {"summary": rrt(*self.paths, run.model_dir(self.policy))} if attempt.main else {}
