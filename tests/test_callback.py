"""T3SCallback in TRL's SFTTrainer leaves the run directory `t3s probe` leaves, and the chain continues."""

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from conftest import arithmetic_rows, importable_module, write_jsonl
from t3s.probe import ProbeEval, ProbeSettings
from t3s.tokens import TokenizeConfig
from t3s.training import TrainRecipe

# One-digit answers: within 6 steps the random tiny model learns to end its turn, so its accuracy
# moves (a truncated sample is wrong); the check's verdict depends on the characters it writes.
CHECK_MODULE = "def parity(gold, completion):\n    return sum(map(ord, completion)) % 2 == 0\n"
RECIPE = TrainRecipe(steps=6, batch_size=4, micro_batch_size=2, lr=1e-2, seed=7, mixed_precision="no")
SETTINGS = ProbeSettings(
    keep_steps=[2], eval=ProbeEval(max_new_tokens=6, prompts=4, verifier="t3s_callback_check:parity")
)
# Everything of a row but the wall time.
ROW_KEYS = ("step", "train_accuracy", "verifier_errors", "prompts", "samples", "truncated", "mean_tokens")


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "probe" / "metrics.jsonl").read_text().splitlines()]


def trl_run(tiny_model: Path, tokenizer, data: Path, run: Path, out: Path, *, after=(), **logging):
    """TRL's SFTTrainer on the corpus as t3s tokenizes it, with the recipe's arguments and the callback.

    `after`: callbacks added after T3SCallback; `logging`: SFTConfig's logging arguments (default: every step).
    """
    from trl import SFTConfig, SFTTrainer

    from t3s.callback import T3SCallback
    from t3s.data import load_corpus
    from t3s.models import load_model
    from t3s.tokens import tokenize_corpus
    from t3s.training import sft_dataset

    items, _ = tokenize_corpus(tokenizer, load_corpus(data), TokenizeConfig())
    trainer = SFTTrainer(
        model=load_model(str(tiny_model), device=torch.device("cpu")),
        processing_class=tokenizer,
        train_dataset=sft_dataset(items),
        args=SFTConfig(
            output_dir=str(out),
            max_steps=RECIPE.steps,
            per_device_train_batch_size=RECIPE.micro_batch_size,
            gradient_accumulation_steps=RECIPE.batch_size // RECIPE.micro_batch_size,
            learning_rate=RECIPE.lr,
            lr_scheduler_type=RECIPE.scheduler,
            adam_beta2=RECIPE.adam_beta2,
            optim=RECIPE.optim,
            seed=RECIPE.seed,
            max_length=None,
            use_cpu=True,
            bf16=False,
            report_to="none",
            save_strategy="no",
            gradient_checkpointing=False,
            **(logging or {"logging_steps": 1}),
        ),
    )
    trainer.add_callback(T3SCallback(run, trainer, data, SETTINGS))
    for callback in after:
        trainer.add_callback(callback)
    trainer.train()
    return trainer


@pytest.fixture(scope="module")
def runs(tiny_model: Path, tokenizer, tmp_path_factory) -> dict[str, Path]:
    from t3s import api

    root = tmp_path_factory.mktemp("callback")
    importable_module(root, "t3s_callback_check", CHECK_MODULE)
    rows = [{**r, "response": r["answer"][-1], "answer": r["answer"][-1]} for r in arithmetic_rows(8)]
    data = write_jsonl(root / "c.jsonl", rows)
    api.probe(
        root / "probe", str(tiny_model), data, recipe=RECIPE, settings=SETTINGS, tokenize=TokenizeConfig()
    )
    trainer = trl_run(tiny_model, tokenizer, data, root / "trl", root / "trl-out")
    logged = [r for r in trainer.state.log_history if "t3s/train_accuracy" in r]
    (root / "logged.json").write_text(json.dumps(logged))
    return {"probe": root / "probe", "trl": root / "trl", "logged": root / "logged.json"}


