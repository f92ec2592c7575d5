"""dLLM training inside HF Trainer: the logged loss equals a hand computation, B = ∅ is dLLM SFT, resume."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import TrainerCallback

from conftest import arithmetic_rows, build_tiny_model, write_jsonl
from t3s.data import load_corpus
from t3s.dllm.a2d import convert_checkpoint, load_dllm
from t3s.dllm.attention import block_diffusion_mask_reference
from t3s.dllm.training import DiffusionSettings, build_diffusion_trainer, diffusion_dataset
from t3s.models import load_tokenizer
from t3s.tokens import TokenizeConfig, tokenize_corpus
from t3s.training import TrainRecipe, list_checkpoints


@pytest.fixture(scope="module")
def dllm_dir(tokenizer, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dllm")
    out = root / "a2d"
    convert_checkpoint(str(build_tiny_model(tokenizer, root / "ar")), out)
    return out


@pytest.fixture(scope="module")
def items(tokenizer, tmp_path_factory):
    rows = arithmetic_rows(4)
    for i, r in enumerate(rows):
        r["response"] += " Done." * (3 * i)  # unequal lengths: padding and per-micro-batch counts differ
    path = write_jsonl(tmp_path_factory.mktemp("c") / "c.jsonl", rows)
    return tokenize_corpus(tokenizer, load_corpus(path), TokenizeConfig())[0]


@pytest.fixture(scope="module")
def student(dllm_dir):
    """The A2D student and its tokenizer, loaded once; each trainer gets its own copy of the model."""
    return load_dllm(str(dllm_dir), device=torch.device("cpu")), load_tokenizer(str(dllm_dir))


def trainer_for(student, items, out: Path, settings: DiffusionSettings, targets=None, save=None, **recipe):
    r = {"steps": 1, "batch_size": 4, "micro_batch_size": 2, "lr": 1e-2, "seed": 0, "optim": "sgd", **recipe}
    model, tokenizer = student
    model = copy.deepcopy(model).train()
    dataset = diffusion_dataset(items, targets)
    return build_diffusion_trainer(
        model, tokenizer, dataset, TrainRecipe(**r), settings, out, save_steps=save
    )


def recorded(trainer) -> list[dict]:
    """Every micro-batch the trainer draws, as it enters the loss."""
    seen: list[dict] = []
    original = trainer.get_batch_samples

    def spy(*args, **kwargs):
        samples, count = original(*args, **kwargs)
        seen.extend(copy.deepcopy(samples))
        return samples, count

    trainer.get_batch_samples = spy
    return seen


def hand_loss(model, batches: list[dict], settings: DiffusionSettings, mask_id: int) -> float:
    """Σ over masked response tokens of w · −log p(token | x_t) / the step's count, one position at a time."""
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            noisy, clean, valid = batch["noisy_ids"], batch["input_ids"], batch["valid"]
            n = noisy.shape[1]
            for row in range(noisy.shape[0]):
                keep = valid[row]
                if settings.objective == "block":
                    ids = torch.cat([noisy[row], clean[row]])[None]
                    ref = block_diffusion_mask_reference(batch["block_ids"][row].tolist(), keep.tolist())
                    mask = torch.tensor(ref)[None, None]
                    pos = torch.cat([torch.arange(n), torch.arange(n)])[None]
                    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[0, :n]
                else:  # a bidirectional model with a 2D padding mask: transformers builds the mask itself
                    logits = model(input_ids=noisy[row : row + 1], attention_mask=keep[None].long()).logits[0]
                logp = logits.float().log_softmax(-1)
                for i in range(n):
                    if noisy[row, i] == mask_id and batch["maskable"][row, i]:
                        w = 1.0 if settings.weighting == "uniform" else 1.0 / batch["t"][row, i].item()
                        total -= w * logp[i, clean[row, i]].item()
                        count += settings.weighting == "uniform"
                count += int(batch["maskable"][row].sum()) if settings.weighting == "1/t" else 0
    return total / count


@pytest.mark.parametrize(
    "settings",
    [
        DiffusionSettings(weighting="uniform", pad_with_eos=False),
        DiffusionSettings(weighting="1/t", t_min=0.001, t_max=1.0),
        DiffusionSettings(objective="block", block_size=4, weighting="uniform"),
        DiffusionSettings(objective="block", block_size=4, weighting="1/t", pad_with_eos=False),
    ],
    ids=["mdm-uniform", "mdm-1/t", "block-uniform", "block-1/t"],
)
def test_logged_loss_equals_a_hand_computation(student, items, tmp_path, settings) -> None:
    trainer = trainer_for(student, items, tmp_path, settings)
    batches = recorded(trainer)
    trainer.train()
    assert len(batches) == 2  # two micro-batches, normalised by the count of both
    logged = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    assert logged[0] == pytest.approx(
        hand_loss(student[0], batches, settings, trainer.mask_token_id), rel=1e-4
    )


def weights_after(trainer) -> dict[str, torch.Tensor]:
    trainer.train()
    return {k: v.detach().clone() for k, v in trainer.model.named_parameters()}


def test_empty_target_set_is_dllm_sft_with_the_same_seed(student, items, tmp_path) -> None:
    settings = DiffusionSettings()
    sft = weights_after(trainer_for(student, items, tmp_path / "sft", settings, steps=2))
    empty = [np.zeros(len(t.input_ids), dtype=np.int8) for t in items]
    union = weights_after(trainer_for(student, items, tmp_path / "empty", settings, empty, steps=2))
    for k in sft:
        assert torch.equal(sft[k], union[k]), k
    some = [np.isin(np.arange(len(t.input_ids)), [t.response_start + 1]).astype(np.int8) for t in items]
    targeted = weights_after(trainer_for(student, items, tmp_path / "b", settings, some, steps=2))
    assert any(not torch.equal(sft[k], targeted[k]) for k in sft)


class Kill(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 3:
            raise KeyboardInterrupt


def test_killed_dllm_training_resumes_to_the_same_weights(student, items, tmp_path) -> None:
    settings = DiffusionSettings(objective="block", block_size=4)
    kwargs = {"steps": 4, "batch_size": 2, "micro_batch_size": 1, "save": 2}
    straight = weights_after(trainer_for(student, items, tmp_path / "a", settings, **kwargs))
    killed = trainer_for(student, items, tmp_path / "b", settings, **kwargs)
    killed.add_callback(Kill())
    with pytest.raises(KeyboardInterrupt):
        killed.train()
    last = list_checkpoints(tmp_path / "b", resumable=True)[-1]
    assert last.name == "checkpoint-2"
    resumed = trainer_for(student, items, tmp_path / "b", settings, **kwargs)
    resumed.train(resume_from_checkpoint=str(last))
    got = {k: v.detach().clone() for k, v in resumed.model.named_parameters()}
    for k in straight:
        torch.testing.assert_close(got[k], straight[k], rtol=0, atol=0)
