"""maj@k votes by the verifier's equivalence of answers ("0.5" and "1/2" are one answer), not by string."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import importable_module, write_jsonl
from t3s.evaluation import EvalSettings, evaluate, load_bench
from t3s.metrics import problem_scores
from t3s.verify import VerifierPool, load_verifier
from test_eval import FakeBackend

CUSTOM = '''
import time

from t3s.verify import Verdict


def _answer(completion):
    return completion.rpartition("ANSWER ")[2].strip() or None


def same_number(a, b):
    """Answers that are the same number ("2", "2.0", "02"); "HANG" never returns."""
    if "HANG" in (a, b):
        time.sleep(3600)
    return float(a) == float(b)


def numeric(gold, completion):
    answer = _answer(completion)
    return Verdict(float(answer) == float(gold), answer)


numeric.equivalent = same_number


def exact(gold, completion):
    answer = _answer(completion)
    return Verdict(answer == gold, answer)
'''


@pytest.fixture(scope="session")
def custom(tmp_path_factory: pytest.TempPathFactory) -> str:
    importable_module(tmp_path_factory.mktemp("equivalence_verifiers"), "t3s_equivalence", CUSTOM)
    return "t3s_equivalence"


# -- the pure vote -------------------------------------------------------------------------------
def test_problem_scores_vote_by_group_by_hand() -> None:
    # Samples 0, 2, 3 are one answer (group 7), right; samples 1 and 4 another (group 2), wrong;
    # sample 5 has no answer. maj@1: sample 0 -> 1. maj@2: 1 vote each, the first group -> 1.
    # maj@4: group 7 has 3 of 4 -> 1. maj@6: group 7 has 3, group 2 has 2 -> 1.
    correct = [True, False, True, True, False, False]
    scores = problem_scores(correct, [7, 2, 7, 7, 2, None])
    assert {k: v for k, v in scores.items() if k.startswith("maj")} == {
        "maj@1": 1.0,
        "maj@2": 1.0,
        "maj@4": 1.0,
        "maj@6": 1.0,
    }
    # Samples 0 and 3 split: group 2 wins maj@4 (2 of 3 voters) and maj@6 (2 against 1 and 1).
    scores = problem_scores(correct, [0, 2, 2, 1, None, None])
    assert [scores[f"maj@{k}"] for k in (1, 2, 4, 6)] == [1.0, 1.0, 0.0, 0.0]
    assert scores["avg@6"] == pytest.approx(3 / 6)


# -- grouping ------------------------------------------------------------------------------------
def test_math_verify_groups_equivalent_answers() -> None:
    from t3s.verify import Grouping, group_answers, math_equivalent

    assert group_answers(math_equivalent, ["1/2", "0.5", "3", "\\frac{1}{2}"]) == Grouping((0, 0, 1, 0))
    answers = ["0.50", None, "3", "x = \\frac{1}{2}", "2^{-1}", "50\\%", "3.0", "\\text{east}"]
    assert group_answers(math_equivalent, answers) == Grouping((0, None, 1, 0, 0, 0, 1, 2))
    assert group_answers(None, answers) == Grouping((0, None, 1, 2, 3, 4, 5, 6))  # exact strings
    # verify(gold, answer) reads an assignment only when it is the gold: either direction counts.
    assert math_equivalent("0.5", "x = \\frac{1}{2}") and math_equivalent("x = \\frac{1}{2}", "0.5")
    assert not math_equivalent("3", "0.5") and not math_equivalent("(1,2)", "[1,2]")


def test_pool_groups_in_workers_and_a_hanging_grouping_is_an_error(custom: str) -> None:
    from t3s.sampling import check_verifier_errors
    from t3s.verify import Grouping

    pool = VerifierPool(load_verifier(f"{custom}:numeric"), workers=1, timeout=1.0)
    try:
        assert pool.grouping == f"{custom}:same_number"
        got = pool.group_answers([["2", "HANG", "2.0"], ["3", "03", None, "4"]])
    finally:
        pool.close()
    # The stuck problem falls back to exact strings and is marked; the one behind it is grouped.
    assert got == [Grouping((0, 1, 2), "timeout after 3 s"), Grouping((0, 0, None, 1))]
    assert check_verifier_errors(got, 0.5, "eval m", "--max-verifier-errors", "maj@k answer groupings") == 1


def test_math_verify_groups_in_the_pool() -> None:
    from t3s.verify import Grouping

    pool = VerifierPool(workers=1)
    try:
        assert pool.grouping == "math-verify"
        assert pool.group_answers([["1/2", "0.5", "3", "\\frac{1}{2}"]]) == [Grouping((0, 0, 1, 0))]
    finally:
        pool.close()
    assert VerifierPool(load_verifier("t3s.testbed.task:verify")).grouping == "exact"


# -- t3s eval ------------------------------------------------------------------------------------
BENCH = [
    {"id": "half", "problem": "What is one half?", "answer": "\\frac{1}{2}"},
    {"id": "simple", "problem": "What is a half again?", "answer": "1/2"},
]
# Exact strings vote "3" (2 of 5) over four spellings of 1/2; grouped, 1/2 has 3 of 5.
SCRIPT = {
    "one half": ["\\boxed{0.50}", "\\boxed{3}", "\\boxed{3}", "\\boxed{x = \\frac{1}{2}}", "\\boxed{2^{-1}}"],
    "half again": ["\\boxed{1/2}", "\\boxed{0.5}", "\\boxed{3}", "$\\frac{1}{2}$", "\\boxed{3}"],
}


def test_eval_maj_votes_by_math_verify_equivalence(tmp_path: Path, tiny_model: Path, tokenizer) -> None:
    bench = load_bench(write_jsonl(tmp_path / "b.jsonl", BENCH))
    cfg = EvalSettings(samples=5, max_new_tokens=5)
    summary = evaluate(str(tiny_model), bench, cfg, tmp_path / "r.json", tokenizer=tokenizer,
                       backend_factory=lambda path: FakeBackend(tokenizer, SCRIPT))  # fmt: skip
    half, simple = summary["per_problem"]
    assert (half["correct"], simple["correct"]) == (3, 3)
    # maj@4 of `half`: {0.50, x = 1/2} ties {3} at 2 votes, the first seen wins; maj@5: 1/2 has 3.
    assert [half[f"maj@{k}"] for k in (1, 2, 4, 5)] == [1.0, 1.0, 1.0, 1.0]
    assert [simple[f"maj@{k}"] for k in (1, 2, 4, 5)] == [1.0, 1.0, 1.0, 1.0]
    assert summary["metrics"]["maj@5"] == 1.0 and summary["metrics"]["maj_grouping_errors"] == 0
    assert summary["maj_grouping"] == "math-verify"


def test_custom_verifier_groups_by_its_equivalent_or_exact_strings(
    tmp_path: Path, tiny_model: Path, tokenizer, custom: str
) -> None:
    bench = load_bench(
        write_jsonl(tmp_path / "b.jsonl", [{"id": "two", "problem": "What is 1+1?", "answer": "2"}])
    )
    script = {"1+1": ["2.0", "3", "3", "2", "02"]}
    results = {}
    for fn in ("numeric", "exact"):
        cfg = EvalSettings(samples=5, max_new_tokens=5, verifier=f"{custom}:{fn}")
        results[fn] = evaluate(str(tiny_model), bench, cfg, tmp_path / f"{fn}.json", tokenizer=tokenizer,
                               backend_factory=lambda path: FakeBackend(tokenizer, script))  # fmt: skip
    assert results["numeric"]["metrics"]["maj@5"] == 1.0  # {2.0, 2, 02}: 3 votes against 2
    assert results["exact"]["metrics"]["maj@5"] == 0.0  # "3": 2 votes against 1 each
    assert results["numeric"]["maj_grouping"] == f"{custom}:same_number"
    assert results["exact"]["maj_grouping"] == "exact"