def test_trl_callback_leaves_the_probe_run_directory(runs: dict[str, Path]) -> None:
    ours, probe = metrics(runs["trl"]), metrics(runs["probe"])
    assert [[r[k] for k in ROW_KEYS] for r in ours] == [[r[k] for k in ROW_KEYS] for r in probe]
    assert [r["step"] for r in ours] == list(range(7))
    assert len({r["train_accuracy"] for r in ours}) > 1  # the check moves: θb is a real argmin
    for a, b in zip(ours, probe, strict=True):
        assert a["teacher_forced_loss"] == pytest.approx(b["teacher_forced_loss"], rel=1e-4)
        if a["step"] == 0:
            assert a["train_loss"] is None is b["train_loss"]
        else:
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
    record = {
        name: json.loads((runs[name] / "probe" / "bottleneck.json").read_text())
        for name in runs
        if name != "logged"
    }
    assert record["trl"] == record["probe"]
    assert set(record["trl"]["checkpoints"]) == {"step2", f"step{record['trl']['step']}", "step6"}
    manifest = {name: json.loads((runs[name] / "manifest.json").read_text()) for name in ("trl", "probe")}
    for key in ("recipe", "probe_settings", "probe", "fingerprints"):
        assert manifest["trl"][key] == manifest["probe"][key], key
    stages = {name: manifest[name]["stages"]["probe"] for name in manifest}
    assert stages["trl"]["status"] == "done"
    assert stages["trl"]["fingerprint"] == stages["probe"]["fingerprint"]
    assert stages["trl"]["model"] == stages["probe"]["model"]
    # Adam scales each step to ~lr whatever the gradient's size, so weights whose gradients are
    # near zero keep the float rounding of TRL's other padding: up to ~1e-3·lr apart.
    for rel in record["trl"]["checkpoints"].values():
        theirs, mine = (
            load_file(runs["probe"] / rel / "model.safetensors"),
            load_file(runs["trl"] / rel / "model.safetensors"),
        )
        for name, tensor in theirs.items():
            torch.testing.assert_close(mine[name], tensor, rtol=1e-4, atol=5e-5, msg=name)


def test_callback_logs_each_row_through_the_trainer(runs: dict[str, Path]) -> None:
    logged = json.loads(runs["logged"].read_text())
    rows = metrics(runs["trl"])
    assert [r["step"] for r in logged] == [r["step"] for r in rows]
    assert [r["t3s/train_accuracy"] for r in logged] == [r["train_accuracy"] for r in rows]
    assert [r["t3s/teacher_forced_loss"] for r in logged] == [r["teacher_forced_loss"] for r in rows]


def test_profile_and_select_continue_from_the_callback_run(runs: dict[str, Path]) -> None:
    from t3s.profile import profile_run
    from t3s.selection import SelectOptions, select_run

    for name in ("trl", "probe"):
        profile_run(runs[name], dtype="float32")
    delta = {
        name: pq.read_table(runs[name] / "profile" / "profile.parquet").column("delta").to_pylist()
        for name in ("trl", "probe")
    }
    for a, b in zip(delta["trl"], delta["probe"], strict=True):
        torch.testing.assert_close(torch.tensor(a), torch.tensor(b), rtol=1e-3, atol=1e-3, equal_nan=True)
    # θb is step 1 here, so every response token is an anchor (Δc > 0): `inverse` keeps them.
    stats = {name: select_run(runs[name], SelectOptions(policy="inverse")) for name in ("trl", "probe")}
    assert stats["trl"]["kept_tokens"] == stats["probe"]["kept_tokens"] > 0
    assert (runs["trl"] / "masks" / "inverse").is_dir()


def test_recipe_from_trainer_reads_the_arguments_and_lora(tiny_model: Path, tmp_path: Path) -> None:
    from types import SimpleNamespace

    from peft import IA3Config, LoraConfig, get_peft_model
    from transformers import TrainingArguments

    from t3s.callback import recipe_from_trainer
    from t3s.errors import T3SError
    from t3s.models import load_model
    from t3s.training import LoraSettings

    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=2, gradient_accumulation_steps=3,
        learning_rate=2e-5, warmup_steps=0.5, use_cpu=True, report_to="none",
    )  # fmt: skip
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], layers_to_transform=1)
    model = get_peft_model(load_model(str(tiny_model), device=torch.device("cpu")), lora)
    recipe = recipe_from_trainer(SimpleNamespace(args=args, model=model), steps=10)
    assert recipe.lora == LoraSettings(r=4, alpha=8, target_modules=["q_proj", "v_proj"], layers=[1])
    assert (recipe.steps, recipe.batch_size, recipe.micro_batch_size) == (10, 6, 2)
    assert (recipe.lr, recipe.warmup_steps, recipe.report_to) == (2e-5, 5, [])
    ia3 = IA3Config(target_modules=["q_proj"], feedforward_modules=[])
    other = get_peft_model(load_model(str(tiny_model), device=torch.device("cpu")), ia3)
    with pytest.raises(T3SError, match="the model's PEFT method IA3Config is not LoRA"):
        recipe_from_trainer(SimpleNamespace(args=args, model=other), steps=10)


def test_the_callback_refuses_the_adaptive_search() -> None:
    from t3s.callback import T3SCallback
    from t3s.errors import T3SError
    from t3s.probe import ProbeSettings

    with pytest.raises(T3SError, match="exhaustive grid only; use `t3s probe` for search: adaptive"):
        T3SCallback("unused", object(), [], ProbeSettings(search="adaptive"), tokenizer=object())
