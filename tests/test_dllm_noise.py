"""Noise draws on real tokens: prompt never noised, union mask m ∨ 1_B exact per draw, seeded draws;
target sets; the selector/student tokenizer check."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import tokenizers.normalizers
import torch

from conftest import arithmetic_rows, write_jsonl
from t3s.data import load_corpus
from t3s.dllm.noise import draw, generator, loss_count
from t3s.dllm.targets import check_shared_tokenizer, random_targets, yet_to_learn
from t3s.dllm.training import DiffusionCollator, DiffusionSettings, diffusion_dataset, noise_batch
from t3s.errors import T3SError
from t3s.masks import IGNORE
from t3s.tokens import TokenizeConfig, tokenize_corpus

MASK = 49152  # the id A2D gives SmolLM2's mask token


@pytest.fixture(scope="module")
def items(tokenizer, tmp_path_factory):
    path = write_jsonl(tmp_path_factory.mktemp("c") / "c.jsonl", arithmetic_rows(6))
    return tokenize_corpus(tokenizer, load_corpus(path), TokenizeConfig())[0]


def collate(tokenizer, items, settings: DiffusionSettings, targets=None) -> dict[str, torch.Tensor]:
    data = diffusion_dataset(items, targets)
    return DiffusionCollator(settings, tokenizer.pad_token_id, tokenizer.eos_token_id)(list(data))


def some_targets(items) -> list[np.ndarray]:
    """Every third position, prompt included: B's prompt positions must be ignored."""
    return [(np.arange(len(t.input_ids)) % 3 == 0).astype(np.int8) for t in items]


@pytest.mark.parametrize("objective", ["mdm", "block"])
def test_union_mask_is_m_or_b_exactly_per_draw_and_the_prompt_is_never_noised(
    tokenizer, items, objective
) -> None:
    settings = DiffusionSettings(objective=objective, block_size=4, t_min=0.1, t_max=0.9)
    empty, union = (
        collate(tokenizer, items, settings),
        collate(tokenizer, items, settings, some_targets(items)),
    )
    for seed in range(5):
        for batch in (empty, union):
            noise_batch(batch, settings, MASK, seed)
        m, m_union = empty["labels"] != IGNORE, union["labels"] != IGNORE
        b = union["target_mask"] & union["maskable"]
        assert torch.equal(m_union, m | b)  # exactly m ∨ 1_B, with the same draw of m
        assert b.any() and (m_union & ~m).any()  # B adds tokens the draw left visible
        for t, row in zip(items, range(len(items)), strict=True):
            noisy = union["noisy_ids"][row]
            assert noisy[: t.response_start].tolist() == t.input_ids[: t.response_start]  # prompt untouched
            assert not m_union[row, : t.response_start].any()
            assert (noisy[m_union[row]] == MASK).all()
            assert torch.equal(noisy[~m_union[row]], union["input_ids"][row][~m_union[row]])
            assert torch.equal(union["labels"][row][m_union[row]], union["input_ids"][row][m_union[row]])


def test_b_empty_draws_exactly_the_sft_draw(tokenizer, items) -> None:
    settings = DiffusionSettings()
    zeros = [np.zeros(len(t.input_ids), dtype=np.int8) for t in items]
    a, b = collate(tokenizer, items, settings), collate(tokenizer, items, settings, zeros)
    assert noise_batch(a, settings, MASK, 7) == noise_batch(b, settings, MASK, 7)
    for key in ("noisy_ids", "labels", "weights"):
        assert torch.equal(a[key], b[key])


