"""Per-token log-probs must equal a slow reference at every position, whatever the batching."""

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import arithmetic_rows, write_jsonl
from t3s.confidence import batches_by_tokens, score, score_batch
from t3s.data import load_corpus
from t3s.models import load_model
from t3s.tokens import TokenizeConfig, tokenize_corpus


def reference(model, item) -> np.ndarray:
    """Slow and obvious: one sequence, full logits, log_softmax, gather the next token."""
    ids = torch.tensor([item.input_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    out = np.full(len(item.input_ids), np.nan, dtype=np.float32)
    for i in range(max(item.response_start, 1), item.response_end):
        out[i] = logp[i - 1, item.input_ids[i]].item()
    return out


@pytest.fixture(scope="module")
def items(tokenizer, tmp_path_factory):
    rows = arithmetic_rows(5) + arithmetic_rows(3, seed=3, messages=True)
    for i, r in enumerate(rows):
        r["id"] = f"x{i}"
        r["response"] = r["response"] + " Checked." * i  # different lengths -> padding in batches
    path = write_jsonl(tmp_path_factory.mktemp("c") / "c.jsonl", rows)
    examples = load_corpus(path)
    full, _ = tokenize_corpus(tokenizer, examples, TokenizeConfig())
    cut, _ = tokenize_corpus(tokenizer, examples, TokenizeConfig(max_length=60, overlong="truncate"))
    assert any(t.truncated for t in cut)
    return full + [t for t in cut if t.truncated]


@pytest.fixture(scope="module")
def model(tiny_model: Path):
    return load_model(str(tiny_model), device=torch.device("cpu"))


@pytest.mark.parametrize(("batch_tokens", "chunk"), [(10_000, 1024), (200, 7), (1, 1)])
def test_matches_reference_batched_padded_truncated(model, items, batch_tokens: int, chunk: int) -> None:
    got = dict(score(model, items, max_batch_tokens=batch_tokens, chunk=chunk))
    assert sorted(got) == list(range(len(items)))
    for i, item in enumerate(items):
        ref = reference(model, item)
        assert got[i].shape == (len(item.input_ids),)
        np.testing.assert_array_equal(np.isnan(got[i]), np.isnan(ref))
        np.testing.assert_allclose(got[i], ref, atol=2e-5, equal_nan=True)
        assert np.isnan(got[i][: item.response_start]).all()
        assert not np.isnan(got[i][item.response_start : item.response_end]).any()


def test_output_layer_sees_at_most_chunk_rows(model, items, monkeypatch) -> None:
    import t3s.confidence

    seen: list[int] = []
    real = t3s.confidence._finish_logits
    monkeypatch.setattr(
        t3s.confidence, "_finish_logits", lambda m, logits: seen.append(logits.shape[0]) or real(m, logits)
    )
    score_batch(model, items, chunk=16)
    assert seen and max(seen) <= 16
    assert sum(seen) == sum(t.response_end - max(t.response_start, 1) for t in items)


def test_batches_respect_token_budget() -> None:
    lengths = [5, 50, 7, 49, 3, 30]
    batches = batches_by_tokens(lengths, 100)
    assert sorted(i for b in batches for i in b) == list(range(6))
    for b in batches:
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 100
