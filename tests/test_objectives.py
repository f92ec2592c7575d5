"""Token-level objectives side by side: entropy and excess-loss selection, DFT through TRL."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from pydantic import ValidationError

from conftest import arithmetic_rows, write_jsonl
from t3s.confidence import score_batch
from t3s.config import RunConfig, load_config
from t3s.errors import T3SError
from t3s.io import read_json
from t3s.masks import IGNORE
from t3s.models import load_model
from t3s.selection import SelectOptions, mask_stats, select
from t3s.testbed.config import load_testbed
from t3s.tokens import TokenizedExample
from t3s.training import TrainRecipe, build_trainer, sft_dataset

NAN = float("nan")
CPU = torch.device("cpu")


def hand_profile() -> pa.Table:
    """Two examples, 8 response tokens: A at positions 2-5, B at 1-4 (B's reference is NaN at 1)."""
    f32 = pa.list_(pa.float32())
    return pa.table(
        {
            "id": ["a", "b"],
            "input_ids": [[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11]],
            "response_start": [2, 1],
            "response_end": [6, 5],
            "logprob_base": pa.array(
                [[NAN, NAN, -1.0, -2.0, -0.5, -3.0], [NAN, -1.0, -1.0, -4.0, -2.0]], f32
            ),
            # Δc = [-.5, 1, -.1, -.5] and [.5, -1, 1, -.5]: anchors A3, B1, B3, so t3s keeps 5 of 8.
            "logprob_bottleneck": pa.array(
                [[NAN, NAN, -1.5, -1.0, -0.6, -3.5], [NAN, -0.5, -2.0, -3.0, -2.5]], f32
            ),
            # excess loss = c(final) - c(base): A [.5, 0, .1, 2], B [NaN, .5, 3, .5]
            "logprob_final": pa.array(
                [[NAN, NAN, -0.5, -2.0, -0.4, -1.0], [NAN, NAN, -0.5, -1.0, -1.5]], f32
            ),
            "entropy_base": pa.array([[NAN, NAN, 2.0, 0.1, 1.0, 0.1], [NAN, 0.5, 3.0, 1.0, 0.2]], f32),
        }
    )


def kept(keeps: list[np.ndarray]) -> list[list[int]]:
    return [np.flatnonzero(k).tolist() for k in keeps]


def test_excess_loss_keeps_the_top_share_ties_by_position_never_nan() -> None:
    table = hand_profile()
    # Keep 4 of 8: B3 (3), A5 (2), then of the three 0.5s the first two in corpus order, A2 and B2.
    keeps = select(table, SelectOptions(policy="excess-loss", fraction=0.5))
    assert kept(keeps) == [[2, 5], [2, 3]]
    # A budget of all 8 still leaves B1 out: its reference log-prob is NaN.
    keeps = select(table, SelectOptions(policy="excess-loss", fraction=0.01))
    assert kept(keeps) == [[2, 3, 4, 5], [2, 3, 4]]
    mask_stats(table, keeps)  # nothing outside the responses


def test_excess_loss_and_entropy_at_the_t3s_budget() -> None:
    table = hand_profile()
    t3s = select(table, SelectOptions(policy="t3s"))
    assert kept(t3s) == [[2, 4, 5], [2, 4]]
    excess = select(table, SelectOptions(policy="excess-loss", match="t3s"))
    assert kept(excess) == [[2, 5], [2, 3, 4]]  # B3, A5, A2, B2, B4: 5 kept, as t3s
    entropy = select(table, SelectOptions(policy="entropy", match="t3s"))
    assert kept(entropy) == [[2, 4], [1, 2, 3]]  # B2 3, A2 2, A4 1 and B3 1 (A first), B1 .5
    assert sum(int(k.sum()) for k in excess) == sum(int(k.sum()) for k in entropy) == 5


def test_entropy_keeps_the_highest_entropy_share() -> None:
    table = hand_profile()
    assert kept(select(table, SelectOptions(policy="entropy", fraction=0.75))) == [[2], [2]]
    # Keep 7: of the two 0.1s (A3, A5) the later one, A5, is the one dropped.
    assert kept(select(table, SelectOptions(policy="entropy", fraction=0.125))) == [[2, 3, 4], [1, 2, 3, 4]]


def test_missing_columns_are_named() -> None:
    table = hand_profile()
    with pytest.raises(T3SError, match="no column 'entropy_base': it was made before t3s scored entropies"):
        select(table.drop_columns(["entropy_base"]), SelectOptions(policy="entropy", fraction=0.5))
    with pytest.raises(T3SError, match=r"no column 'logprob_step9' \(scored: base, bottleneck, final\)"):
        select(table, SelectOptions(policy="excess-loss", fraction=0.5, reference="step9"))


def test_options_validate_and_name_their_outputs() -> None:
    assert SelectOptions(policy="excess-loss", match="t3s").output_name() == "excess-loss"
    assert (
        SelectOptions(policy="excess-loss", match="t3s", reference="ref").output_name() == "excess-loss-ref"
    )
    assert SelectOptions(policy="sft", loss="dft").output_name() == "sft-dft"
    assert SelectOptions(policy="t3s").model_dump() == SelectOptions(policy="t3s", loss="nll").model_dump()
    assert "loss" not in SelectOptions(policy="t3s").model_dump()  # earlier fingerprints unchanged
    with pytest.raises(ValidationError, match="needs exactly one of fraction or match"):
        SelectOptions(policy="entropy")
    with pytest.raises(ValidationError, match="policy t3s takes no reference"):
        SelectOptions(policy="t3s", reference="final")
    with pytest.raises(ValidationError, match="not base, bottleneck or stepK"):
        RunConfig(run_dir="r", model="m", data="d", profile={"extra_models": {"base": "x"}})  # type: ignore[arg-type]


def test_testbed_full_compares_the_three_objectives() -> None:
    cfg = load_testbed(Path(__file__).parent.parent / "examples" / "testbed-full.yaml")
    policies = {p.output_name(): p for p in cfg.policies}
    assert policies["excess-loss"].match == "t3s" and policies["excess-loss"].reference is None
    assert policies["entropy"].match == "t3s" and policies["entropy-20"].fraction == 0.8
    assert policies["dft"].policy == "sft" and policies["dft"].loss == "dft"
    assert len(policies) == len(cfg.policies)  # every policy trains into its own directory


# -- the entropy column -------------------------------------------------------------------------
def test_entropy_column_equals_the_full_logit_entropy(tiny_model: Path, tokenizer) -> None:
    model = load_model(str(tiny_model), device=CPU, dtype=torch.float32)
    ids = tokenizer("What is 12+34? 12 + 34 = 46. The answer is 46.")["input_ids"]
    item = TokenizedExample("x", ids, response_start=5, response_end=len(ids) - 1)
    logprobs, entropy = score_batch(model, [item], chunk=3, entropy=True)[0]
    np.testing.assert_array_equal(logprobs, score_batch(model, [item], chunk=3)[0])
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    # Position t's entropy is that of the distribution at t - 1, which predicted token t.
    reference = torch.distributions.Categorical(logits=logits[4 : len(ids) - 2]).entropy().numpy()
    assert np.isnan(entropy[:5]).all() and np.isnan(entropy[-1])
    np.testing.assert_allclose(entropy[5:-1], reference, rtol=1e-5, atol=1e-5)
    assert (reference > 1).all()  # a random model: far from degenerate, so the check has teeth


# -- DFT through TRL ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def batch_data(tokenizer, tmp_path_factory) -> tuple[list[TokenizedExample], list[list[int]]]:
    from t3s.data import load_corpus
    from t3s.masks import labels_for
    from t3s.tokens import TokenizeConfig, tokenize_corpus

    corpus = write_jsonl(tmp_path_factory.mktemp("dft") / "c.jsonl", arithmetic_rows(4))
    items, _ = tokenize_corpus(tokenizer, load_corpus(corpus), TokenizeConfig())
    labels = [labels_for(t) for t in items]
    labels[1][items[1].response_start + 1] = IGNORE  # a masked token inside a response
    return items, labels


def test_dft_loss_is_minus_p_log_p_over_the_kept_count(
    tiny_model: Path, tokenizer, batch_data, tmp_path
) -> None:
    items, labels = batch_data
    recipe = TrainRecipe(steps=1, batch_size=4, micro_batch_size=4, lr=1e-3, seed=0)
    dataset = sft_dataset(items, labels)
    trainers = {
        loss: build_trainer(
            load_model(str(tiny_model), device=CPU), tokenizer, dataset, recipe, tmp_path / loss, loss=loss
        )
        for loss in ("nll", "dft")
    }
    dft = trainers["dft"]
    assert dft.args.loss_type == "dft" and dft.args.max_length is None
    same = ("learning_rate", "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps",
            "lr_scheduler_type", "warmup_steps", "weight_decay", "adam_beta1", "adam_beta2", "max_grad_norm",
            "optim", "seed", "bf16", "activation_checkpointing", "save_steps", "average_tokens_across_devices")  # fmt: skip
    assert {k: getattr(dft.args, k) for k in same} == {k: getattr(trainers["nll"].args, k) for k in same}
    assert dft.args.activation_checkpointing is False  # not TRL's default

    batch = dft.data_collator([dataset[i] for i in range(4)])
    count = int((batch["labels"][:, 1:] != IGNORE).sum())
    model = dft.model
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
        logp = torch.log_softmax(logits[:, :-1], -1)
        targets = batch["labels"][:, 1:]
        keep = targets != IGNORE
        lp = logp.gather(-1, targets.clamp(min=0)[..., None])[..., 0][keep]
        by_hand_dft = float((-lp.exp() * lp).sum() / count)
        by_hand_nll = float((-lp).sum() / count)
        got = float(dft.compute_loss(model, dict(batch), num_items_in_batch=torch.tensor(count)))
    assert got == pytest.approx(by_hand_dft, rel=1e-4)
    assert abs(by_hand_dft - by_hand_nll) > 0.1 * by_hand_nll  # p < 1 everywhere: DFT is another loss


# -- the chain ----------------------------------------------------------------------------------
def test_run_trains_the_three_objectives(tiny_model: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from t3s.pipeline import run_pipeline
    from t3s.rundir import RunDir

    config = {
        "run_dir": str(tmp_path / "run"),
        "model": str(tiny_model),
        "data": str(write_jsonl(tmp_path / "c.jsonl", arithmetic_rows(8))),
        "recipe": {"steps": 3, "batch_size": 4, "micro_batch_size": 4, "lr": 3e-3, "seed": 1},
        "probe": {"mode": "online", "eval": {"prompts": 4, "max_new_tokens": 4}},
        "policies": [
            "t3s",
            {"policy": "excess-loss", "match": "t3s"},
            {"policy": "entropy", "fraction": 0.8},
            {"policy": "sft", "loss": "dft", "name": "dft"},
        ],
        "rrt": False,
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    models = run_pipeline(load_config(path))
    assert set(models) == {"base", "sft", "t3s", "excess-loss", "entropy", "dft"}
    run = RunDir(tmp_path / "run")
    profile = pq.read_table(run.profile)
    # excess-loss compares with θf by default, so the chain profiled the final step (3) too.
    assert {"logprob_step3", "entropy_base", "entropy_bottleneck", "entropy_step3"} <= set(
        profile.column_names
    )
    stats = {p: read_json(run.masks_dir(p) / "stats.json") for p in ("t3s", "excess-loss", "entropy", "dft")}
    assert stats["excess-loss"]["options"]["reference"] == "step3"
    assert stats["excess-loss"]["kept_tokens"] == stats["t3s"]["kept_tokens"]
    assert stats["entropy"]["kept_tokens"] == stats["entropy"]["response_tokens"] - round(
        0.8 * stats["entropy"]["response_tokens"]
    )
    assert stats["dft"]["kept_fraction"] == 1.0
    assert run.stage("train:dft")["summary"]["loss"] == "dft"
    # DFT trains on what the probe (plain SFT, same recipe) trained on; only the loss differs.
    dft = load_file(Path(models["dft"]) / "model.safetensors")
    sft = load_file(Path(models["sft"]) / "model.safetensors")
    assert any(not torch.equal(dft[k], sft[k]) for k in dft)


def test_scores_cached_before_entropies_are_not_read(tiny_model: Path, batch_data, tmp_path: Path) -> None:
    from t3s.fingerprint import digest, model_fingerprint
    from t3s.io import write_parquet
    from t3s.profile import score_checkpoint
    from t3s.tokens import tokens_fingerprint

    items = batch_data[0]
    fp = tokens_fingerprint(items)
    # A shard as the profile cached it before entropies, under that cache's key: log-probs only.
    old = tmp_path / digest(fp, model_fingerprint(str(tiny_model)), "float32") / "part-00000.parquet"
    write_parquet(
        old, pa.table({"id": [t.id for t in items], "logprob": [[0.0] * len(t.input_ids) for t in items]})
    )
    scores = score_checkpoint(str(tiny_model), items, fp, tmp_path, device="cpu", dtype="float32")
    assert set(scores) == {"logprob", "entropy"}
    assert all(np.nanmax(v) < 0 for v in scores["logprob"])  # scored again, not the cached zeros
    assert all((np.nan_to_num(v) >= 0).all() and np.nanmax(v) > 0 for v in scores["entropy"])


def test_two_policies_with_one_name_are_refused(tmp_path: Path) -> None:
    from t3s.pipeline import run_pipeline

    policies = [{"policy": "entropy", "match": "t3s"}, {"policy": "entropy", "fraction": 0.8}]
    cfg = RunConfig(run_dir=tmp_path / "r", model="m", data="d", rrt=False, policies=policies)  # type: ignore[arg-type]
    with pytest.raises(T3SError, match="two policies write RUN/masks/entropy; give one of them a name"):
        run_pipeline(cfg)
    assert not (tmp_path / "r").exists()  # refused before the first stage
