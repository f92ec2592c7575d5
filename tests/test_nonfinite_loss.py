"""A NaN loss stops training at its step, is recorded in log.jsonl, and leaves no model behind."""

import functools
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import t3s.models
from conftest import arithmetic_rows, write_jsonl
from t3s.data import load_corpus
from t3s.errors import T3SError
from t3s.masks import labels_for
from t3s.rundir import RunDir
from t3s.tokens import TokenizeConfig, tokenize_corpus
from t3s.train import train_policy
from t3s.training import TrainRecipe, build_trainer, log_history_rows, sft_dataset

BAD_STEP = 3


def tokenized(tokenizer, tmp_path: Path) -> list:
    corpus = load_corpus(write_jsonl(tmp_path / "c.jsonl", arithmetic_rows(4)))
    return tokenize_corpus(tokenizer, corpus, TokenizeConfig())[0]


def write_masks(run: Path, tokenizer, tmp_path: Path) -> None:
    items = tokenized(tokenizer, tmp_path)
    table = pa.table(
        {
            "id": [t.id for t in items],
            "input_ids": [t.input_ids for t in items],
            "response_start": [t.response_start for t in items],
            "response_end": [t.response_end for t in items],
            "labels": [labels_for(t) for t in items],
        }
    )
    (run / "masks" / "sft").mkdir(parents=True)
    pq.write_table(table, run / "masks" / "sft" / "data.parquet")


def nan_from_step(step: int, micro_per_step: int, load=t3s.models.load_model):
    """load_model whose model returns a NaN loss from the first micro-batch of optimizer step `step` on."""

    def load_model(*args, **kwargs):
        model = load(*args, **kwargs)
        forward, calls = model.forward, [0]

        @functools.wraps(forward)  # Trainer reads the signature to pick the columns to pass
        def poisoned(*a, **kw):
            out = forward(*a, **kw)
            calls[0] += 1
            if calls[0] > (step - 1) * micro_per_step:
                out.loss = out.loss * float("nan")
            return out

        model.forward = poisoned
        return model

    return load_model


def test_nan_loss_stops_the_run_and_is_logged(tiny_model, tokenizer, tmp_path: Path, monkeypatch) -> None:
    run = tmp_path / "run"
    write_masks(run, tokenizer, tmp_path)
    monkeypatch.setattr(t3s.models, "load_model", nan_from_step(BAD_STEP, micro_per_step=2))
    recipe = TrainRecipe(steps=5, batch_size=2, micro_batch_size=1, lr=1e-3, seed=0)
    log = run / "train" / "sft" / "log.jsonl"
    expected = f"train sft: non-finite loss (nan) at step {BAD_STEP}; see {log}"
    with pytest.raises(T3SError) as err:
        train_policy(run, "sft", base=str(tiny_model), recipe=recipe, save_every=2)
    assert str(err.value) == expected

    rows = [json.loads(line) for line in log.read_text().splitlines()]  # strict JSON: no NaN token
    assert [r["step"] for r in rows] == list(range(1, BAD_STEP + 1))
    assert all(isinstance(r["loss"], float) and "nonfinite" not in r for r in rows[:-1])
    assert rows[-1]["loss"] is None and rows[-1]["nonfinite"]["loss"] == "nan"
    assert RunDir(run).stage("train:sft")["status"] == "failed"
    assert RunDir(run).stage("train:sft")["error"] == expected
    assert not (run / "train" / "sft" / "model").exists()


def test_any_trainer_stops_at_the_nan_step_before_saving_it(tiny_model, tokenizer, tmp_path: Path) -> None:
    # build_trainer also trains the probe: the stop lives there, so the probe never measures a NaN checkpoint.
    items = tokenized(tokenizer, tmp_path)
    model = nan_from_step(2, micro_per_step=1)(str(tiny_model))
    recipe = TrainRecipe(steps=4, batch_size=1, micro_batch_size=1, lr=1e-3, seed=0)
    out = tmp_path / "ckpt"
    trainer = build_trainer(model, tokenizer, sft_dataset(items), recipe, out, save_steps=1)
    with pytest.raises(T3SError, match=rf"^{out}: non-finite loss \(nan\) at step 2; training stopped$"):
        trainer.train()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]
    assert [(r["step"], r["loss"]) for r in log_history_rows(trainer)][1] == (2, None)


def test_a_step_with_every_token_masked_has_zero_loss_not_nan(tiny_model, tokenizer, tmp_path: Path) -> None:
    # Heavy selection leaves whole global batches without a kept token: nothing to learn, loss 0.
    from t3s.models import load_model

    items = tokenized(tokenizer, tmp_path)
    labels = [labels_for(t) for t in items[:1]] + [[-100] * len(t.input_ids) for t in items[1:]]
    recipe = TrainRecipe(steps=4, batch_size=1, micro_batch_size=1, lr=1e-3, seed=0)
    model = load_model(str(tiny_model))
    trainer = build_trainer(model, tokenizer, sft_dataset(items, labels), recipe, tmp_path / "out")
    trainer.train()
    losses = [r["loss"] for r in log_history_rows(trainer)]
    assert len(losses) == 4 and losses.count(0.0) == 3 and all(v > 0 for v in losses if v != 0.0)
    assert all(p.isfinite().all() for p in model.parameters())
