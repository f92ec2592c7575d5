"""The built-in testbed: task, styles, verifier, teachers, the GGUF conversion, and a miniature run."""

import json
import random
from pathlib import Path

import pytest
import torch

from t3s.testbed import teachers
from t3s.testbed.task import (
    STYLE_PREFIX,
    STYLES,
    TaskSpec,
    make_problems,
    parse_prompt,
    prompt,
    reverse,
    running,
    style_of,
    verify,
)


def test_styles_compute_the_sum_their_own_way() -> None:
    p = (59, 63, 15)
    assert running(p) == " 59 + 63 = 122. Then 122 + 15 = 137. Answer: 137"
    assert reverse(p) == " Step 1: 15 + 63 = 78. Step 2: 78 + 59 = 137. So the total is 137. #### 137"
    assert running((1, 2, 3, 4)).endswith("Then 6 + 4 = 10. Answer: 10")
    for name, fn in STYLES.items():
        text = fn(p)
        assert verify("137", text).correct, name
        assert style_of(text) == name
        assert text.startswith(STYLE_PREFIX[name])
    assert style_of(" Step 1: 59 + 63 = 122. Then 122 + 15 = 137.") == "reverse"
    assert style_of(" The answer is 137") == "other"


def test_verifier_takes_the_last_integer() -> None:
    assert verify("137", "59 + 63 = 122. Answer: 137").correct
    assert not verify("137", "Answer: 137. Then 12").correct
    assert verify("137", "no number here").extracted is None


def test_problems_are_distinct_seeded_and_exclusive() -> None:
    spec = TaskSpec(counts=(3, 4), low=10, high=99)
    a = make_problems(spec, 200, seed=1)
    assert a == make_problems(spec, 200, seed=1) and len(set(a)) == 200
    assert {len(p) for p in a} == {3, 4}
    b = make_problems(spec, 100, seed=2, exclude=set(a))
    assert not set(a) & set(b)
    assert all(parse_prompt(prompt(p)) == p for p in a)
    with pytest.raises(ValueError, match="cannot draw"):
        make_problems(TaskSpec(counts=(2,), low=1, high=2), 10, seed=0)


def test_python_teachers_write_their_style() -> None:
    rng = random.Random(0)
    assert teachers.reverse("Q: 59+63+15=?\nA:", sample=0, rng=rng) == reverse((59, 63, 15))
    messages = [{"role": "user", "content": "Q: 1+2+3=?\nA:"}]
    assert teachers.running(messages, sample=3, rng=rng) == running((1, 2, 3))


def test_gguf_conversion_is_exact(smollm2_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    from t3s.testbed.smollm2 import gguf_path

    g = gguf_path()
    quantized = AutoModelForCausalLM.from_pretrained(g.parent, gguf_file=g.name)
    converted = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    theirs, ours = quantized.state_dict(), converted.state_dict()
    assert theirs.keys() == ours.keys()
    for name, tensor in theirs.items():
        assert torch.equal(tensor, ours[name]), name
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    with torch.no_grad():
        assert torch.equal(quantized(ids).logits, converted(ids).logits)


def test_shipped_stage0_adapter_merges_into_a_student(tmp_path: Path, monkeypatch) -> None:
    from t3s.testbed.student import STAGE0, student_path

    monkeypatch.setenv("T3S_CACHE", str(tmp_path))
    record = json.loads((STAGE0 / "stage0.json").read_text())
    assert record["heldout_accuracy"] > 0.5
    assert (STAGE0 / "adapter_model.safetensors").stat().st_size < 20_000_000
    path = student_path()
    assert (path / "model.safetensors").exists() and (path / "tokenizer.json").exists()


def test_miniature_testbed_run_end_to_end(tiny_model: Path, tmp_path: Path) -> None:
    """The whole testbed chain on a tiny random student: every artifact and report section appears."""
    from t3s.testbed.runner import TestbedConfig, run_testbed
    from t3s.training import TrainRecipe

    recipe = TrainRecipe(steps=4, batch_size=4, micro_batch_size=4, lr=3e-3, warmup_steps=0)
    cfg = TestbedConfig(
        run_dir=tmp_path / "tb", student=str(tiny_model), train_problems=12, heldout_problems=8,
        curve_prompts=4, curve_heldout=4, eval_every=2, max_new_tokens=8, recipe=recipe,
    )  # fmt: skip
    result = run_testbed(cfg)
    models = result["aggregate"]["models"]
    assert set(models) == {"base", "sft", "t3s", "inverse", "rrt"}
    assert all(m["problems"] == 8 and 0 <= m["mean"] <= 1 for m in models.values())
    summary = json.loads((tmp_path / "tb" / "testbed" / "summary.json").read_text())
    assert [r["step"] for r in summary["curve"]] == [0, 2, 4]
    assert all("teacher_style_heldout" in r and "heldout_accuracy" in r for r in summary["curve"])
    gate = summary["gate"]
    assert gate["prefix"] == " Step 1:" and gate["problems"] == 8
    corpus = (tmp_path / "tb" / "teacher" / "reverse" / "corpus.jsonl").read_text().splitlines()
    assert len(corpus) == 12 and " Step 1:" in json.loads(corpus[0])["response"]
    html = (tmp_path / "tb" / "report" / "index.html").read_text()
    for title in ("Testbed: held-out results", "Testbed: Imitation Shock", "Testbed: competence gate"):
        assert title in html
    assert "http://" not in html and "https://" not in html  # opens offline
