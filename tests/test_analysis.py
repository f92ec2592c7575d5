"""The analyses of `t3s analyze`, on one real probed and profiled tiny run shared by the module.

The random tiny model raises almost every token's confidence, so the model-side tests split the
groups at the median Δc (the `threshold` option) to have both groups well populated.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from conftest import arithmetic_rows, write_jsonl
from t3s.analysis import artifacts, groups, separability, shock, tokens, transfer
from t3s.analysis.gradients import ANCHOR, OTHER, anchor_step, gradient_stats, step_direction
from t3s.analysis.options import NAMES
from t3s.analysis.runner import AnalysisOptions, analyze, parse_names
from t3s.analysis.tokenloss import (
    TokenSample,
    group_gradient,
    group_losses,
    in_sample,
    sample_examples,
    select_parameters,
    token_sample,
)
from t3s.cli import app
from t3s.errors import T3SError
from t3s.io import write_json
from t3s.models import load_model
from t3s.rundir import RunDir

_BUILT: dict[str, Path] = {}
ANALYSES = list(NAMES)


def probed_run(tiny_model: Path, tokenizer, root: Path) -> Path:
    """One probed (every checkpoint kept) and fully profiled run, built once per test session."""
    if "run" not in _BUILT:
        from t3s.probe import ProbeEval, ProbeSettings, ProbeStage
        from t3s.profile import profile_run
        from t3s.stage import execute
        from t3s.tokenize_stage import prepare_corpus
        from t3s.tokens import TokenizeConfig, tokens_fingerprint
        from t3s.training import TrainRecipe

        data = write_jsonl(root / "corpus.jsonl", arithmetic_rows(10))
        run = RunDir(root / "run")
        cfg = TokenizeConfig()
        examples, items = prepare_corpus(run, data, tokenizer, cfg)
        recipe = TrainRecipe(steps=3, batch_size=4, micro_batch_size=4, lr=1e-2)
        settings = ProbeSettings(mode="all", eval=ProbeEval(prompts=3, max_new_tokens=3))
        execute(run, ProbeStage(str(tiny_model), examples, items, tokenizer, cfg, recipe, settings,
                                tokens_fp=tokens_fingerprint(items)))  # fmt: skip
        profile_run(run.root, all_steps=True)
        _BUILT["run"] = run.root
    return _BUILT["run"]


def median_threshold(run: Path) -> float:
    return float(np.median(artifacts.load_profile(RunDir(run).profile).delta))


def analyzed_run(tiny_model: Path, tokenizer, root: Path) -> Path:
    """The shared run after `t3s analyze --what all` (through the CLI), once per session."""
    run = probed_run(tiny_model, tokenizer, root)
    if "analyzed" not in _BUILT:
        args = ["analyze", "--run", str(run), "--what", "all", "--threshold", str(median_threshold(run)),
                "--examples", "5", "--lr", "1e-3", "--transfer-steps", "2", "--sketch-dim", "16"]  # fmt: skip
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output + repr(result.exception)
        _BUILT["analyzed"] = run
    return run


@pytest.fixture(scope="module")
def run(tiny_model: Path, tokenizer, tmp_path_factory) -> Path:
    return probed_run(tiny_model, tokenizer, tmp_path_factory.mktemp("analysis"))


@pytest.fixture(scope="module")
def profile(run: Path) -> artifacts.Profile:
    return artifacts.load_profile(RunDir(run).profile)


@pytest.fixture(scope="module")
def table(run: Path):
    return pq.read_table(RunDir(run).profile).to_pylist()


@pytest.fixture(scope="module")
def model(run: Path):
    return load_model(RunDir(run).base_model(), device=torch.device("cpu"))


@pytest.fixture(scope="module")
def sample(profile: artifacts.Profile) -> TokenSample:
    anchors = profile.anchors(float(np.median(profile.delta)))
    return token_sample(profile, anchors.astype(np.int64), 2, sample_examples(len(profile.ids), 4, 0), 64)


# -- reading a run -------------------------------------------------------------------------------
def test_profile_is_flattened_over_scored_tokens(profile: artifacts.Profile, table) -> None:
    assert profile.steps == {1: "step1", 2: "step2", 3: "step3"}
    expected = [
        (e, i, row["input_ids"][i], row["delta"][i], row["logprob_step2"][i])
        for e, row in enumerate(table)
        for i in range(len(row["input_ids"]))
        if not math.isnan(row["delta"][i])
    ]
    assert len(profile.delta) == len(expected) == sum(r["response_end"] - r["response_start"] for r in table)
    got = zip(
        profile.example,
        profile.position,
        profile.token,
        profile.delta,
        profile.logprobs["step2"],
        strict=True,
    )
    for (e, i, tok, d, lp), ref in zip(got, expected, strict=True):
        assert (int(e), int(i), int(tok)) == ref[:3]
        assert d == pytest.approx(ref[3]) and lp == pytest.approx(ref[4])


def test_anchor_split_is_delta_above_threshold(profile: artifacts.Profile, table) -> None:
    flat = [d for row in table for d in row["delta"] if not math.isnan(d)]
    for threshold in (0.0, float(np.median(flat))):
        assert profile.anchors(threshold).tolist() == [d > threshold for d in flat]
    assert 0 < profile.anchors(float(np.median(flat))).sum() < len(flat)


def test_group_means_match_a_direct_computation(profile: artifacts.Profile, table) -> None:
    threshold = float(np.median(profile.delta))
    data = groups.group_dynamics(profile, profile.anchors(threshold), bottleneck_step=1)
    assert data["steps"] == [0, 1, 2, 3]
    assert data["anchor_mean_dprob"][0] == 0 and data["other_mean_dprob"][0] == 0
    for k, step in enumerate(data["steps"][1:], 1):
        sums, counts = [0.0, 0.0], [0, 0]
        for row in table:
            for base, now, d in zip(
                row["logprob_base"], row[f"logprob_step{step}"], row["delta"], strict=True
            ):
                if not math.isnan(d):
                    g = int(d > threshold)
                    sums[g] += math.exp(now) - math.exp(base)
                    counts[g] += 1
        assert data["anchor_mean_dprob"][k] == pytest.approx(sums[1] / counts[1], rel=1e-5, abs=1e-12)
        assert data["other_mean_dprob"][k] == pytest.approx(sums[0] / counts[0], rel=1e-5, abs=1e-12)
    assert data["anchors"] + data["others"] == len(profile.delta)


def test_persistent_drops_match_a_direct_count(profile: artifacts.Profile, table) -> None:
    data = groups.persistent_drops(profile, 3, profile.anchors(), bottleneck_step=1)
    pairs = [
        (f, b)
        for r in table
        for f, b in zip(r["logprob_step3"], r["logprob_base"], strict=True)
        if not math.isnan(b)
    ]
    assert data["share_below_base"] == pytest.approx(sum(f < b for f, b in pairs) / len(pairs))
    assert data["steps"] == [0, 1, 2, 3] and data["share_below_base_by_step"][0] == 0
    assert data["share_below_base_by_step"][-1] == data["share_below_base"]
    with pytest.raises(T3SError, match=r"logprob_step7 .*t3s profile --run RUN --step 7"):
        groups.persistent_drops(profile, 7, profile.anchors())


def test_group_dynamics_need_checkpoint_columns(run: Path, tmp_path: Path) -> None:
    table = pq.read_table(RunDir(run).profile)
    only_two = table.drop_columns([c for c in table.column_names if c.startswith("logprob_step")])
    prof = artifacts.profile_from_table(only_two, "p")
    with pytest.raises(T3SError, match="--all-steps"):
        groups.group_dynamics(prof, prof.anchors())


def test_compare_profile_is_aligned_by_id_and_read_with_the_runs_anchors(run: Path, tmp_path: Path) -> None:
    table = pq.read_table(RunDir(run).profile)
    # Another "run" scoring the same examples in another order, a subset, with its own (wrong) Δc.
    other = table.take([3, 0, 2]).drop_columns(["delta"])
    other = other.append_column("delta", pq.read_table(RunDir(run).profile).take([0, 1, 2]).column("delta"))
    main, second = artifacts.aligned_profiles(table, other, "other.parquet")
    assert main.ids == second.ids == [table.column("id")[i].as_py() for i in (0, 2, 3)]
    np.testing.assert_array_equal(main.delta, second.delta)
    np.testing.assert_array_equal(main.logprobs["step2"], second.logprobs["step2"])
    broken = table.drop_columns(["input_ids"]).add_column(
        1, "input_ids", table.column("input_ids").take([1, 0, *range(2, len(table))])
    )
    with pytest.raises(T3SError, match="other token ids"):
        artifacts.aligned_profiles(table, broken, "broken.parquet")
    assert artifacts.compare_profile_path(run) == RunDir(run).profile
    with pytest.raises(T3SError, match="run directory or a profile"):
        artifacts.compare_profile_path(tmp_path / "x.csv")


def test_groups_compare_run_is_read_with_this_runs_anchors(run: Path) -> None:
    threshold = float(np.median(artifacts.load_profile(RunDir(run).profile).delta))
    analyze(run, ["groups"], AnalysisOptions(threshold=threshold, compare=run))
    data = json.loads((run / "analysis" / "groups.json").read_text())
    compare = data["compare"]
    assert compare["source"] == str(RunDir(run).profile) and "train other tokens only" in compare["label"]
    # The run as its own comparison: the same groups and the same curves.
    assert (compare["anchors"], compare["others"]) == (data["anchors"], data["others"])
    assert compare["anchor_mean_dprob"] == data["anchor_mean_dprob"]
    assert (run / "analysis" / "groups.png").stat().st_size > 5000


def test_eval_curves_are_read_defensively(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    curve = tmp_path / "eval" / "aime" / "curve.jsonl"
    curve.parent.mkdir(parents=True)
    rows = [
        {"step": 0, "avg@4": 0.5, "avg@4_stderr": 0.1, "pass@4": 0.75, "model": "m"},
        {"step": "final", "avg@4": 0.2},
        {"avg@4": 0.3},
        {"step": 2, "avg@4": float("nan"), "pass@4": True},
        {"step": 1, "avg@4": 0.25},
    ]
    curve.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 3, "avg@4"', encoding="utf-8")
    (tmp_path / "eval" / "empty").mkdir()
    assert artifacts.eval_curves(run) == {"aime": {"avg@4": [(0, 0.5), (1, 0.25)], "pass@4": [(0, 0.75)]}}


def test_shock_curves_align_metrics_and_mark_the_bottleneck() -> None:
    metrics = [
        {"step": 2, "train_loss": 1.0, "train_accuracy": 0.1, "teacher_forced_loss": 0.9},
        {"step": 0, "train_loss": None, "train_accuracy": 0.8, "teacher_forced_loss": 1.5},
        {"step": 4, "train_loss": 0.5, "train_accuracy": 0.6, "teacher_forced_loss": 0.4},
    ]
    data = shock.shock_curves(metrics, {"step": 2, "train_accuracy": 0.1}, {"b": {"avg@2": [(0, 0.5)]}})
    assert data["steps"] == [0, 2, 4] and data["train_accuracy"] == [0.8, 0.1, 0.6]
    assert data["train_loss"] == [None, 1.0, 0.5]
    assert data["bottleneck_step"] == 2 and data["crash"] == pytest.approx(-0.7)
    assert data["benchmarks"] == {"b": {"avg@2": [[0, 0.5]]}}


# -- top tokens ----------------------------------------------------------------------------------
def test_tokens_are_aggregated_per_string_and_ranked_by_mean() -> None:
    ids = np.array([5, 5, 6, 7, 7, 7, 8, 9])
    delta = np.array([1.0, 3.0, 4.0, -1.0, -2.0, -3.0, 0.5, 9.0], dtype=np.float32)
    names = {5: "a", 6: "a", 7: " b|", 8: "c", 9: "rare"}
    rows = tokens.aggregate_tokens(ids, delta, names.__getitem__)
    by = {r["token"]: r for r in rows}
    assert (
        by["a"]["count"] == 3
        and by["a"]["mean_delta"] == pytest.approx(8 / 3)
        and sorted(by["a"]["ids"]) == [5, 6]
    )
    assert by[" b|"]["sum_delta"] == pytest.approx(-6.0)
    top = tokens.top_tokens(rows, top=1, min_count=2)
    assert [r["token"] for r in top["rise"]] == ["a"] and [r["token"] for r in top["drop"]] == [" b|"]
    assert tokens.top_tokens(rows, top=5, min_count=1)["rise"][0]["token"] == "rare"
    md = tokens.markdown_table(top["drop"])
    assert "`␣b\\|`" in md and "| 1 |" in md


def test_tokens_analysis_decodes_with_the_runs_tokenizer(
    run: Path, profile: artifacts.Profile, tokenizer
) -> None:
    analyze(run, ["tokens"], AnalysisOptions(top=5, min_count=1))
    data = json.loads((run / "analysis" / "tokens.json").read_text())
    assert 0 < len(data["rise"]) <= 5
    for r in data["rise"] + data["drop"]:
        assert all(tokenizer.decode([i]) == r["token"] for i in r["ids"])
        mask = np.isin(profile.token, r["ids"])
        assert r["count"] == mask.sum() and r["mean_delta"] == pytest.approx(
            float(profile.delta[mask].mean()), rel=1e-5
        )
    assert (run / "analysis" / "tokens.md").read_text().count("\n| ") >= 2
    assert (run / "analysis" / "tokens.png").stat().st_size > 1000
    try:
        import wordcloud  # noqa: F401

        assert "note" not in data
    except ImportError:
        assert "bar charts instead of word clouds" in data["note"]


# -- losses and gradients ------------------------------------------------------------------------
def reference_group_gradient(model, sample: TokenSample, group: int) -> tuple[list[torch.Tensor], float]:
    """Slow and obvious: full logits per example, log_softmax, the group's mean NLL, autograd."""
    terms = []
    for ids, pos, lab in zip(sample.input_ids, sample.positions, sample.labels, strict=True):
        ids_t = torch.from_numpy(ids.astype(np.int64))
        logp = torch.log_softmax(model(input_ids=ids_t[None]).logits[0].float(), -1)
        at = torch.from_numpy(pos[lab == group])
        terms.append(-logp[at - 1, ids_t[at]])
    loss = torch.cat(terms).mean()
    params = [p for p in model.parameters() if p.requires_grad]
    return list(torch.autograd.grad(loss, params)), float(loss.detach())


