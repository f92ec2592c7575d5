"""Loading models and tokenizers: device and dtype choice, safetensors only, no remote code by default."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from t3s.errors import T3SError


def resolve_device(device: str | None = None) -> torch.device:
    """`auto` (or None) picks CUDA when present, else the CPU; anything else is taken as given."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise T3SError(f"unknown device {device!r} ({exc})") from exc


def resolve_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    """bf16 on GPUs that support it; float32 on CPUs (bf16 matmuls are ~500x slower there)."""
    if dtype in (None, "auto"):
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if dtype not in table:
        raise T3SError(f"unknown dtype {dtype!r}; use one of auto, {', '.join(table)}")
    return table[dtype]


def configure_cpu_threads() -> None:
    """Use the cores this process may run on (not the machine's count), once per process."""
    if torch.get_num_threads() != (n := len(os.sched_getaffinity(0))) and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(n)


def _check_model_path(path: str) -> None:
    p = Path(path)
    looks_local = p.is_absolute() or path.startswith((".", "~")) or p.exists() or path.count("/") > 1
    if looks_local and not p.is_dir():
        raise T3SError(f"model {path!r}: no such directory")
    if p.is_dir() and not ((p / "config.json").exists() or (p / "adapter_config.json").exists()):
        raise T3SError(
            f"model {path!r}: not a transformers checkpoint (no config.json or adapter_config.json)"
        )


def load_tokenizer(path: str, *, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    _check_model_path(path)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise T3SError(f"model {path!r}: cannot load its tokenizer ({str(exc).splitlines()[0]})") from exc
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    path: str,
    *,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
    trust_remote_code: bool = False,
) -> Any:
    """Load a causal LM (a PEFT adapter directory is merged into its base) in eval mode."""
    from transformers import AutoModelForCausalLM

    _check_model_path(path)
    device = device or resolve_device()
    dtype = dtype or resolve_dtype(None, device)
    if device.type == "cpu":
        configure_cpu_threads()
    try:
        if (Path(path) / "adapter_config.json").exists():
            from peft import AutoPeftModelForCausalLM

            model = AutoPeftModelForCausalLM.from_pretrained(
                path, dtype=dtype, trust_remote_code=trust_remote_code
            ).merge_and_unload()
        else:
            model = AutoModelForCausalLM.from_pretrained(
                path, dtype=dtype, trust_remote_code=trust_remote_code, use_safetensors=True
            )
    except (OSError, ValueError) as exc:
        raise T3SError(f"model {path!r}: cannot load ({str(exc).splitlines()[0]})") from exc
    return model.to(device).eval()
