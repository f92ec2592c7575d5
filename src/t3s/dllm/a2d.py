"""A2D: an AR checkpoint (Llama/Qwen family) made a bidirectional masked-diffusion student.

Three changes, none to the weights of the AR model: the tokenizer gets a mask token (SmolLM2 and
Qwen have none to spare), the embeddings grow to hold it when the vocabulary has no free row, and
attention becomes bidirectional. transformers' decoders build a causal mask unless
`config.is_causal` is False (then `masking_utils.create_bidirectional_mask`), and SDPA falls back to
its causal kernel whenever no mask is passed and the attention module's `is_causal` is True; both are
switched off. t3s's own dLLM code also always passes an explicit 4D mask (`t3s.dllm.attention`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from t3s.errors import T3SError

MASK_TOKEN = "<|mdm_mask|>"


def add_mask_token(tokenizer: Any, token: str = MASK_TOKEN) -> int:
    """The tokenizer's mask token id, adding `token` as its mask token when it has none."""
    if tokenizer.mask_token_id is None:
        tokenizer.add_special_tokens({"mask_token": token})
    return int(tokenizer.mask_token_id)


def mask_token_id(tokenizer: Any, where: str = "the dLLM's tokenizer") -> int:
    if tokenizer.mask_token_id is None:
        raise T3SError(
            f"{where} has no mask token; convert the AR checkpoint with t3s.dllm.a2d.to_dllm first"
        )
    return int(tokenizer.mask_token_id)


def _attention_modules(model: Any) -> list[Any]:
    return [m for m in model.modules() if hasattr(m, "is_causal") and type(m).__name__.endswith("Attention")]


def make_bidirectional(model: Any) -> Any:
    """Switch every attention layer of `model` to bidirectional attention (in place); returns it."""
    modules = _attention_modules(model)
    if not modules:
        raise T3SError(
            f"{type(model).__name__}: no attention module with an is_causal flag; "
            "A2D supports Llama/Qwen-family decoders"
        )
    model.config.is_causal = False
    for module in modules:
        module.is_causal = False
    return model


def is_bidirectional(model: Any) -> bool:
    return getattr(model.config, "is_causal", True) is False and not any(
        m.is_causal for m in _attention_modules(model)
    )


def to_dllm(model: Any, tokenizer: Any) -> tuple[Any, int]:
    """Convert an AR model and its tokenizer (both in place) into an A2D student; returns (model, mask id).

    The embedding matrix only grows (Qwen's is already larger than its tokenizer; shrinking it would
    cut real rows); a new row starts at the mean of the others (transformers' `mean_resizing`).
    """
    mask_id = add_mask_token(tokenizer)
    rows = model.get_input_embeddings().weight.shape[0]
    if mask_id >= rows:
        model.resize_token_embeddings(mask_id + 1, mean_resizing=True)
    model.config.mask_token_id = mask_id
    return make_bidirectional(model), mask_id


def convert_checkpoint(source: str, out: Path, *, dtype: torch.dtype = torch.float32) -> int:
    """Write the A2D conversion of the AR checkpoint `source` (weights and tokenizer) to `out`."""
    from t3s.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(source)
    model = load_model(source, device=torch.device("cpu"), dtype=dtype)
    model, mask_id = to_dllm(model, tokenizer)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return mask_id


def load_dllm(
    path: str,
    *,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
    trust_remote_code: bool = False,
) -> Any:
    """A saved dLLM, bidirectional again (transformers rebuilds an A2D student's attention causal);
    a checkpoint with its own modelling code (LLaDA, Dream) loads only with `trust_remote_code`."""
    from t3s.models import load_model

    return make_bidirectional(
        load_model(path, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    )