@pytest.mark.parametrize(("batch_tokens", "chunk"), [(4096, 1024), (1, 3)])
def test_group_gradient_matches_a_full_logits_reference(
    model, sample: TokenSample, batch_tokens: int, chunk: int
) -> None:
    select_parameters(model, None)
    ref, ref_loss = reference_group_gradient(model, sample, ANCHOR)
    got, loss = group_gradient(model, sample, ANCHOR, batch_tokens=batch_tokens, chunk=chunk)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    for g, r in zip(got, ref, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5 * float(r.abs().max()))
    assert all(p.grad is None for p in model.parameters())
    losses = group_losses(model, sample, batch_tokens=batch_tokens, chunk=chunk)
    assert losses[ANCHOR] == pytest.approx(ref_loss, rel=1e-5)


def test_parameter_selection_restricts_gradients(model, sample: TokenSample) -> None:
    chosen = select_parameters(model, r"layers\.1\.")
    assert chosen and all("layers.1." in n for n, _ in chosen)
    grads, _ = group_gradient(model, sample, OTHER, batch_tokens=4096, chunk=1024)
    assert len(grads) == len(chosen)
    with pytest.raises(T3SError, match="matches no parameter"):
        select_parameters(model, "nothing-like-this")
    select_parameters(model, None)


