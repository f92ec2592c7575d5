"""Loss normalisation: the mean over kept tokens of the whole global batch, whatever the split."""

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import arithmetic_rows, write_jsonl
from t3s.data import load_corpus
from t3s.errors import T3SError
from t3s.masks import IGNORE, labels_for
from t3s.models import load_model
from t3s.tokens import TokenizeConfig, TokenizedExample, tokenize_corpus
from t3s.training import TrainRecipe, build_trainer, sft_dataset


def train(model_dir: Path, tokenizer, items, labels, out: Path, **recipe) -> dict[str, torch.Tensor]:
    model = load_model(str(model_dir), device=torch.device("cpu"))
    model.train()
    r = TrainRecipe(steps=2, lr=1e-2, seed=0, optim="sgd", **recipe)
    trainer = build_trainer(model, tokenizer, sft_dataset(items, labels), r, out)
    trainer.train()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def items(tokenizer, tmp_path_factory):
    rows = arithmetic_rows(4)
    for i, r in enumerate(rows):
        r["response"] += " Done." * (3 * i)  # very different supervised-token counts per example
    path = write_jsonl(tmp_path_factory.mktemp("c") / "c.jsonl", rows)
    return tokenize_corpus(tokenizer, load_corpus(path), TokenizeConfig())[0]


def assert_same(a: dict, b: dict) -> None:
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_gradient_accumulation_equals_one_big_batch(tiny_model, tokenizer, items, tmp_path: Path) -> None:
    labels = [labels_for(t) for t in items]
    big = train(tiny_model, tokenizer, items, labels, tmp_path / "a", batch_size=4, micro_batch_size=4)
    accumulated = train(
        tiny_model, tokenizer, items, labels, tmp_path / "b", batch_size=4, micro_batch_size=1
    )
    assert_same(big, accumulated)


def test_masked_tail_equals_training_on_the_cut_corpus(tiny_model, tokenizer, items, tmp_path: Path) -> None:
    # Masking the last k response tokens must train exactly like removing them: the masked positions
    # add nothing to the loss and do not count in its normaliser.
    keep, cut = [], []
    for t in items:
        k = 3 + (t.response_end - t.response_start) // 3
        mask = np.ones(len(t.input_ids), dtype=bool)
        mask[t.response_end - k : t.response_end] = False
        keep.append(labels_for(t, mask))
        cut.append(
            TokenizedExample(t.id, t.input_ids[: t.response_end - k], t.response_start, t.response_end - k)
        )
    masked = train(tiny_model, tokenizer, items, keep, tmp_path / "m", batch_size=4, micro_batch_size=2)
    shorter = train(
        tiny_model,
        tokenizer,
        cut,
        [labels_for(t) for t in cut],
        tmp_path / "c",
        batch_size=4,
        micro_batch_size=2,
    )
    assert_same(masked, shorter)


def test_labels_never_train_prompt_tokens(items) -> None:
    t = items[0]
    everything = np.ones(len(t.input_ids), dtype=bool)
    labels = labels_for(t, everything)
    assert labels[: t.response_start] == [IGNORE] * t.response_start
    assert labels[t.response_start :] == t.input_ids[t.response_start :]


def test_nothing_left_to_train_is_an_error(items) -> None:
    with pytest.raises(T3SError, match="every label is -100"):
        sft_dataset(items, [[IGNORE] * len(t.input_ids) for t in items])


def test_batch_must_split_into_micro_batches() -> None:
    with pytest.raises(ValueError, match="not a multiple of micro_batch_size"):
        TrainRecipe(batch_size=6, micro_batch_size=4)
