"""`t3s run`: the whole chain from a YAML config, resumable after a kill at any stage."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import arithmetic_rows, write_jsonl
from t3s.config import load_config
from t3s.errors import T3SError

POLICIES = ["sft", "t3s", "inverse", {"policy": "random", "match": "t3s", "seed": 3}]


def write_config(root: Path, model: Path, run: Path) -> Path:
    data = write_jsonl(root / "c.jsonl", arithmetic_rows(8))
    cfg = {
        "run_dir": str(run),
        "model": str(model),
        "data": str(data),
        "recipe": {"steps": 5, "batch_size": 4, "micro_batch_size": 2, "lr": 3e-3, "seed": 1},
        "probe": {"mode": "online", "eval": {"prompts": 4, "max_new_tokens": 4}},
        "policies": POLICIES,
        "save_every": 2,
    }
    path = root / f"{run.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def t3s_run(config: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "t3s.cli", "run", str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip


def artifacts(run: Path) -> dict[str, object]:
    out: dict[str, object] = {
        p: (run / "masks" / p / "data.parquet").read_bytes() for p in ("t3s", "inverse", "random")
    }
    for name in ("t3s", "inverse", "random", "rrt"):
        out[f"{name}-weights"] = load_file(run / "train" / name / "model" / "model.safetensors")
    return out


@pytest.fixture(scope="module")
def reference(tiny_model: Path, tmp_path_factory) -> tuple[Path, int]:
    root = tmp_path_factory.mktemp("pipe")
    run = root / "ref"
    proc = t3s_run(write_config(root, tiny_model, run))
    most = 0
    while proc.poll() is None:  # watch the checkpoint count while the online probe runs
        ckpts = run / "probe" / "checkpoints"
        if ckpts.exists():
            most = max(most, sum(1 for p in ckpts.glob("checkpoint-*")))
        time.sleep(0.02)
    assert proc.returncode == 0, proc.stderr.read()[-3000:]
    return run, most


def test_full_chain_artifacts(reference: tuple[Path, int]) -> None:
    run, most = reference
    assert most <= 3, f"the online probe held {most} checkpoints at once"
    assert len(list((run / "probe" / "checkpoints").glob("checkpoint-*"))) <= 2
    for name in ("t3s", "inverse", "random", "rrt"):
        assert (run / "train" / name / "model" / "model.safetensors").exists()
        assert not (run / "train" / name / "checkpoints").exists()
    manifest = json.loads((run / "manifest.json").read_text())
    assert set(manifest["models"]) == {"base", "sft", "t3s", "inverse", "random", "rrt"}
    assert manifest["models"]["sft"].endswith("checkpoint-5")
    assert all(s["status"] == "done" for s in manifest["stages"].values())


@pytest.mark.parametrize("stop_at", ["masks/t3s/stats.json", "train/inverse/checkpoints"])
def test_killed_run_finishes_with_the_same_artifacts(
    reference: tuple[Path, int], tiny_model: Path, tmp_path: Path, stop_at: str
) -> None:
    run = tmp_path / "killed"
    config = write_config(tmp_path, tiny_model, run)
    proc = t3s_run(config)
    deadline = time.time() + 300
    while not (run / stop_at).exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "train" / "rrt" / "model").exists(), "the run finished before it could be killed"
    again = t3s_run(config)
    assert again.wait() == 0, again.stderr.read()[-3000:]
    ref, got = artifacts(reference[0]), artifacts(run)
    for key in ("t3s", "inverse", "random"):
        assert got[key] == ref[key], f"masks {key} differ after resuming"
    for key in ("t3s-weights", "inverse-weights", "random-weights", "rrt-weights"):
        for name, tensor in ref[key].items():  # type: ignore[union-attr]
            torch.testing.assert_close(got[key][name], tensor, rtol=1e-4, atol=1e-5)  # type: ignore[index]


def test_eval_analyze_and_report_end_the_chain(
    reference: tuple[Path, int], tiny_model: Path, tmp_path: Path
) -> None:
    """The optional sections run after the training stages, which a finished run skips."""
    from t3s.pipeline import run_pipeline
    from t3s.rundir import RunDir

    run = RunDir(tmp_path / "more")
    shutil.copytree(reference[0], run.root)
    cfg = yaml.safe_load(write_config(tmp_path, tiny_model, run.root).read_text())
    settings = {"samples": 1, "temperature": 0.0, "max_new_tokens": 4, "batch_size": 8}
    cfg.update(eval=[{"bench": cfg["data"], "steps": "all", "settings": settings}],
               analyze={"what": ["shock", "groups", "tokens"]}, report=True)  # fmt: skip
    path = tmp_path / "more.yaml"
    path.write_text(yaml.safe_dump(cfg))
    before = run.manifest()["stages"]
    models = run_pipeline(load_config(path))
    stages = run.manifest()["stages"]
    assert all(stages[name] == entry for name, entry in before.items())  # trained before: skipped
    assert (
        stages["eval:c"]["status"]
        == stages["eval:c:policies"]["status"]
        == stages["analyze"]["status"]
        == "done"
    )
    rows = [json.loads(line) for line in run.eval_table("c", policies=True).read_text().splitlines()]
    assert {r["policy"]: r["model"] for r in rows} == models
    curve = [json.loads(line) for line in run.eval_table("c").read_text().splitlines()]
    assert [r["step"] for r in curve] == sorted(run.checkpoints())
    assert json.loads(run.eval_result("c", "policy-sft").read_text())["template"] == "auto"  # the run's own
    assert {p.name for p in run.analysis_dir.glob("*.json")} == {"shock.json", "tokens.json"}
    assert "skipped" in stages["analyze"]["summary"]["groups"]  # one profiled step: no group curves
    md = (run.report_dir / "summary.md").read_text(encoding="utf-8")
    assert "## Evaluation" in md and "## Token groups (Δc at θb)" in md


def test_eval_sections_prompt_as_the_run_was_tokenized_and_name_its_models(
    tmp_path: Path, monkeypatch
) -> None:
    from t3s.config import RunConfig
    from t3s.pipeline import run_pipeline

    monkeypatch.chdir(tmp_path)

    base = {"run_dir": "r", "model": "m", "data": "d", "tokenize": {"template": "plain"}}
    cfg = RunConfig(**base, eval=[{"bench": "b"}, {"bench": "b", "settings": {"template": "chat"}}])
    assert [e.settings.template for e in cfg.eval] == ["plain", "chat"]
    assert RunConfig(**{**base, "tokenize": {}}, eval=[{"bench": "b"}]).eval[0].settings.template == "auto"
    assert RunConfig(**base).eval == [] and RunConfig(**base).analyze is None and not RunConfig(**base).report
    typo = RunConfig(**base, rrt=False, eval=[{"bench": "b", "models": ["sft", "t3z"]}])
    with pytest.raises(
        T3SError, match=r"eval b: this run makes no model \['t3z'\] \(it makes base, sft, t3s\)"
    ):
        run_pipeline(typo)  # before any stage runs


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("run_dir: r\nmodel: m\ndata: d\nrecipe: {steps: 5, lr_typo: 1}\n")
    with pytest.raises(T3SError, match=r"c.yaml: recipe.lr_typo: unknown key"):
        load_config(path)
    path.write_text("run_dir: r\nmodel: m\ndata: d\npolicies: [t3s, {policy: random}]\n")
    with pytest.raises(
        T3SError, match="policies.1: Value error, policy random needs exactly one of fraction or match"
    ):
        load_config(path)
    path.write_text("run_dir: r\nmodel: m\ndata: d\npolicies: [best]\n")
    with pytest.raises(T3SError, match="policies.0.policy: Input should be"):
        load_config(path)
