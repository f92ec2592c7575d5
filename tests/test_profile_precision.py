"""Scoring precision: a float32 output layer, a dtype-keyed cache, and the reported Δc resolution band."""

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from conftest import arithmetic_rows, write_jsonl
from t3s.confidence import gather_logprobs, score
from t3s.data import load_corpus
from t3s.models import load_model, load_tokenizer
from t3s.profile import RESOLUTION, profile_standalone
from t3s.tokens import TokenizeConfig, tokenize_corpus

CPU = torch.device("cpu")


def test_output_layer_of_a_bf16_model_runs_in_float32(tiny_model: Path) -> None:
    model = load_model(str(tiny_model), device=CPU, dtype=torch.bfloat16)
    hidden = (10 * torch.randn(40, 64, generator=torch.Generator().manual_seed(0))).to(torch.bfloat16)
    targets = torch.arange(40) * 997
    w = model.get_output_embeddings().weight
    exact = torch.log_softmax(hidden.double() @ w.double().T, -1).gather(-1, targets[:, None])[:, 0]
    with torch.inference_mode():
        got = gather_logprobs(model, hidden, targets, chunk=16)
    assert got.dtype == torch.float32
    # bf16 logits are rounded by up to 2^-8 of their size (here ~7e-3 nats); float32 keeps ~1e-6.
    assert (got.double() - exact).abs().max().item() < 1e-5


def _bottleneck(base: Path, data: Path, out: Path) -> Path:
    """Four large SFT steps from `base`: |Δc| then spans ~0.3-2.2 nats, on both sides of bf16's band."""
    tokenizer = load_tokenizer(str(base))
    items, _ = tokenize_corpus(tokenizer, load_corpus(data), TokenizeConfig())
    model = load_model(str(base), device=CPU).train()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    for item in items[:4]:
        ids = torch.tensor([item.input_ids])
        labels = ids.clone()
        labels[0, : item.response_start] = -100
        model(input_ids=ids, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _deltas(path: Path) -> np.ndarray:
    rows = pq.read_table(path).column("delta").to_pylist()
    flat = np.concatenate([np.asarray(d, dtype=np.float32) for d in rows])
    return flat[~np.isnan(flat)]


def _profile_both(models: dict[str, str], data: Path, out: Path) -> tuple[dict, np.ndarray, dict, np.ndarray]:
    """bf16 then float32 into the same file and cache, as a user re-scoring in float32 would."""
    kwargs = {"device": "cpu", "shard_size": 4}
    low = profile_standalone(models, data, out, TokenizeConfig(), dtype="bfloat16", **kwargs)
    low_delta = _deltas(out)
    high = profile_standalone(models, data, out, TokenizeConfig(), dtype="float32", **kwargs)
    return low, low_delta, high, _deltas(out)


def _check_band(low: dict, low_delta: np.ndarray, high: dict, high_delta: np.ndarray) -> np.ndarray:
    """The reported band and share are right, and outside the band the anchor sets agree."""
    assert (low["dtype"], high["dtype"]) == ("bfloat16", "float32")
    band = RESOLUTION["bfloat16"]
    assert low["delta"]["resolution"] == {
        "band": band,
        "within_share": pytest.approx(float((np.abs(low_delta) < band).mean())),
    }
    assert high["delta"]["resolution"]["band"] == RESOLUTION["float32"]
    outside = np.abs(low_delta) >= band
    assert 0 < outside.sum() < len(low_delta)
    np.testing.assert_array_equal((low_delta > 0)[outside], (high_delta > 0)[outside])
    return np.abs(low_delta - high_delta)


@pytest.fixture(scope="module")
def tiny_pair(tiny_model: Path, tmp_path_factory) -> tuple[Path, Path, tuple]:
    root = tmp_path_factory.mktemp("precision")
    data = write_jsonl(root / "c.jsonl", arithmetic_rows(8))
    neck = _bottleneck(tiny_model, data, root / "neck")
    models = {"base": str(tiny_model), "bottleneck": str(neck)}
    return data, root / "p.parquet", _profile_both(models, data, root / "p.parquet")


def test_float32_profile_after_a_bf16_one_is_scored_in_float32(tiny_pair) -> None:
    # The cache was filled in bf16 first: a cache keyed without the dtype would serve those scores.
    data, out, _ = tiny_pair
    neck = out.parent / "neck"
    items, _ = tokenize_corpus(load_tokenizer(str(neck)), load_corpus(data), TokenizeConfig())
    direct = dict(score(load_model(str(neck), device=CPU, dtype=torch.float32), items))
    for i, values in enumerate(pq.read_table(out).column("logprob_bottleneck").to_pylist()):
        np.testing.assert_allclose(np.asarray(values, dtype=np.float32), direct[i], atol=1e-5, equal_nan=True)


def test_bf16_anchor_set_agrees_with_float32_outside_the_band(tiny_pair) -> None:
    err = _check_band(*tiny_pair[2])
    assert 0 < err.max() < RESOLUTION["bfloat16"]


@pytest.mark.slow
def test_bf16_error_on_real_weights_stays_inside_the_band(smollm2_dir: Path, tmp_path: Path) -> None:
    from t3s.testbed.student import student_path

    data = write_jsonl(tmp_path / "c.jsonl", arithmetic_rows(8))
    models = {"base": str(smollm2_dir), "bottleneck": str(student_path())}
    err = _check_band(*_profile_both(models, data, tmp_path / "p.parquet"))
    # Real weights in bf16 move Δc far beyond float32's band, yet less than bf16's.
    assert RESOLUTION["float32"] < err.max() < RESOLUTION["bfloat16"]


def test_a_half_precision_profile_mostly_inside_its_band_warns(tiny_pair, tiny_model: Path, capsys) -> None:
    data, out, _ = tiny_pair
    models = {"base": str(tiny_model), "bottleneck": str(out.parent / "neck")}
    kwargs = {"device": "cpu", "shard_size": 4}
    low = profile_standalone(models, data, out, TokenizeConfig(), dtype="bfloat16", **kwargs)
    assert low["delta"]["resolution"]["within_share"] > 0.1
    err = " ".join(capsys.readouterr().err.split())
    assert f"{low['delta']['resolution']['within_share']:.0%} of response tokens have |Δc| < 2 nats" in err
    assert "--dtype float32" in err
    profile_standalone(models, data, out, TokenizeConfig(), dtype="float32", **kwargs)
    assert "warning" not in capsys.readouterr().err