def test_t_per_sequence_or_per_block_and_masking_rate(tokenizer, items) -> None:
    ids = torch.tensor([[0, 0, 1, 1, 2, 2, 3, 3]] * 400)
    input_ids = torch.arange(8).expand(400, 8)
    maskable = ids > 0
    none = torch.zeros_like(maskable)
    common = {"mask_token_id": MASK, "t_min": 0.2, "t_max": 0.6, "weighting": "1/t"}
    mdm = draw(input_ids, maskable, none, ids, per_block=False, gen=generator(0), **common)
    assert (mdm.t == mdm.t[:, :1]).all() and mdm.t.min() >= 0.2 and mdm.t.max() <= 0.6
    bd = draw(input_ids, maskable, none, ids, per_block=True, gen=generator(0), **common)
    assert (bd.t[:, 2] == bd.t[:, 3]).all() and (bd.t[:, 2] != bd.t[:, 4]).any()
    for noise in (mdm, bd):
        assert not noise.masked[:, :2].any()
        # Masked with probability t: the observed rate matches the mean t of the maskable positions.
        assert noise.masked[maskable].float().mean().item() == pytest.approx(
            noise.t[maskable].mean().item(), abs=0.02
        )
        torch.testing.assert_close(noise.weights[noise.masked], 1 / noise.t[noise.masked])
        assert (noise.weights[~noise.masked] == 0).all()
        assert loss_count(noise, maskable, "1/t") == maskable.sum()  # LLaDA: divided by the answer length
        assert loss_count(noise, maskable, "uniform") == noise.masked.sum()
    again = draw(input_ids, maskable, none, ids, per_block=False, gen=generator(0), **common)
    other = draw(input_ids, maskable, none, ids, per_block=False, gen=generator(1), **common)
    assert torch.equal(again.masked, mdm.masked) and not torch.equal(other.masked, mdm.masked)


def test_eos_padding_is_noised_and_completes_the_last_block(tokenizer, items) -> None:
    batch = collate(tokenizer, items[:2], DiffusionSettings(objective="block", block_size=8))
    row_lengths = [len(t.input_ids) for t in items[:2]]
    width = batch["input_ids"].shape[1]
    assert width == max(
        t.response_start + -(-(t.response_end - t.response_start) // 8) * 8 for t in items[:2]
    )
    for row, t in enumerate(items[:2]):
        assert batch["maskable"][row, t.response_start :].all() and batch["valid"][row].all()
        assert (batch["input_ids"][row, len(t.input_ids) :] == tokenizer.eos_token_id).all()
    plain = collate(tokenizer, items[:2], DiffusionSettings(pad_with_eos=False))
    short = min(row_lengths)
    row = row_lengths.index(short)
    assert not plain["maskable"][row, short:].any() and not plain["valid"][row, short:].any()


def test_yet_to_learn_and_random_targets() -> None:
    delta = np.array([np.nan, -0.3, -0.2, -0.21, 0.5, -1.0])
    response = np.array([False, True, True, True, True, True])
    assert yet_to_learn(delta, response).tolist() == [False, True, False, True, False, True]
    assert yet_to_learn(delta, response, tau=0.0).sum() == 4
    responses = [response, np.array([False, True, True])]
    drawn = random_targets(responses, 3, seed=1)
    assert sum(int(d.sum()) for d in drawn) == 3
    assert all(not (d & ~r).any() for d, r in zip(drawn, responses, strict=True))
    assert [d.tolist() for d in random_targets(responses, 3, seed=1)] == [d.tolist() for d in drawn]
    with pytest.raises(
        T3SError, match="random target set of 8 tokens exceeds the corpus's 7 response tokens"
    ):
        random_targets(responses, 8)


def test_tokenizers_are_compared_by_content_not_by_name(tokenizer) -> None:
    student = copy.deepcopy(tokenizer)
    student.add_special_tokens({"mask_token": "<|mdm_mask|>"})
    check_shared_tokenizer(tokenizer, student)  # the A2D mask token is allowed
    renamed = copy.deepcopy(tokenizer)
    renamed.add_tokens(["dLLMword"])  # same name, another vocabulary
    assert renamed.name_or_path == tokenizer.name_or_path
    with pytest.raises(
        T3SError, match="the dLLM student adds non-special tokens the selector lacks: dLLMword"
    ):
        check_shared_tokenizer(tokenizer, renamed)
    other = copy.deepcopy(tokenizer)
    other.backend_tokenizer.normalizer = tokenizers.normalizers.Lowercase()
    with pytest.raises(
        T3SError, match=r"selector: its tokenizer differs from the dLLM student's \(normalizer\)"
    ):
        check_shared_tokenizer(tokenizer, other)


@pytest.mark.parametrize("module", ["attention", "targets", "sampler"])
def test_dllm_doctests(module: str) -> None:
    import doctest
    import importlib

    result = doctest.testmod(
        importlib.import_module(f"t3s.dllm.{module}"), optionflags=doctest.NORMALIZE_WHITESPACE
    )
    assert result.attempted > 0 and result.failed == 0
