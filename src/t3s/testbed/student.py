"""The testbed's student: SmolLM2-135M-Instruct made competent in its own style by a shipped adapter.

Stage 0 (`python -m t3s.testbed.prepare`) trains a LoRA adapter that teaches the pretrained model
the task in its own answer style; the adapter ships in the package (assets/stage0, a few MB) and
is merged once into a plain safetensors checkpoint in the user's cache, which every stage then
loads like any other model. The dLLM student (`python -m t3s.testbed.dllm_prepare`) is the A2D
conversion of that checkpoint with a second adapter (assets/dllm-stage0), cached the same way.
"""

from __future__ import annotations

from pathlib import Path

from t3s.fingerprint import digest, model_fingerprint
from t3s.io import atomic_dir
from t3s.testbed.smollm2 import cache_root, smollm2_path

ASSETS = Path(__file__).parent / "assets"
STAGE0 = ASSETS / "stage0"
DLLM_STAGE0 = ASSETS / "dllm-stage0"


def merge_adapter(adapter: Path, out: Path, base: Path | None = None) -> None:
    """`adapter` merged into `base` (default: SmolLM2-135M-Instruct), saved with its tokenizer to `out`."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir = base or smollm2_path()
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    merged.save_pretrained(out)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out)


def student_path(adapter: Path = STAGE0, base: Path | None = None) -> Path:
    """The merged stage-0 student, built on first use (a few seconds) and cached; `base` is the
    model stage 0 trained the adapter on (default: SmolLM2-135M-Instruct)."""
    if not (adapter / "adapter_config.json").exists():
        raise FileNotFoundError(f"{adapter}: no stage-0 adapter; run `python -m t3s.testbed.prepare`")
    key = (
        model_fingerprint(adapter)
        if base is None
        else digest(model_fingerprint(adapter), model_fingerprint(base))
    )
    out = cache_root() / f"testbed-student-{key}"
    if not (out / "model.safetensors").exists():
        with atomic_dir(out) as tmp:
            merge_adapter(adapter, tmp, base)
    return out


def merge_dllm_adapter(base: Path, adapter: Path, out: Path) -> None:
    """The A2D conversion of the AR checkpoint `base` with the dLLM `adapter` merged in, saved to `out`."""
    import torch
    from peft import PeftModel

    from t3s.dllm.a2d import to_dllm
    from t3s.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(str(base))
    model, _ = to_dllm(load_model(str(base), device=torch.device("cpu"), dtype=torch.float32), tokenizer)
    # The adapter holds the mask token's whole embedding row, so the row's random init is overwritten.
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    merged.save_pretrained(out)
    tokenizer.save_pretrained(out)


def dllm_student_path(adapter: Path = DLLM_STAGE0, stage0: Path = STAGE0) -> Path:
    """The merged dLLM student (load it with `t3s.dllm.a2d.load_dllm`), built on first use and cached."""
    if not (adapter / "adapter_config.json").exists():
        raise FileNotFoundError(f"{adapter}: no dLLM adapter; run `python -m t3s.testbed.dllm_prepare`")
    out = (
        cache_root() / f"testbed-dllm-student-{digest(model_fingerprint(stage0), model_fingerprint(adapter))}"
    )
    if not (out / "model.safetensors").exists():
        with atomic_dir(out) as tmp:
            merge_dllm_adapter(student_path(stage0), adapter, tmp)
    return out
