"""The verifier pool: math-verify semantics, custom verifiers, and answers that never return."""

import time
from pathlib import Path

import pytest

from conftest import importable_module
from t3s.errors import T3SError
from t3s.verify import VerifierPool, load_verifier, math_verify

HANGING = """
import time
from t3s.verify import Verdict

def hang_on_loop(gold, completion):
    if completion == "LOOP":
        time.sleep(3600)
    return Verdict(completion == gold, completion)
"""


def test_math_verify_reads_the_final_answer() -> None:
    assert math_verify("137", "so the total is \\boxed{137}").correct
    assert math_verify("\\frac{1}{2}", "\\boxed{0.5}").correct
    assert not math_verify("137", "\\boxed{138}").correct
    assert math_verify("137", "no answer").extracted is None


def test_hanging_answers_time_out_and_healthy_ones_behind_them_do_not(tmp_path: Path) -> None:
    importable_module(tmp_path, "t3s_hanging", HANGING)
    fn = load_verifier("t3s_hanging:hang_on_loop")
    pool = VerifierPool(fn, workers=2, timeout=1.0)
    pairs = [("1", "LOOP"), ("1", "LOOP"), ("2", "2"), ("1", "LOOP"), ("3", "3"), ("4", "x"), ("5", "5")]
    start = time.monotonic()
    verdicts = pool.verify(pairs)
    pool.close()
    assert time.monotonic() - start < 60
    assert [v.error is not None for v in verdicts] == [True, True, False, True, False, False, False]
    assert [v.correct for v in verdicts] == [False, False, True, False, True, False, True]


def test_unknown_verifier_is_one_line() -> None:
    with pytest.raises(T3SError, match="verifier 'nope.mod:fn': cannot import nope.mod:fn"):
        load_verifier("nope.mod:fn")
