"""The profile artifact contract, its cache, and cross-model checks."""

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from conftest import arithmetic_rows, build_tiny_model, write_jsonl
from t3s.confidence import score
from t3s.errors import T3SError
from t3s.models import load_model
from t3s.probe import ProbeEval, ProbeSettings, ProbeStage
from t3s.profile import profile_run, profile_standalone, run_models
from t3s.rundir import RunDir
from t3s.stage import execute
from t3s.tokenize_stage import prepare_corpus
from t3s.tokens import TokenizeConfig, tokens_fingerprint
from t3s.training import TrainRecipe


@pytest.fixture(scope="module")
def run(tiny_model: Path, tokenizer, tmp_path_factory) -> RunDir:
    root = tmp_path_factory.mktemp("profile")
    data = write_jsonl(root / "c.jsonl", arithmetic_rows(10))
    rd = RunDir(root / "run")
    cfg = TokenizeConfig()
    examples, items = prepare_corpus(rd, data, tokenizer, cfg)
    recipe = TrainRecipe(steps=3, batch_size=4, micro_batch_size=2, lr=3e-3)
    settings = ProbeSettings(mode="all", eval=ProbeEval(prompts=4, max_new_tokens=4))
    probe = ProbeStage(
        str(tiny_model),
        examples,
        items,
        tokenizer,
        cfg,
        recipe,
        settings,
        tokens_fp=tokens_fingerprint(items),
    )
    execute(rd, probe)
    return rd


def test_profile_contract(run: RunDir) -> None:
    summary = profile_run(run.root, steps=[2], shard_size=4)
    table = pq.read_table(run.profile)
    assert table.column_names == [
        "id", "input_ids", "response_start", "response_end", "logprob_base", "logprob_bottleneck", "logprob_step2",
        "entropy_base", "entropy_bottleneck", "entropy_step2", "delta",
    ]  # fmt: skip
    assert str(table.schema.field("input_ids").type) == "list<element: int32>"
    assert str(table.schema.field("delta").type) == "list<element: float>"
    items = run.read_tokens()
    bottleneck = run.resolve(run.manifest()["probe"]["bottleneck"])
    direct = dict(score(load_model(bottleneck, device=torch.device("cpu")), items))
    for i, row in enumerate(table.to_pylist()):
        n, s, e = len(row["input_ids"]), row["response_start"], row["response_end"]
        assert row["input_ids"] == items[i].input_ids and (s, e) == (
            items[i].response_start,
            items[i].response_end,
        )
        base, neck, delta = (
            np.asarray(row[c], dtype=np.float32) for c in ("logprob_base", "logprob_bottleneck", "delta")
        )
        assert len(base) == len(neck) == len(delta) == n
        assert np.isnan(delta[:s]).all() and not np.isnan(delta[s:e]).any()
        np.testing.assert_allclose(delta, neck - base, equal_nan=True)
        np.testing.assert_allclose(neck, direct[i], atol=1e-5, equal_nan=True)
    flat = np.concatenate(
        [
            np.asarray(d)[~np.isnan(d)]
            for d in (np.asarray(r, dtype=np.float32) for r in table.column("delta").to_pylist())
        ]
    )
    assert summary["delta"]["anchor_share"] == pytest.approx(float((flat > 0).mean()))
    assert run.stage("profile")["status"] == "done"


def test_rerun_reads_the_cache_and_a_lost_shard_is_recomputed(run: RunDir, monkeypatch) -> None:
    profile_run(run.root, shard_size=4)
    import t3s.models

    def refuse(*a, **k):
        raise AssertionError("a model was loaded although every score is cached")

    monkeypatch.setattr(t3s.models, "load_model", refuse)
    run.set_stage("profile", status="failed")
    profile_run(run.root, shard_size=4)
    # The module's run was also profiled with other checkpoints: lose a shard this profile reads.
    used = set(run_models(run, (), False).values())
    parts = [
        p
        for p in sorted((run.profile_dir / "cache").glob("*/part-00001.parquet"))
        if json.loads((p.parent / "source.json").read_text())["model"] in used
    ]
    parts[0].unlink()
    monkeypatch.undo()
    loads = []
    real = t3s.models.load_model
    monkeypatch.setattr(t3s.models, "load_model", lambda *a, **k: loads.append(a[0]) or real(*a, **k))
    run.set_stage("profile", status="failed")
    profile_run(run.root, shard_size=4)
    assert len(loads) == 1 and parts[0].exists()


def test_missing_checkpoint_and_foreign_tokenizer_are_refused(run: RunDir, tokenizer, tmp_path: Path) -> None:
    with pytest.raises(T3SError, match="checkpoint step 9 is not on disk"):
        profile_run(run.root, steps=[9])
    from copy import deepcopy

    other_tok = deepcopy(tokenizer)
    other_tok.add_tokens(["<extra_token>"])
    foreign = build_tiny_model(other_tok, tmp_path / "foreign")
    with pytest.raises(T3SError, match="its tokenizer differs from the run's"):
        profile_run(run.root, extra={"cross": str(foreign)})


def test_standalone_profile_of_two_models(tiny_model: Path, tokenizer, tmp_path: Path) -> None:
    other = build_tiny_model(tokenizer, tmp_path / "other", seed=1)
    data = write_jsonl(tmp_path / "c.jsonl", arithmetic_rows(3))
    out = tmp_path / "p.parquet"
    summary = profile_standalone(
        {"base": str(tiny_model), "bottleneck": str(other)}, data, out, TokenizeConfig()
    )
    table = pq.read_table(out)
    assert table.num_rows == 3 and "delta" in table.column_names
    assert summary["examples"] == 3
    with pytest.raises(T3SError, match=r"the profile is a \.parquet file"):
        profile_standalone({"base": str(tiny_model)}, data, tmp_path / "p.csv", TokenizeConfig())
