"""The Python API (`t3s.api`, exported from `t3s`): every stage on a tiny model, resumable, the same
masks `t3s export` writes, a light `import t3s`, and examples/api_chain.py run verbatim."""

from __future__ import annotations

import json
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import t3s
import t3s.api
from conftest import arithmetic_rows, build_tiny_model, write_jsonl
from t3s.cli import app
from t3s.rundir import RunDir

ROOT = Path(__file__).parent.parent
EXAMPLE = ROOT / "examples" / "api_chain.py"
HEAVY = ("torch", "transformers", "datasets", "matplotlib", "accelerate")


def test_import_t3s_loads_no_heavy_library() -> None:
    code = (
        "import sys, t3s; before = [m for m in HEAVY if m in sys.modules]; "
        "t3s.TrainRecipe, t3s.probe, t3s.select; "
        "print(before, [m for m in HEAVY if m in sys.modules], 't3s.api' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", f"HEAVY = {HEAVY!r}; {code}"], capture_output=True, text=True, check=True
    ).stdout
    assert out.split("\n")[0] == "[] [] True"  # the API loads on first use, torch only when a stage runs


def test_the_api_names_are_its_functions_not_the_same_named_modules() -> None:
    from t3s.probe import ProbeSettings  # the module, as every internal import reads it
    from t3s.report import build_report

    assert sorted(t3s.__all__) == sorted(t3s.api.__all__)
    for name in ("probe", "profile", "train", "rrt", "report", "select", "evaluate"):
        assert getattr(t3s, name) is getattr(t3s.api, name) and callable(getattr(t3s, name))
    assert t3s.ProbeSettings is ProbeSettings and sys.modules["t3s.report"].build_report is build_report
    with pytest.raises(AttributeError, match="module 't3s' has no attribute 'nope'"):
        t3s.nope  # noqa: B018


def _stage(run: Path, name: str) -> dict:
    return RunDir(run).stage(name)


@pytest.fixture(scope="module")
def chain(tiny_model: Path, tmp_path_factory) -> dict:
    """The chain through the API on 8 examples: each stage's result, and the manifest entries."""
    root = tmp_path_factory.mktemp("api")
    run = root / "run"
    data = write_jsonl(root / "c.jsonl", arithmetic_rows(8))
    kwargs = {
        "recipe": t3s.TrainRecipe(steps=4, batch_size=4, micro_batch_size=2, lr=3e-3, seed=1),
        "settings": t3s.ProbeSettings(eval=t3s.ProbeEval(prompts=4, max_new_tokens=4)),
    }
    out = {"run": run, "data": data, "kwargs": kwargs, "model": str(tiny_model)}
    out["probe"] = t3s.probe(run, str(tiny_model), data, **kwargs)
    out["profile"] = t3s.profile(run)
    out["select"] = t3s.select(run, "t3s")
    out["train"] = t3s.train(run, "t3s", save_every=2)
    out["rrt"] = t3s.rrt(run)
    scoring = t3s.EvalSettings(samples=1, temperature=0.0, max_new_tokens=4, batch_size=8)
    out["evaluate"] = t3s.evaluate(run, data, scoring, policies=["base", "t3s", "rrt"])
    out["report"] = t3s.report(run)
    out["stages"] = RunDir(run).manifest()["stages"]
    return out


def test_each_stage_writes_its_artifacts(chain: dict) -> None:
    run = RunDir(chain["run"])
    assert chain["probe"] == run.bottleneck() and chain["probe"]["final_step"] == 4
    assert chain["probe"]["step"] in {r["step"] for r in run.probe_metrics()}
    assert chain["profile"]["dtype"] == "float32" and run.profile.exists()
    selection = chain["select"]
    assert (selection.name, selection.path) == ("t3s", run.masks_dir("t3s"))
    assert selection.summary == chain["stages"]["select:t3s"]["summary"]
    assert 0 < selection.summary["kept_tokens"] <= selection.summary["response_tokens"]
    assert chain["train"]["steps"] == 4 and (run.model_dir("t3s") / "config.json").exists()
    assert chain["rrt"]["tensors"] > 0 and (run.model_dir("rrt") / "config.json").exists()
    assert [r["policy"] for r in chain["evaluate"]] == ["base", "rrt", "t3s"]
    summary = json.loads(run.eval_result("c", "policy-t3s").read_text())
    assert summary["template"] == "auto" and summary["samples"] == 1  # the run's own template
    assert chain["report"].html == run.report_dir / "index.html" and chain["report"].html.exists()
    assert all(entry["status"] == "done" for entry in chain["stages"].values())


