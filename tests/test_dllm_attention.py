"""Block-diffusion attention masks against a slow reference, and A2D models that really attend both ways."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from t3s.dllm.a2d import is_bidirectional, load_dllm, make_bidirectional, to_dllm
from t3s.dllm.attention import (
    batch_block_ids,
    bidirectional_mask,
    block_causal_mask,
    block_diffusion_mask,
    block_diffusion_mask_reference,
    model_attention_mask,
)
from t3s.errors import T3SError


def tiny_llama(attn: str = "sdpa", vocab: int = 50, seed: int = 0) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    )  # fmt: skip
    config._attn_implementation = attn
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("block_size", [1, 2, 3, 32])
def test_block_diffusion_mask_equals_the_position_by_position_reference(block_size: int) -> None:
    starts = torch.tensor([3, 5, 1])
    ids = batch_block_ids(9, starts, block_size)
    valid = torch.ones(3, 9, dtype=torch.bool)
    valid[1, 7:] = False  # right padding that is not attended
    fast = block_diffusion_mask(ids, valid)
    assert fast.shape == (3, 1, 18, 18)
    for b in range(3):
        assert fast[b, 0].tolist() == block_diffusion_mask_reference(ids[b].tolist(), valid[b].tolist())


def test_block_diffusion_mask_by_hand() -> None:
    # prompt [p], response blocks [r1 r2] [r3]: block ids 0 1 1 2
    ids, valid = torch.tensor([[0, 1, 1, 2]]), torch.ones(1, 4, dtype=torch.bool)
    m = block_diffusion_mask(ids, valid)[0, 0].int().tolist()
    assert m == [
        # noisy p r1 r2 r3 | clean p r1 r2 r3
        [1, 0, 0, 0, 0, 0, 0, 0],  # noisy prompt: itself only (it is never noised, never in the loss)
        [0, 1, 1, 0, 1, 0, 0, 0],  # noisy block 1: itself, clean prompt
        [0, 1, 1, 0, 1, 0, 0, 0],
        [0, 0, 0, 1, 1, 1, 1, 0],  # noisy block 2: itself, clean prompt and block 1
        [0, 0, 0, 0, 1, 0, 0, 0],  # clean: block-causal, never the noisy half
        [0, 0, 0, 0, 1, 1, 1, 0],
        [0, 0, 0, 0, 1, 1, 1, 0],
        [0, 0, 0, 0, 1, 1, 1, 1],
    ]
    assert (
        block_diffusion_mask(ids, valid)[0, 0, 4:, 4:].tolist()
        == block_causal_mask(ids, valid)[0, 0].tolist()
    )


def test_noisy_block_logits_equal_decoding_that_block_after_its_clean_past() -> None:
    # Through a real model: the noisy block k of [x_t ⊕ x_0] sees exactly what the sampler shows it
    # when it decodes block k after the clean blocks before it (block-causal over the truncated sequence).
    model = make_bidirectional(tiny_llama())
    clean = torch.randint(0, 50, (1, 10), generator=torch.Generator().manual_seed(1))
    noisy = clean.clone()
    noisy[0, 4:] = 49
    ids = batch_block_ids(10, torch.tensor([2]), 3)  # prompt 2, blocks [2,5) [5,8) [8,10)
    valid = torch.ones(1, 10, dtype=torch.bool)
    pos = torch.arange(10)[None]
    with torch.no_grad():
        both = model(
            input_ids=torch.cat([noisy, clean], 1),
            attention_mask=block_diffusion_mask(ids, valid),
            position_ids=torch.cat([pos, pos], 1),
        ).logits[0, :10]
        for lo, hi in [(2, 5), (5, 8), (8, 10)]:
            seq = torch.cat([clean[:, :lo], noisy[:, lo:hi]], 1)
            alone = model(
                input_ids=seq,
                attention_mask=block_causal_mask(ids[:, :hi], valid[:, :hi]),
                position_ids=pos[:, :hi],
            ).logits[0, lo:hi]
            torch.testing.assert_close(both[lo:hi], alone, rtol=1e-4, atol=1e-5)


def _later_token_changes_position(model: LlamaForCausalLM, mask: torch.Tensor | None) -> bool:
    a = torch.tensor([[5, 6, 7, 8, 9, 10]])
    b = a.clone()
    b[0, 4] = 30  # a later token than position 1
    with torch.no_grad():
        la, lb = (model(input_ids=x, attention_mask=mask).logits[0, 1] for x in (a, b))
    return not torch.allclose(la, lb)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_a2d_model_attends_to_later_tokens(attn: str) -> None:
    model = tiny_llama(attn)
    full = bidirectional_mask(torch.ones(1, 6, dtype=torch.bool))
    assert not _later_token_changes_position(model, None)  # the AR model is causal
    # An explicit 4D mask is honoured even by a model whose modules still say is_causal.
    assert _later_token_changes_position(model, model_attention_mask(full, model))
    make_bidirectional(model)
    assert is_bidirectional(model)
    assert _later_token_changes_position(model, None)  # no mask at all: SDPA must not fall back to causal
    assert _later_token_changes_position(model, torch.ones(1, 6, dtype=torch.long))  # a 2D padding mask


def test_to_dllm_adds_a_mask_token_grows_embeddings_and_survives_a_reload(tokenizer, tmp_path) -> None:
    tok = type(tokenizer).from_pretrained(tokenizer.name_or_path)
    model = tiny_llama(vocab=len(tok))
    before = model.get_input_embeddings().weight.detach().clone()
    model, mask_id = to_dllm(model, tok)
    assert mask_id == len(tokenizer) and tok.mask_token_id == mask_id and tokenizer.mask_token_id is None
    weight = model.get_input_embeddings().weight
    assert weight.shape[0] == mask_id + 1
    torch.testing.assert_close(weight[:mask_id], before)  # the AR rows are untouched
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded = load_dllm(str(tmp_path), device=torch.device("cpu"))
    assert is_bidirectional(loaded) and _later_token_changes_position(loaded, None)
    assert type(tok).from_pretrained(tmp_path).mask_token_id == mask_id


def test_to_dllm_never_shrinks_a_padded_vocabulary(tokenizer) -> None:
    # Qwen's embedding matrix has spare rows past its tokenizer: the mask token takes an id, no row is cut.
    tok = type(tokenizer).from_pretrained(tokenizer.name_or_path)
    model, mask_id = to_dllm(tiny_llama(vocab=len(tok) + 64), tok)
    assert mask_id == len(tokenizer)
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer) + 64


def test_a_kernel_without_4d_masks_is_refused() -> None:
    model = tiny_llama()
    model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(T3SError, match="attention implementation 'flash_attention_2' takes no 4D mask"):
        model_attention_mask(torch.ones(1, 1, 2, 2, dtype=torch.bool), model)