def test_cosine_of_a_gradient_with_itself_is_one(model, sample: TokenSample) -> None:
    # Every example twice: its tokens are anchors in one copy, "others" in the other.
    twice = TokenSample(
        sample.input_ids * 2,
        sample.positions * 2,
        [np.full_like(x, ANCHOR) for x in sample.labels] + [np.full_like(x, OTHER) for x in sample.labels],
        2,
    )
    select_parameters(model, None)
    stats = gradient_stats(model, twice, batch_tokens=4096, chunk=1024)
    assert stats["cosine"] == pytest.approx(1.0, abs=1e-5)
    assert stats["norm_ratio"] == pytest.approx(1.0, abs=1e-5)
    assert stats["anchor_loss"] == pytest.approx(stats["other_loss"], rel=1e-6)


def test_one_anchor_step_moves_losses_as_its_gradients_predict(run: Path, sample: TokenSample) -> None:
    """To first order an SGD step of lr on g_anchor changes L_x by -lr <g_anchor, g_x>."""
    base = RunDir(run).base_model()
    fresh = load_model(base, device=torch.device("cpu"))
    stats = gradient_stats(fresh, sample, batch_tokens=4096, chunk=1024)
    lr = 0.01 / stats["anchor_grad_norm"] ** 2
    step = anchor_step(fresh, sample, lr=lr, rule="sgd", batch_tokens=4096, chunk=1024)
    dot = stats["cosine"] * stats["anchor_grad_norm"] * stats["other_grad_norm"]
    assert step["anchor_loss"] == pytest.approx(stats["anchor_loss"], rel=1e-5)
    assert step["delta_anchor_loss"] == pytest.approx(-lr * stats["anchor_grad_norm"] ** 2, rel=0.05)
    assert step["delta_other_loss"] == pytest.approx(-lr * dot, rel=0.1, abs=2e-4)
    g = torch.tensor([3.0, -1e-3, 0.0])
    torch.testing.assert_close(step_direction(g, "adam"), torch.tensor([1.0, -1.0, 0.0]), atol=1e-4, rtol=0)
    torch.testing.assert_close(step_direction(g, "sgd"), g)


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda",
            marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")],
        ),
    ],
)
def test_bf16_gradients_agree_with_float32(run: Path, sample: TokenSample, device: str) -> None:
    base = RunDir(run).base_model()
    stats = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = load_model(base, device=torch.device(device), dtype=dtype)
        stats[dtype] = gradient_stats(model, sample, batch_tokens=4096, chunk=1024)
        step = anchor_step(model, sample, lr=1e-3, rule="adam", batch_tokens=4096, chunk=1024)
        assert math.isfinite(step["delta_other_loss"])
    full, half = stats[torch.float32], stats[torch.bfloat16]
    assert half["cosine"] == pytest.approx(full["cosine"], abs=0.02)
    assert half["norm_ratio"] == pytest.approx(full["norm_ratio"], rel=0.02)
    assert half["anchor_loss"] == pytest.approx(full["anchor_loss"], rel=0.01)