def test_a_second_call_is_a_no_op_with_the_same_result(chain: dict) -> None:
    run = chain["run"]
    assert t3s.probe(run, chain["model"], chain["data"], **chain["kwargs"]) == chain["probe"]
    assert t3s.profile(run) == chain["profile"]
    assert t3s.select(run, t3s.SelectOptions(policy="t3s")) == chain["select"]
    assert t3s.train(run, "t3s", save_every=2) == chain["train"]
    assert t3s.rrt(run) == chain["rrt"]
    after = RunDir(run).manifest()["stages"]
    for name in ("tokenize", "probe", "profile", "select:t3s", "train:t3s", "rrt"):
        assert after[name] == chain["stages"][name], name  # skipped: not even re-marked running


def test_to_dataset_is_what_t3s_export_writes(chain: dict, tmp_path: Path) -> None:
    from datasets import load_from_disk

    dataset = chain["select"].to_dataset()
    result = CliRunner().invoke(
        app, ["export", "--run", str(chain["run"]), "--policy", "t3s", "--out", str(tmp_path / "hf")]
    )
    assert result.exit_code == 0, result.output
    exported = load_from_disk(str(tmp_path / "hf"))
    assert {"input_ids", "labels", "loss_mask"} <= set(dataset.column_names)
    for column in ("id", "input_ids", "labels", "loss_mask"):
        assert dataset[column] == exported[column], column
    tokens = RunDir(chain["run"]).read_tokens()
    assert dataset["input_ids"] == [t.input_ids for t in tokens]
    for row, item in zip(dataset, tokens, strict=True):
        ids, labels, mask = (np.array(row[c]) for c in ("input_ids", "labels", "loss_mask"))
        assert (labels[mask == 1] == ids[mask == 1]).all() and (labels[mask == 0] == -100).all()
        assert not mask[: item.response_start].any()  # the prompt is never trained
    assert sum(map(sum, dataset["loss_mask"])) == chain["select"].summary["kept_tokens"]
    exported_counts = t3s.Selection.load(chain["run"], "t3s").export(tmp_path / "jsonl", "jsonl")
    assert exported_counts == {"examples": 8, "trained_tokens": chain["select"].summary["kept_tokens"]}


def test_validate_corpus_collects_every_problem(tiny_model: Path, tmp_path: Path) -> None:
    rows = arithmetic_rows(3)
    rows[1] = {**rows[1], "answer": ""}
    check = t3s.validate_corpus(write_jsonl(tmp_path / "c.jsonl", rows), str(tiny_model))
    assert not check.ok and [e.id for e in check.examples] == ["p0", "p2"]
    assert [str(p) for p in check.problems] == [f"{tmp_path / 'c.jsonl'}:2: field 'answer': empty"]
    assert len(check.token_lengths) == 2 and all(n > 10 for n in check.token_lengths)
    assert t3s.load_corpus(write_jsonl(tmp_path / "ok.jsonl", rows[:1]))[0].answer == rows[0]["answer"]


def test_evaluate_takes_steps_or_policies(chain: dict) -> None:
    with pytest.raises(t3s.T3SError, match=r"^evaluate: pass steps .* or policies .*, not both$"):
        t3s.evaluate(chain["run"], chain["data"], steps=[0], policies=["t3s"])


@pytest.mark.slow  # minutes on a CPU: the tiny config's 48 examples, 4 probe measurements, 4 models scored
def test_the_example_runs_verbatim(tokenizer, tmp_path: Path, monkeypatch, capsys) -> None:
    """examples/api_chain.py, unchanged, from a copy of the repository's examples/, on a random
    16-layer model in place of SmolLM2 (the config freezes 15 layers): the argument it documents.
    Run as `__main__` from its path, as `python examples/api_chain.py` runs it, so that the verifier's
    spawned workers import it as a user's would (without its `__main__` guard each re-ran the chain
    and every verdict timed out)."""
    model = build_tiny_model(tokenizer, tmp_path / "model", layers=16)
    for name in ("api_chain.py", "tiny-cpu.yaml", "data/tiny-corpus.jsonl"):
        (tmp_path / "examples" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "examples" / name, tmp_path / "examples" / name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["examples/api_chain.py", str(model)])
    runpy.run_path("examples/api_chain.py", run_name="__main__")
    run = RunDir("runs/api-chain")
    rows = [
        json.loads(line) for line in run.eval_table("tiny-corpus", policies=True).read_text().splitlines()
    ]
    scores = {r["policy"]: r["avg@1"] for r in rows}
    assert list(scores) == ["base", "rrt", "sft", "t3s"]
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == f"{run.bottleneck()['step']} 48 {scores} {run.report_dir / 'index.html'}"
    assert run.bottleneck()["final_step"] == 6 and (run.model_dir("rrt") / "config.json").exists()
    assert (run.model_dir("t3s") / "config.json").exists()


def test_the_readme_shows_the_example_verbatim() -> None:
    root = Path(__file__).resolve().parents[1]
    body = (root / "examples" / "api_chain.py").read_text()
    code = body[body.index("import sys") :]
    assert f"```python\n{code}```" in (root / "README.md").read_text()
