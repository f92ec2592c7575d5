import itertools
import math

import pytest

from t3s.metrics import majority_vote, mean_stderr, pass_at_k, problem_scores, report_ks, summarize


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (4, 1, 2, 0.5),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
        (4, 2, 2, 5 / 6),  # 1 - C(2,2)/C(4,2) = 1 - 1/6
        (10, 3, 1, 0.3),
        (16, 1, 16, 1.0),
        (16, 0, 8, 0.0),
        (5, 5, 1, 1.0),
        (5, 3, 3, 1.0),  # fewer wrong samples (2) than k: a correct one is always drawn
        (16, 4, 4, 1 - 495 / 1820),  # C(12,4)/C(16,4)
    ],
)
def test_pass_at_k_hand_values(n: int, c: int, k: int, expected: float) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_is_the_chance_a_k_subset_holds_a_correct_sample() -> None:
    for n in range(1, 8):
        for c in range(n + 1):
            samples = [True] * c + [False] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(samples, k))
                brute = sum(any(s) for s in subsets) / len(subsets)
                assert pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12)


def test_pass_at_1_is_mean_accuracy_and_large_n_stays_exact() -> None:
    for n, c in [(1, 0), (1, 1), (16, 5), (64, 63), (1000, 1)]:
        assert pass_at_k(n, c, 1) == pytest.approx(c / n, abs=1e-12)
    assert pass_at_k(1000, 1, 500) == pytest.approx(0.5, abs=1e-12)


@pytest.mark.parametrize(("n", "c", "k"), [(4, 5, 1), (4, -1, 1), (4, 1, 0), (4, 1, 5)])
def test_pass_at_k_rejects_impossible_arguments(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_report_ks_are_powers_of_two_and_n() -> None:
    assert report_ks(1) == [1]
    assert report_ks(16) == [1, 2, 4, 8, 16]
    assert report_ks(12) == [1, 2, 4, 8, 12]
    assert report_ks(3) == [1, 2, 3]


@pytest.mark.parametrize(
    ("answers", "winner"),
    [
        (["a", "b", "b"], 1),
        (["a", "b"], 0),  # tie: the answer seen first
        (["b", "a", "a", "b"], 0),
        (["c", "a", "b", "b", "a"], 1),  # a and b tie at 2; a appears first
        ([None, "b", None], 1),  # no answer does not vote
        ([None, None], None),
        ([], None),
    ],
)
def test_majority_vote(answers: list[str | None], winner: int | None) -> None:
    assert majority_vote(answers) == winner


def test_problem_scores_by_hand() -> None:
    correct = [False, True, True, False]
    answers = ["7", "5", "5", "7"]
    scores = problem_scores(correct, answers)
    assert scores == pytest.approx(
        {
            "avg@4": 0.5,
            "pass@1": 0.5,
            "pass@2": 5 / 6,
            "pass@4": 1.0,
            "maj@1": 0.0,  # the first sample alone: "7", wrong
            "maj@2": 0.0,  # "7" and "5" tie, "7" came first
            "maj@4": 0.0,  # 2-2 tie again, "7" first
        }
    )
    scores = problem_scores([False, True, True, True], [None, "5", "5", "6"])
    assert (scores["maj@1"], scores["maj@2"], scores["maj@4"]) == (0.0, 1.0, 1.0)
    with pytest.raises(ValueError):
        problem_scores([True], ["1", "2"])


def test_mean_stderr_and_summary() -> None:
    mean, se = mean_stderr([1.0, 0.0, 0.5])
    assert mean == pytest.approx(0.5)
    assert se == pytest.approx(0.5 / math.sqrt(3))  # sample sd 0.5 over 3 problems
    assert mean_stderr([0.25]) == (0.25, None)
    out = summarize([{"avg@2": 1.0, "pass@1": 1.0}, {"avg@2": 0.0, "pass@1": 0.0}])
    assert out == pytest.approx({"avg@2": 0.5, "avg@2_stderr": 0.5, "pass@1": 0.5, "pass@1_stderr": 0.5})
    with pytest.raises(ValueError, match="same scores"):
        summarize([{"avg@2": 1.0}, {"avg@4": 1.0}])
