"""A dLLM student inside the stages: select dllm-t3s / dllm-random, train the student, eval, report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from conftest import arithmetic_rows, build_tiny_model, write_jsonl
from t3s.config import RunConfig, load_config
from t3s.dllm.targets import yet_to_learn
from t3s.errors import T3SError
from t3s.masks import response_mask
from t3s.rundir import RunDir
from t3s.selection import SelectOptions

TAU = 0.05  # small enough that a 4-step probe of a random model leaves yet-to-learn tokens
POLICIES = [
    "sft",
    {"policy": "dllm-t3s", "tau": TAU},
    {"policy": "dllm-random", "match": "dllm-t3s", "tau": TAU},
]
EVAL = {"samples": 1, "temperature": 0.0, "top_p": 1.0, "max_new_tokens": 8, "batch_size": 8}


def a2d_student(tokenizer, root: Path, seed: int = 1) -> Path:
    """A tiny random Llama over SmolLM2's tokenizer, converted to a dLLM by `to_dllm`."""
    from t3s.dllm.a2d import to_dllm
    from t3s.models import load_model, load_tokenizer

    ar = build_tiny_model(tokenizer, root / "ar", seed=seed)
    tok = load_tokenizer(str(ar))  # its own copy: to_dllm adds the mask token in place
    model, _ = to_dllm(load_model(str(ar)), tok)
    model.save_pretrained(root / "dllm")
    tok.save_pretrained(root / "dllm")
    return root / "dllm"


def config(root: Path, selector: Path, student: Path, run: Path, **extra) -> dict:
    data = write_jsonl(root / "c.jsonl", arithmetic_rows(8))
    return {
        "run_dir": str(run),
        "model": str(selector),
        "data": str(data),
        "recipe": {"steps": 4, "batch_size": 4, "micro_batch_size": 4, "lr": 3e-3, "seed": 1},
        "probe": {"mode": "online", "eval": {"prompts": 4, "max_new_tokens": 4}},
        "policies": POLICIES,
        "save_every": 2,
        "student": {"kind": "dllm", "model": str(student), "sampling": {"block_length": 8}},
        **extra,
    }


@pytest.fixture(scope="module")
def student(tokenizer, tmp_path_factory) -> Path:
    return a2d_student(tokenizer, tmp_path_factory.mktemp("student"))


@pytest.fixture(scope="module")
def dllm_run(tiny_model: Path, student: Path, tmp_path_factory) -> tuple[RunDir, dict]:
    from t3s.pipeline import run_pipeline

    root = tmp_path_factory.mktemp("dllm-run")
    cfg = config(root, tiny_model, student, root / "run")
    cfg.update(eval=[{"bench": cfg["data"], "settings": EVAL}], report=True)
    path = root / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    models = run_pipeline(load_config(path))
    return RunDir(root / "run"), models


def _targets(run: RunDir, name: str) -> list[np.ndarray]:
    table = pq.read_table(run.masks_dir(name) / "data.parquet")
    return [np.asarray(t, dtype=bool) for t in table.column("target_mask").to_pylist()]


def test_dllm_t3s_targets_are_the_yet_to_learn_tokens(dllm_run: tuple[RunDir, dict]) -> None:
    run, _ = dllm_run
    profile = run.profile_table()
    masks = pq.read_table(run.masks_dir("dllm-t3s") / "data.parquet")
    stats = json.loads((run.masks_dir("dllm-t3s") / "stats.json").read_text())
    total = chosen = 0
    for p, m, b in zip(profile.to_pylist(), masks.to_pylist(), _targets(run, "dllm-t3s"), strict=True):
        response = response_mask(len(p["input_ids"]), p["response_start"], p["response_end"])
        delta = np.asarray(p["logprob_bottleneck"], dtype=np.float32) - np.asarray(
            p["logprob_base"], dtype=np.float32
        )
        np.testing.assert_array_equal(b, yet_to_learn(delta, response, TAU))
        np.testing.assert_array_equal(np.asarray(m["loss_mask"], dtype=bool), response)  # all may be noised
        assert m["labels"] == np.where(response, p["input_ids"], -100).tolist()
        total, chosen = total + int(response.sum()), chosen + int(b.sum())
    assert 0 < chosen < total
    assert stats["target_tokens"] == chosen and stats["target_fraction"] == pytest.approx(chosen / total)
    assert stats["options"]["tau"] == TAU and stats["kept_fraction"] == 1.0


def test_dllm_random_draws_a_target_set_of_the_same_size(dllm_run: tuple[RunDir, dict]) -> None:
    run, _ = dllm_run
    t3s, rnd = _targets(run, "dllm-t3s"), _targets(run, "dllm-random")
    assert sum(int(b.sum()) for b in rnd) == sum(int(b.sum()) for b in t3s)
    assert any((a != b).any() for a, b in zip(t3s, rnd, strict=True))
    for row, b in zip(run.masks("dllm-random").to_pylist(), rnd, strict=True):
        assert not (
            b & ~response_mask(len(row["input_ids"]), row["response_start"], row["response_end"])
        ).any()
    sft = pq.read_table(run.masks_dir("sft") / "data.parquet")
    assert "target_mask" not in sft.column_names  # dLLM SFT: B = ∅