# -- loss transfer -------------------------------------------------------------------------------
def test_transfer_labels_split_each_group_in_halves_by_base_confidence() -> None:
    anchors = np.array([True, True, True, False, False, True, False, False, False])
    base = np.array([-1.0, -5.0, -3.0, -2.0, -0.5, -4.0, -9.0, -0.1, -7.0])
    labels = transfer.transfer_labels(anchors, base)
    assert labels.tolist() == [0, 1, 0, 2, 2, 1, 3, 2, 3]
    for easy, hard in ((0, 1), (2, 3)):
        assert base[labels == hard].max() <= base[labels == easy].min()
    with pytest.raises(T3SError, match="at least 2 anchor"):
        transfer.transfer_labels(np.array([True, False, False]), np.zeros(3))


def test_training_a_subset_lowers_its_own_loss(run: Path, profile: artifacts.Profile) -> None:
    examples = sample_examples(len(profile.ids), 4, 0)
    chosen = in_sample(profile, examples, 64)
    labels = np.full(len(profile.delta), -1)
    threshold = float(np.median(profile.delta))
    labels[chosen] = transfer.transfer_labels(
        profile.anchors(threshold)[chosen], profile.logprobs["base"][chosen]
    )
    sub = token_sample(profile, labels, 4, examples, 64)
    base = RunDir(run).base_model()
    data = transfer.transfer_matrix(
        lambda: load_model(base, device=torch.device("cpu")),
        sub,
        steps=2,
        lr=1e-3,
        batch_tokens=4096,
        chunk=1024,
    )
    matrix = np.asarray(data["matrix_percent"])
    assert matrix.shape == (4, 4) and data["subsets"] == list(transfer.SUBSETS)
    assert all(matrix[i, i] < 0 for i in range(4))
    assert abs(data["tokens"][0] - data["tokens"][1]) <= 1 and abs(data["tokens"][2] - data["tokens"][3]) <= 1


