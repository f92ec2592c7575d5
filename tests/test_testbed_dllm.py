"""The dLLM testbed student: `python -m t3s.testbed.dllm_prepare` end to end on a tiny model, its resume,
and the merged student built from the saved adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from conftest import build_tiny_model
from t3s.dllm.a2d import load_dllm, to_dllm
from t3s.dllm.attention import bidirectional_mask, model_attention_mask
from t3s.errors import T3SError
from t3s.models import load_model, load_tokenizer
from t3s.testbed.dllm_prepare import build_student, main, parse_args, train
from t3s.testbed.resume import SECONDS
from t3s.testbed.student import merge_dllm_adapter
from t3s.testbed.task import TaskSpec
from t3s.training import TrainRecipe, prepare_model

TINY = ["--problems", "16", "--batch-size", "4", "--eval", "4", "--eval-batch-size", "4",
        "--gen-length", "16", "--block-length", "8", "--denoise-steps", "4", "--save-steps", "1"]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_ar(tokenizer, tmp_path_factory) -> Path:
    return build_tiny_model(tokenizer, tmp_path_factory.mktemp("ar") / "model")


@pytest.fixture(scope="module")
def prepared(tiny_ar: Path, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("prep") / "dllm-stage0"
    return out, main(["--base", str(tiny_ar), "--steps", "2", *TINY, "--out", str(out)])


def test_dllm_prepare_trains_evaluates_and_saves_a_small_fp16_adapter(prepared, tokenizer) -> None:
    out, record = prepared
    mask_id = len(tokenizer)  # SmolLM2 has no spare row: the mask token is a new one
    assert json.loads((out / "dllm-stage0.json").read_text()) == json.loads(json.dumps(record))
    assert (record["steps_run"], record["resumed_from_step"], len(record["loss"])) == (2, 0, 2)
    assert record["mask_token_id"] == mask_id
    assert record["heldout_problems"] == 4 and 0 <= record["heldout_accuracy"] <= 1
    assert 1 <= record["mean_generated_tokens"] <= 16
    assert record["sampling"]["block_length"] == 8 and record["sampling"]["steps"] == 4
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["trainable_token_indices"] == [mask_id]
    assert config["layers_to_transform"] == [0, 1]  # --lora-layers all
    with safe_open(str(out / "adapter_model.safetensors"), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    assert {t.dtype for t in tensors.values()} == {torch.float16}
    # Only the mask row travels, not the resized embedding (49153 x 64 here, 49153 x 576 for SmolLM2).
    assert max(t.numel() for t in tensors.values()) < len(tokenizer)
    # The last checkpoint stays, so a larger --steps continues this run.
    assert [p.name for p in (out.parent / ".dllm-stage0-trainer").glob("checkpoint-*")] == ["checkpoint-2"]
    assert not (out / "README.md").exists()


def test_the_merged_dllm_student_computes_what_the_adapted_model_does(prepared, tiny_ar, tmp_path) -> None:
    from peft import PeftModel

    out, record = prepared
    merge_dllm_adapter(tiny_ar, out, tmp_path / "merged")
    merged = load_dllm(str(tmp_path / "merged"), device=torch.device("cpu"), dtype=torch.float32)
    tokenizer = load_tokenizer(str(tmp_path / "merged"))
    assert tokenizer.mask_token_id == record["mask_token_id"]
    converted, mask_id = to_dllm(load_model(str(tiny_ar), dtype=torch.float32), load_tokenizer(str(tiny_ar)))
    fresh_row = converted.get_input_embeddings().weight[mask_id].detach().clone()
    adapted = PeftModel.from_pretrained(converted, out).eval()
    ids = torch.tensor([tokenizer("Q: 12+34+40=?\nA: 12 + 34")["input_ids"] + [mask_id] * 6])
    mask = model_attention_mask(bidirectional_mask(torch.ones_like(ids, dtype=torch.bool)), merged)
    with torch.no_grad():
        want = adapted(input_ids=ids, attention_mask=mask).logits
        got = merged(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    row = merged.get_input_embeddings().weight[mask_id]
    with safe_open(str(out / "adapter_model.safetensors"), "pt") as f:
        (key,) = [k for k in f.keys() if "trainable_tokens" in k]  # noqa: SIM118
        assert torch.equal(row, f.get_tensor(key)[0].float())  # the trained row, not the mean init
    assert not torch.allclose(row, fresh_row)


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tiny_ar, tmp_path) -> None:
    spec = TaskSpec((3, 4), 10, 49)

    def run(steps: int, out: Path) -> tuple[dict[str, torch.Tensor], int, float]:
        args = parse_args(["--steps", str(steps), *TINY])
        model, tokenizer, _ = build_student(str(tiny_ar), args)
        _, resumed_from, seconds = train(model, tokenizer, args, spec, out)
        weights = {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}
        return weights, resumed_from, seconds

    whole, _, _ = run(3, tmp_path / "whole")
    _, started_at, first = run(2, tmp_path / "parted")  # leaves its step-2 checkpoint
    saved = json.loads((tmp_path / "parted" / "checkpoint-2" / SECONDS).read_text())["seconds"]
    resumed, resumed_from, total = run(3, tmp_path / "parted")
    assert (started_at, resumed_from) == (0, 2)
    assert 0 < saved <= first < total  # the resumed run counts the seconds spent before it
    assert whole.keys() == resumed.keys() and any("trainable_tokens" in k for k in whole)
    for name, value in whole.items():
        torch.testing.assert_close(resumed[name], value, atol=1e-6, rtol=1e-6, msg=name)
    with pytest.raises(T3SError, match="checkpoint-3: already at --steps 3; pass more steps to continue"):
        run(3, tmp_path / "parted")
    (tmp_path / "parted" / "checkpoint-3" / SECONDS).unlink()
    with pytest.raises(
        T3SError, match=f"checkpoint-3/{SECONDS}: missing, so the resumed run's training time"
    ):
        run(4, tmp_path / "parted")


def test_trainable_tokens_need_a_lora_recipe(tiny_ar) -> None:
    model = load_model(str(tiny_ar), dtype=torch.float32)
    with pytest.raises(T3SError, match="trainable_tokens needs a LoRA recipe"):
        prepare_model(model, TrainRecipe(), trainable_tokens=[3])


def test_dllm_student_path_builds_once_per_adapter(prepared, tiny_ar, tmp_path, monkeypatch) -> None:
    from t3s.testbed import student

    out, _ = prepared
    monkeypatch.setenv("T3S_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(student, "student_path", lambda stage0: tiny_ar)  # the stage-0 student, tiny
    with pytest.raises(FileNotFoundError, match="no dLLM adapter; run `python -m t3s.testbed.dllm_prepare`"):
        student.dllm_student_path(tmp_path / "none", student.STAGE0)
    built = student.dllm_student_path(out, student.STAGE0)
    assert built.parent == tmp_path / "cache" and built.name.startswith("testbed-dllm-student-")
    stamp = (built / "model.safetensors").stat().st_mtime_ns
    assert student.dllm_student_path(out, student.STAGE0) == built  # cached: not merged again
    assert (built / "model.safetensors").stat().st_mtime_ns == stamp
    assert load_tokenizer(str(built)).mask_token_id == len(load_tokenizer(str(tiny_ar)))