def test_the_run_trains_the_student_and_evaluates_it_with_the_diffusion_sampler(
    dllm_run: tuple[RunDir, dict], student: Path
) -> None:
    run, models = dllm_run
    assert set(models) == {"base", "sft", "dllm-t3s", "dllm-random"}  # no rrt
    assert models["base"] == str(student) and run.model("base") == str(student)
    for name in ("sft", "dllm-t3s", "dllm-random"):
        assert models[name] == str(run.model_dir(name))
        saved = json.loads((run.model_dir(name) / "config.json").read_text())
        assert saved["is_causal"] is False and saved["mask_token_id"] == saved["vocab_size"] - 1
        assert run.stage(f"train:{name}")["summary"]["student"] == "dllm"
    rows = [json.loads(line) for line in run.eval_table("c", policies=True).read_text().splitlines()]
    assert {r["policy"] for r in rows} == set(models)
    for r in rows:
        assert r["tokens"] > 0 and 0 < r["mean_tokens"] <= 8 and 0 <= r["avg@1"] <= 1
        summary = json.loads(run.eval_result("c", f"policy-{r['policy']}").read_text())
        assert summary["sampler"]["block_length"] == 8  # the student's sampler generated it
    md = (run.report_dir / "summary.md").read_text(encoding="utf-8")
    assert "| dllm-t3s | " in md.split("## Evaluation")[1].split("## ")[0]  # the policies' eval table
    stats = json.loads((run.masks_dir("dllm-t3s") / "stats.json").read_text())
    assert f"| dllm-t3s | {stats['target_tokens']} | {stats['target_fraction']:.1%} |" in md
    assert "not built" not in md


def test_an_ar_mask_is_refused_for_the_dllm_and_a_target_set_for_an_ar_student(
    dllm_run: tuple[RunDir, dict], student: Path, tmp_path: Path
) -> None:
    from t3s import api
    from t3s.cli import app

    run = RunDir(tmp_path / "run")
    shutil.copytree(dllm_run[0].root, run.root)
    api.select(run.root, SelectOptions(policy="static-high", fraction=0.5))
    (tmp_path / "student.yaml").write_text(yaml.safe_dump({"kind": "dllm", "model": str(student)}))
    result = CliRunner().invoke(
        app,
        [
            "train",
            "--run",
            str(run.root),
            "--policy",
            "static-high",
            "--dllm-student",
            str(tmp_path / "student.yaml"),
        ],
        env={"COLUMNS": "400"},
    )
    assert isinstance(result.exception, T3SError)  # `t3s` prints it as one line (cli.app.main)
    assert str(result.exception) == (
        f"{run.masks_dir('static-high')}: example 'p0' keeps part of its response (an AR policy's mask); "
        "a dLLM student trains on sft, dllm-t3s or dllm-random masks"
    )
    with pytest.raises(
        T3SError, match=r"dllm-t3s: a dLLM target set \(target_mask\); train it with a dLLM student"
    ):
        api.train(run.root, "dllm-t3s")


def test_select_prints_the_target_fraction(dllm_run: tuple[RunDir, dict], tmp_path: Path) -> None:
    from t3s.cli import app

    run = tmp_path / "run"
    shutil.copytree(dllm_run[0].root, run)
    result = CliRunner().invoke(
        app, ["select", "--run", str(run), "--policy", "dllm-t3s", "--tau", "0", "--name", "tau0"],
        env={"COLUMNS": "400"},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    stats = json.loads((run / "masks" / "tau0" / "stats.json").read_text())
    assert f"(target fraction {stats['target_fraction']:.1%})" in result.output
    assert (
        stats["target_tokens"]
        >= json.loads((run / "masks" / "dllm-t3s" / "stats.json").read_text())["target_tokens"]
    )


def test_a_student_with_another_tokenizer_is_refused_before_the_first_stage(
    tiny_model: Path, student: Path, tmp_path: Path
) -> None:
    from t3s.models import load_tokenizer
    from t3s.pipeline import run_pipeline

    other = tmp_path / "other"
    shutil.copytree(student, other)
    tok = load_tokenizer(str(other))
    tok.add_tokens(["zzqq"])
    tok.save_pretrained(other)
    cfg = RunConfig(**config(tmp_path, tiny_model, other, tmp_path / "run"))
    with pytest.raises(
        T3SError,
        match=rf"^selector {tiny_model} \(for the dLLM student {other}\): "
        "the dLLM student adds non-special tokens the selector lacks: zzqq$",
    ):
        run_pipeline(cfg)
    assert not (tmp_path / "run").exists()


def test_the_config_fits_policies_and_rrt_to_the_student(tmp_path: Path) -> None:
    base = {"run_dir": "r", "model": "m", "data": "d"}
    dllm = {**base, "student": {"kind": "dllm", "model": "s"}, "policies": ["sft", "dllm-t3s"]}
    assert RunConfig(**dllm).rrt is False and "student" not in RunConfig(**base).model_dump()
    with pytest.raises(ValueError, match="rrt: a dLLM student has no RRT"):
        RunConfig(**dllm, rrt=True)
    with pytest.raises(ValueError, match="policies t3s are AR loss masks; a dLLM student trains sft"):
        RunConfig(**{**dllm, "policies": ["t3s", "dllm-t3s"]})
    with pytest.raises(ValueError, match="policies dllm-t3s select targets for a dLLM student: add student"):
        RunConfig(**base, policies=["dllm-t3s"])
    with pytest.raises(ValueError, match="policy t3s takes no tau"):
        SelectOptions(policy="t3s", tau=0.3)
    with pytest.raises(ValueError, match="policy random takes no match dllm-t3s"):
        SelectOptions(policy="random", match="dllm-t3s")
    with pytest.raises(ValueError, match="policy dllm-random needs exactly one of fraction or match"):
        SelectOptions(policy="dllm-random")
    assert "tau" not in SelectOptions(policy="dllm-t3s").model_dump()  # the default τ = 0.2
    assert SelectOptions(policy="dllm-t3s", tau=0.5).model_dump()["tau"] == 0.5
