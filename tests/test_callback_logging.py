"""T3SCallback measures each probe step whatever the trainer's logging settings, and a probe step
whose log something suppresses stops training with an error instead of a missing row."""

from pathlib import Path

import pytest
from transformers import TrainerCallback

from conftest import arithmetic_rows, importable_module, write_jsonl
from t3s.errors import T3SError
from test_callback import CHECK_MODULE, metrics, trl_run


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("callback-logging")
    importable_module(root, "t3s_callback_check", CHECK_MODULE)
    rows = [{**r, "response": r["answer"][-1], "answer": r["answer"][-1]} for r in arithmetic_rows(8)]
    return write_jsonl(root / "c.jsonl", rows)


class SuppressLog(TrainerCallback):  # type: ignore[misc]
    """A user's callback that turns off the trainer's log at one step (after T3SCallback asked for it)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_log = False
        return control


def test_the_callback_measures_with_logging_turned_off(tiny_model, tokenizer, data, tmp_path) -> None:
    trainer = trl_run(tiny_model, tokenizer, data, tmp_path / "run", tmp_path / "out", logging_strategy="no")
    rows = metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == list(range(7))
    # The log the callback forces at each probe step is the one whose loss the row records.
    logged = {r["step"]: r["loss"] for r in trainer.state.log_history if "loss" in r}
    assert sorted(logged) == list(range(1, 7))
    assert [r["train_loss"] for r in rows[1:]] == [logged[s] for s in range(1, 7)]


@pytest.mark.parametrize("step", [2, 6])  # 6: the last step, caught when training ends
def test_a_probe_step_the_trainer_does_not_log_is_an_error(
    tiny_model, tokenizer, data, tmp_path, step
) -> None:
    run = tmp_path / "run"
    with pytest.raises(T3SError, match=f"^T3SCallback: the trainer logged no loss at probe step {step}, so"):
        trl_run(tiny_model, tokenizer, data, run, tmp_path / "out", after=[SuppressLog(step)])
    assert [r["step"] for r in metrics(run)] == list(range(step))
    assert not (run / "probe" / "bottleneck.json").exists()