# -- separability --------------------------------------------------------------------------------
def test_auroc_and_pca() -> None:
    labels = np.array([False, False, True, True])
    assert separability.auroc(np.array([0.0, 1.0, 2.0, 3.0]), labels) == 1.0
    assert separability.auroc(np.array([3.0, 2.0, 1.0, 0.0]), labels) == 0.0
    assert separability.auroc(np.ones(4), labels) == 0.5
    assert separability.auroc(np.ones(4), np.ones(4, dtype=bool)) is None
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5)) * np.array([10.0, 3.0, 0.1, 0.1, 0.1])
    coords, share = separability.pca2(x)
    assert coords.shape == (200, 2) and share[0] > 0.85 and share[0] > share[1]
    np.testing.assert_allclose(np.abs(coords[:, 0]), np.abs(x[:, 0] - x[:, 0].mean()), rtol=0.05, atol=0.5)


def test_gradient_sketches_project_the_exact_per_token_gradient(model, sample: TokenSample) -> None:
    sketches, labels = separability.gradient_sketches(
        model, sample, dim=8, seed=3, batch_tokens=4096, chunk=5
    )
    assert sketches.shape == (int(sample.counts().sum()), 8) and sorted(labels.tolist()) == sorted(
        np.concatenate(sample.labels).tolist()
    )
    # Closed form for a plain (tied) output layer: d(-log p_y)/dh = W^T (softmax(Wh) - onehot(y)).
    i = 0  # the batch order puts the longest example first
    longest = max(range(len(sample.input_ids)), key=lambda k: len(sample.input_ids[k]))
    ids = torch.from_numpy(sample.input_ids[longest].astype(np.int64))[None]
    with torch.no_grad():
        hidden = model.get_decoder()(input_ids=ids).last_hidden_state[0]
        w = model.get_output_embeddings().weight
        p = int(sample.positions[longest][i])
        probs = torch.softmax(w @ hidden[p - 1], -1)
        probs[ids[0, p]] -= 1
        grad = w.T @ probs
    projection = torch.randn(w.shape[1], 8, generator=torch.Generator().manual_seed(3)) / 8**0.5
    np.testing.assert_allclose(sketches[i], (grad @ projection).numpy(), rtol=1e-4, atol=1e-6)


