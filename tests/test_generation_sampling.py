"""Sampled generation with transformers: each (prompt, sample) row draws from a stream of its own, so
an answer does not change with its batch (batch size, order, the other prompts), hence neither with
the number of processes sharing the prompts; and the draws follow the tempered, nucleus-cut softmax."""

from __future__ import annotations

import torch

from t3s.generation import SamplingParams, TransformersEngine, row_sampler
from t3s.models import load_model

TEXTS = ["What is 12 + 30?", "Add 7 and 8, then double it.", "Hi"]  # unequal lengths: left padding


def sample(model, tokenizer, prompts, params, batch_size):
    engine = TransformersEngine(model, tokenizer, batch_size=batch_size, progress=None, template="plain")
    return [[c.text for c in cs] for cs in engine.generate(prompts, params)]


def test_a_sampled_answer_is_the_same_alone_or_in_any_batch(tiny_model, tokenizer) -> None:
    model = load_model(str(tiny_model), device=torch.device("cpu"), dtype=torch.float32)
    prompts = [tokenizer(t)["input_ids"] for t in TEXTS]
    params = SamplingParams(n=2, temperature=1.0, top_p=0.95, max_new_tokens=10, seed=3)
    alone = [sample(model, tokenizer, [p], params, 1)[0] for p in prompts]
    together = sample(model, tokenizer, prompts[::-1], params, 3)[::-1]
    pairs = sample(model, tokenizer, prompts, params, 2)
    assert together == alone and pairs == alone
    assert any(a != b for a, b in alone)  # sample 0 and sample 1 of a prompt are different draws
    assert sample(model, tokenizer, prompts, params.model_copy(update={"seed": 4}), 3) != alone
    assert sample(model, tokenizer, prompts, params, 3) == alone  # and the same seed repeats


def test_the_draws_follow_the_tempered_nucleus_distribution() -> None:
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    rows = 20_000
    params = SamplingParams(n=rows, temperature=2.0, top_p=0.85, max_new_tokens=1, seed=0)
    processors = row_sampler([[1, 2, 3]], params, torch.device("cpu"))
    picks = processors(torch.zeros((rows, 1), dtype=torch.long), logits.repeat(rows, 1)).argmax(-1)
    freq = torch.bincount(picks, minlength=4).double() / rows
    tempered = torch.softmax(logits.double() / 2.0, -1)  # 0.38, 0.30, 0.21, 0.12 (rounded)
    # Top-p keeps the smallest set holding 0.85 of the tempered mass: the first three tokens (0.88).
    expected = torch.cat([tempered[:3] / tempered[:3].sum(), torch.zeros(1, dtype=torch.float64)])
    assert freq[3] == 0
    torch.testing.assert_close(freq, expected, atol=0.015, rtol=0)
