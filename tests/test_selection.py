"""Selection policies on a hand-made profile: exact masks, budgets, and refusals."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from t3s.errors import T3SError
from t3s.selection import SelectOptions, check_same_examples, mask_stats, masks_table, select

NAN = float("nan")


def profile(seed: int = 0, n: int = 6) -> pa.Table:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        length = int(rng.integers(8, 20))
        start = int(rng.integers(2, 5))
        base = np.full(length, NAN, dtype=np.float32)
        neck = np.full(length, NAN, dtype=np.float32)
        step = np.full(length, NAN, dtype=np.float32)
        base[start:] = -rng.exponential(1.0, length - start)
        neck[start:] = base[start:] + rng.normal(0, 1, length - start)
        step[start:] = base[start:] + rng.normal(0, 1, length - start)
        rows.append({"id": f"e{i}", "input_ids": rng.integers(5, 100, length).tolist(), "response_start": start,
                     "response_end": length, "logprob_base": base.tolist(), "logprob_bottleneck": neck.tolist(),
                     "logprob_step3": step.tolist(), "delta": (neck - base).tolist()})  # fmt: skip
    schema = pa.schema([("id", pa.string()), ("input_ids", pa.list_(pa.int32())), ("response_start", pa.int32()),
                        ("response_end", pa.int32())] + [(c, pa.list_(pa.float32())) for c in
                        ("logprob_base", "logprob_bottleneck", "logprob_step3", "delta")])  # fmt: skip
    return pa.Table.from_pylist(rows, schema=schema)


@pytest.fixture
def table() -> pa.Table:
    return profile()


def column(t: pa.Table, name: str) -> list[np.ndarray]:
    return [np.asarray(v, dtype=np.float32) for v in t.column(name).to_pylist()]


def test_t3s_drops_exactly_the_anchors_and_inverse_is_the_complement(table) -> None:
    for thr in (0.0, 0.5):
        keep = select(table, SelectOptions(policy="t3s", threshold=thr))
        inv = select(table, SelectOptions(policy="inverse", threshold=thr))
        for k, i, d, row in zip(keep, inv, column(table, "delta"), table.to_pylist(), strict=True):
            s, e = row["response_start"], row["response_end"]
            assert not k[:s].any() and not i[:s].any()  # prompt tokens are never trained
            np.testing.assert_array_equal(k[s:e], ~(d[s:e] > thr))
            np.testing.assert_array_equal(i[s:e], d[s:e] > thr)
            np.testing.assert_array_equal(k[s:e] ^ i[s:e], np.ones(e - s, dtype=bool))


def test_selector_uses_another_checkpoint(table) -> None:
    keep = select(table, SelectOptions(policy="t3s", selector="step3"))
    base, step = column(table, "logprob_base"), column(table, "logprob_step3")
    for k, b, s_, row in zip(keep, base, step, table.to_pylist(), strict=True):
        s = row["response_start"]
        np.testing.assert_array_equal(k[s:], ~((s_ - b)[s:] > 0))
    with pytest.raises(T3SError, match="no column 'logprob_step9'"):
        select(table, SelectOptions(policy="t3s", selector="step9"))


@pytest.mark.parametrize("policy", ["static-high", "static-low", "random"])
def test_budgeted_policies_match_the_t3s_budget(table, policy: str) -> None:
    t3s = select(table, SelectOptions(policy="t3s"))
    keep = select(table, SelectOptions(policy=policy, match="t3s", seed=1))
    assert sum(k.sum() for k in keep) == sum(k.sum() for k in t3s)
    if policy != "random":
        base = np.concatenate(
            [
                b[r]
                for b, r in zip(
                    column(table, "logprob_base"), select(table, SelectOptions(policy="sft")), strict=True
                )
            ]
        )
        kept = np.concatenate([b[k] for b, k in zip(column(table, "logprob_base"), keep, strict=True)])
        dropped_count = len(base) - len(kept)
        order = np.sort(base)
        if policy == "static-high":  # everything kept is at most the lowest dropped value
            assert kept.max() <= order[len(order) - dropped_count]
        else:
            assert kept.min() >= order[dropped_count - 1]


def test_random_is_seeded_byte_for_byte(table, tmp_path: Path) -> None:
    a = masks_table(table, select(table, SelectOptions(policy="random", fraction=0.3, seed=4)))
    b = masks_table(table, select(table, SelectOptions(policy="random", fraction=0.3, seed=4)))
    c = masks_table(table, select(table, SelectOptions(policy="random", fraction=0.3, seed=5)))
    pq.write_table(a, tmp_path / "a.parquet")
    pq.write_table(b, tmp_path / "b.parquet")
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    assert a.column("loss_mask") != c.column("loss_mask")
    stats = mask_stats(table, select(table, SelectOptions(policy="random", fraction=0.3, seed=4)))
    assert stats["dropped_fraction"] == pytest.approx(0.3, abs=1 / stats["response_tokens"])


def test_labels_and_loss_mask_agree(table) -> None:
    keep = select(table, SelectOptions(policy="t3s"))
    masks = masks_table(table, keep).to_pylist()
    for row, k in zip(masks, keep, strict=True):
        ids = np.asarray(row["input_ids"])
        np.testing.assert_array_equal(np.asarray(row["labels"]), np.where(k, ids, -100))
        np.testing.assert_array_equal(np.asarray(row["loss_mask"]), k.astype(np.int8))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"policy": "t3s", "threshold": 31}, "less than or equal to 30"),
        ({"policy": "t3s", "threshold": -0.1}, "greater than or equal to 0"),
        ({"policy": "random"}, "needs exactly one of fraction or match"),
        ({"policy": "t3s", "fraction": 0.2}, "takes no fraction or match"),
        ({"policy": "static-low", "fraction": 1.0}, "less than 1"),
        ({"policy": "best"}, "Input should be"),
    ],
)
def test_bad_options_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SelectOptions(**kwargs)


def test_profile_of_another_corpus_is_refused(table) -> None:
    other = profile(seed=1)
    with pytest.raises(T3SError, match="profiled on another corpus or tokenizer"):
        check_same_examples(
            table.select(["id", "input_ids", "response_start", "response_end"]), other, "x.parquet"
        )
    check_same_examples(
        table.select(["id", "input_ids", "response_start", "response_end"]), table, "x.parquet"
    )