# -- the command ---------------------------------------------------------------------------------
def test_analyze_all_writes_every_artifact(tiny_model: Path, tokenizer, tmp_path_factory) -> None:
    run = analyzed_run(tiny_model, tokenizer, tmp_path_factory.mktemp("unused"))
    out = run / "analysis"
    for name in ANALYSES:
        data = json.loads((out / f"{name}.json").read_text())
        assert data and (out / f"{name}.png").stat().st_size > 5000, name
    assert (out / "tokens.md").exists()
    sep = pq.read_table(out / "separability.parquet")
    assert sep.column_names == ["anchor", "pc1", "pc2", "sketch"] and len(sep["sketch"][0]) == 16
    grads = json.loads((out / "gradients.json").read_text())
    assert grads["steps"] == [0, 1, 2, 3] and all(-1 <= c <= 1 for c in grads["cosine"])
    inter = json.loads((out / "intervention.json").read_text())
    assert inter["rule"] == "adam" and len(inter["delta_other_loss"]) == 4
    assert inter["anchor_loss"] == pytest.approx(grads["anchor_loss"], rel=1e-4)
    groups_json = json.loads((out / "groups.json").read_text())
    assert groups_json["anchors"] == pytest.approx(groups_json["others"], abs=1)


def test_analyze_errors_name_what_to_run_first(run: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["analyze", "--run", str(run), "--what", "shock,bogus"])
    assert isinstance(result.exception, T3SError) and "use all or a comma-separated list" in str(
        result.exception
    )
    result = runner.invoke(app, ["analyze", "--run", str(run), "--what", "gradients", "--step", "9"])
    assert isinstance(result.exception, T3SError) and "not on disk" in str(result.exception)
    # A run with a probe but no profile yet, and without its checkpoints.
    bare = tmp_path / "bare"
    (bare / "probe").mkdir(parents=True)
    for name in ("manifest.json", "probe/metrics.jsonl", "probe/bottleneck.json"):
        shutil.copy(run / name, bare / name)
    manifest = json.loads((bare / "manifest.json").read_text())
    manifest["probe"]["checkpoints"] = {}  # the probe's record, in the manifest
    write_json(bare / "manifest.json", manifest)
    for what, hint in (("groups", "t3s profile --run RUN"), ("gradients", "--mode all")):
        if what == "gradients":
            shutil.copytree(run / "profile", bare / "profile", ignore=shutil.ignore_patterns("cache"))
        result = runner.invoke(app, ["analyze", "--run", str(bare), "--what", what])
        assert isinstance(result.exception, T3SError), what
        assert hint in str(result.exception) and "\n" not in str(result.exception)
    result = runner.invoke(
        app, ["analyze", "--run", str(bare), "--what", "all", "--examples", "2", "--transfer-steps", "1"]
    )
    assert result.exit_code == 0, result.output
    assert "gradients: skipped" in result.output and "shock: {" in result.output
    assert " ".join(parse_names("all")) == (
        "shock groups drops tokens lossshare intervention gradients transfer separability"
    )
