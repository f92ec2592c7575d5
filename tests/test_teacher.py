"""`t3s teacher` with the Python-function backend: selection, statistics, resumable store, bad input."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import write_jsonl
from t3s.data import load_corpus
from t3s.errors import T3SError
from t3s.fingerprint import digest
from t3s.generation import Completion, sample_seed
from t3s.store import SampleStore
from t3s.teacher.collect import TeacherSettings, collect_traces
from t3s.teacher.specs import parse_teacher, parse_teachers

TESTS = Path(__file__).parent
MATH = TeacherSettings(samples=4, verify_timeout=30)
# Same verdicts as math-verify on these \\boxed integers, without its seconds of import per worker.
SETTINGS = MATH.model_copy(update={"verifier": "test_teacher_verifiers:boxed_gold"})


# -- teachers used through `python:test_teacher:<function>` -----------------------------------------
def _numbers(prompt: str | list[dict[str, str]]) -> tuple[int, int]:
    text = prompt if isinstance(prompt, str) else prompt[-1]["content"]
    a, b = text.removeprefix("What is ").rstrip("?").split("+")
    return int(a), int(b)


def coin_teacher(prompt: str | list[dict[str, str]], *, sample: int, rng: random.Random) -> str:
    """Right with probability 1/2, otherwise off by one; always a \\boxed answer."""
    a, b = _numbers(prompt)
    answer = a + b + (0 if rng.random() < 0.5 else 1)
    return f"{a} + {b} = {answer}. The answer is \\boxed{{{answer}}}."


def slow_counting_teacher(prompt: str | list[dict[str, str]], *, sample: int, rng: random.Random) -> str:
    """Logs every call to $T3S_TEST_CALLS, so a test can count the requests sent."""
    with open(os.environ["T3S_TEST_CALLS"], "a") as fh:
        fh.write(f"{prompt}|{sample}\n")
    time.sleep(0.1)
    return coin_teacher(prompt, sample=sample, rng=rng)


def failing_teacher(prompt: str | list[dict[str, str]], *, sample: int, rng: random.Random) -> str:
    if sample == 2:
        raise ValueError("out of ideas")
    return "fine"


# -- helpers ----------------------------------------------------------------------------------------
def prompts_file(tmp_path: Path, n: int = 6) -> Path:
    rows: list[dict] = [
        {"id": f"p{i}", "prompt": f"What is {i}+{10 * i}?", "answer": str(11 * i)} for i in range(n)
    ]
    rows.append({"id": "never", "prompt": "What is 1+1?", "answer": "7"})
    rows.append({"id": "chat", "prompt": [{"role": "user", "content": "What is 2+3?"}], "answer": 5})
    return write_jsonl(tmp_path / "prompts.jsonl", rows)


def expected_correct(
    prompt: str | list[dict[str, str]], teacher: str, samples: int, seed: int = 0
) -> list[int]:
    """The sample indices coin_teacher gets right, from the seeding contract alone."""
    h = digest(prompt)
    return [k for k in range(samples) if random.Random(sample_seed(seed, teacher, h, k)).random() < 0.5]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from t3s.cli import main; main()", *args]


def subprocess_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **extra}


def store_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# -- specs ------------------------------------------------------------------------------------------
def test_teacher_specs_choose_the_backend() -> None:
    assert parse_teacher("r1=http://10.0.0.1:8000/v1/").target == "http://10.0.0.1:8000/v1"
    assert parse_teacher("q=vllm:/models/qwq").kind == "vllm"
    assert parse_teacher("q=hf:/models/qwq").target == "/models/qwq"
    assert parse_teacher("toy=python:pkg.mod:fn").kind == "python"
    specs = parse_teachers(
        ["a=http://h:1/v1", "b=https://api.example.com/v1", "toy=python:m:f"],
        models=["a=big-model"],
        api_key_envs=["KEY_FOR_ALL", "b=B_KEY"],
    )
    assert [(s.name, s.model, s.api_key_env) for s in specs] == [
        ("a", "big-model", "KEY_FOR_ALL"),
        ("b", None, "B_KEY"),
        ("toy", None, None),
    ]


@pytest.mark.parametrize(
    ("teachers", "extra", "message"),
    [
        (["no-equals-sign"], {}, "expected NAME=http://HOST:PORT/v1"),
        (["bad name=http://h/v1"], {}, "name 'bad name' must be letters"),
        (["a=python:module_without_function"], {}, "NAME=python:MODULE:FUNCTION"),
        (["a=ftp://h/v1"], {}, "only http:// and https://"),
        (["a=http://h/v1", "a=http://g/v1"], {}, "the name 'a' is used twice"),
        (["a=http://h/v1"], {"models": ["b=m"]}, "no teacher named 'b'"),
        (["a=python:m:f"], {"models": ["a=m"]}, "teacher 'a' is not an http(s) endpoint"),
    ],
)
def test_bad_teacher_specs(teachers: list[str], extra: dict, message: str) -> None:
    with pytest.raises(T3SError) as err:
        parse_teachers(teachers, **extra)
    assert message in str(err.value)


def test_reasoning_is_joined_as_asked() -> None:
    trace = Completion("The answer is 4.", reasoning="2+2 is 4")
    assert trace.with_reasoning("think-tags") == "<think>\n2+2 is 4\n</think>\n\nThe answer is 4."
    assert trace.with_reasoning("content-only") == "The answer is 4."
    assert Completion("just content").with_reasoning("think-tags") == "just content"


# -- collection, selection, statistics ---------------------------------------------------------------
def test_one_correct_trace_per_prompt_is_kept_and_counted(tmp_path: Path) -> None:
    prompts = prompts_file(tmp_path)
    specs = parse_teachers(
        ["coin=python:test_teacher:coin_teacher", "coin2=python:test_teacher:coin_teacher"]
    )
    summary = collect_traces(prompts, specs, tmp_path / "out", MATH)

    rows = [json.loads(line) for line in prompts.read_text().splitlines()]
    for name in ("coin", "coin2"):
        stats = json.loads((tmp_path / "out" / name / "stats.json").read_text())
        corpus = load_corpus(tmp_path / "out" / name / "corpus.jsonl")
        expected = {r["id"]: expected_correct(r["prompt"], name, 4) for r in rows}
        expected["never"] = []  # the gold answer 7 is never produced
        per_prompt = {p["id"]: p for p in stats["per_prompt"]}
        for pid, correct in expected.items():
            assert per_prompt[pid]["correct"] == len(correct)
            assert per_prompt[pid]["pass_rate"] == len(correct) / 4
            assert per_prompt[pid]["kept_sample"] in (correct or [None])
        kept_ids = sorted(pid for pid, correct in expected.items() if correct)
        assert sorted(e.id for e in corpus) == kept_ids
        assert stats["kept"] == len(kept_ids) and stats["dropped"] == len(rows) - len(kept_ids)
        assert "never" in stats["dropped_ids"]
        assert stats["samples"] == 4 * len(rows) and stats["requested"] == 4 * len(rows)
        assert stats["correct"] == sum(map(len, expected.values()))
        assert all(e.teacher == name and f"\\boxed{{{e.answer}}}" in e.response for e in corpus)
        chat = next((e for e in corpus if e.id == "chat"), None)
        assert chat is None or chat.prompt == [{"role": "user", "content": "What is 2+3?"}]
        assert summary["teachers"][name]["kept"] == stats["kept"]
    # The teachers' coins differ (the seed includes the teacher), and the combined corpus has both.
    assert (tmp_path / "out/coin/corpus.jsonl").read_text() != (
        tmp_path / "out/coin2/corpus.jsonl"
    ).read_text()
    combined = load_corpus(tmp_path / "out" / "corpus.jsonl")
    assert {e.id.split("/")[0] for e in combined} == {"coin", "coin2"}
    assert len(combined) == summary["teachers"]["coin"]["kept"] + summary["teachers"]["coin2"]["kept"]


def test_rerun_sends_nothing_and_new_parameters_start_a_new_key_space(tmp_path: Path) -> None:
    prompts = prompts_file(tmp_path, n=3)
    specs = parse_teachers(["coin=python:test_teacher:coin_teacher"])
    out = tmp_path / "out"
    first = collect_traces(prompts, specs, out, SETTINGS)["teachers"]["coin"]
    corpus = (out / "coin" / "corpus.jsonl").read_text()
    again = collect_traces(prompts, specs, out, SETTINGS)["teachers"]["coin"]
    assert again["requested"] == 0 and again["samples"] == first["samples"] == 20
    assert (out / "coin" / "corpus.jsonl").read_text() == corpus
    more = collect_traces(prompts, specs, out, SETTINGS.model_copy(update={"samples": 6}))["teachers"]["coin"]
    assert more["requested"] == 5 * 2 and more["samples"] == 30
    hotter = collect_traces(prompts, specs, out, SETTINGS.model_copy(update={"temperature": 1.0}))
    assert hotter["teachers"]["coin"]["requested"] == 20
    rows = store_rows(out / "coin" / "samples.jsonl")
    assert len(rows) == 50 and len({r["generation"] for r in rows}) == 2
    keys = [(r["generation"], r["prompt_hash"], r["sample"]) for r in rows]
    assert len(set(keys)) == len(keys)


def test_custom_verifier_decides_correctness(tmp_path: Path) -> None:
    prompts = prompts_file(tmp_path, n=2)
    settings = SETTINGS.model_copy(update={"verifier": "test_teacher_verifiers:bare_gold"})
    specs = parse_teachers(["coin=python:test_teacher:coin_teacher"])
    stats = collect_traces(prompts, specs, tmp_path / "out", settings)["teachers"]["coin"]
    # The completion ends with "\\boxed{N}." and never with the bare gold answer: nothing is kept.
    assert stats["correct"] == 0 and stats["kept"] == 0 and stats["dropped"] == 4


def test_teacher_errors_are_one_line_and_keep_the_store(tmp_path: Path) -> None:
    prompts = prompts_file(tmp_path, n=2)
    out = tmp_path / "out"
    with pytest.raises(T3SError, match=r"raised ValueError: out of ideas \(prompt 'p0', sample 2\)"):
        collect_traces(prompts, parse_teachers(["f=python:test_teacher:failing_teacher"]), out, SETTINGS)
    assert [r["sample"] for r in store_rows(out / "f" / "samples.jsonl")] == [0, 1]
    with pytest.raises(T3SError, match="teacher 'x': cannot import no_such_module:fn"):
        collect_traces(prompts, parse_teachers(["x=python:no_such_module:fn"]), out, SETTINGS)
    with pytest.raises(T3SError, match="verifier 'no_such_module:v': cannot import"):
        settings = SETTINGS.model_copy(update={"verifier": "no_such_module:v"})
        collect_traces(prompts, parse_teachers(["c=python:test_teacher:coin_teacher"]), out, settings)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"id": "a", "prompt": "p", "answer": "1"}\n{"id": "a"\n', "prompts.jsonl:2: malformed JSON"),
        ('{"id": "a", "prompt": [], "answer": "1"}\n', "prompts.jsonl:1: field 'prompt': empty message list"),
        (
            '{"id": 1, "prompt": "p", "answer": "1"}\n{"id": "1", "prompt": "q", "answer": "2"}\n',
            "duplicate id '1'",
        ),
        ("\n", "prompts.jsonl: no rows"),
    ],
)
def test_malformed_prompts_are_reported_by_row(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "prompts.jsonl"
    path.write_text(content)
    with pytest.raises(T3SError, match=re.escape(message)):
        collect_traces(path, parse_teachers(["c=python:test_teacher:coin_teacher"]), tmp_path / "o", SETTINGS)


def test_command_line_errors_are_one_line_and_exit_2(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "prompts.jsonl", [{"id": "a", "prompt": "p"}])
    args = cli(
        *f"teacher --prompts {path} --teacher c=python:test_teacher:coin_teacher --out {tmp_path}/o".split()
    )
    proc = subprocess.run(args, capture_output=True, text=True, env=subprocess_env())
    assert proc.returncode == 2
    assert proc.stderr == f"error: {path}:1: field 'answer': missing\n"


def test_killed_command_resumes_sending_only_missing_requests(tmp_path: Path) -> None:
    prompts = prompts_file(tmp_path, n=4)  # 6 prompts x 4 samples, 0.1 s each
    out, calls = tmp_path / "out", tmp_path / "calls.txt"
    teacher = "slow=python:test_teacher:slow_counting_teacher"
    verifier = "test_teacher_verifiers:boxed_gold"
    args = cli(
        *f"teacher --prompts {prompts} --teacher {teacher} --samples 4 --verifier {verifier} --out {out}".split()
    )
    env = subprocess_env(T3S_TEST_CALLS=str(calls))
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = out / "slow" / "samples.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if store.exists() and store.read_text().count("\n") >= 5:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = store_rows(store)
    assert 5 <= len(before) < 24, "the command finished before it could be killed"
    calls.unlink()

    done = subprocess.run(args, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    after = store_rows(store)
    assert after[: len(before)] == before  # nothing stored before the kill was lost or rewritten
    keys = [(r["prompt_hash"], r["sample"]) for r in after]
    assert len(after) == 24 and len(set(keys)) == 24
    assert len(calls.read_text().splitlines()) == 24 - len(before)
    assert json.loads((out / "slow" / "stats.json").read_text())["requested"] == 24 - len(before)
    # The resumed corpus is the one an uninterrupted run makes: samples depend on their key only.
    fresh = tmp_path / "fresh"
    collect_traces(prompts, parse_teachers(["slow=python:test_teacher:coin_teacher"]), fresh, SETTINGS)
    assert (fresh / "slow" / "corpus.jsonl").read_text() == (out / "slow" / "corpus.jsonl").read_text()


def test_store_ignores_a_torn_last_line_and_other_key_spaces(tmp_path: Path) -> None:
    path = tmp_path / "samples.jsonl"
    row = {
        "teacher": "t",
        "generation": "g1",
        "prompt_hash": "h",
        "sample": 0,
        "content": "x",
        "finish_reason": "stop",
    }
    other = {**row, "generation": "g2", "content": "y"}
    path.write_text(json.dumps(row) + "\n" + json.dumps(other) + "\n" + '{"teacher": "t", "gen')
    store = SampleStore(path, {"teacher": "t", "generation": "g1"}, key=("prompt_hash",))
    assert store.rows == {("h", 0): row}


def test_transformers_teacher_tops_up_prompts_missing_different_counts(
    tiny_model: Path, tmp_path: Path
) -> None:
    prompts, out = prompts_file(tmp_path, n=2), tmp_path / "out"  # 4 prompts, one a chat
    specs = parse_teachers([f"tiny=hf:{tiny_model}"])
    settings = SETTINGS.model_copy(update={"samples": 2, "max_tokens": 5, "temperature": 1.0})
    first = collect_traces(prompts, specs, out, settings)["teachers"]["tiny"]
    store = out / "tiny" / "samples.jsonl"
    rows = store_rows(store)
    assert len(rows) == 8 and first["requested"] == 8 and all(1 <= r["num_tokens"] <= 5 for r in rows)
    assert first["truncated"] == sum(r["finish_reason"] == "length" for r in rows)
    # Drop one sample of p0 and both of p1: the rerun asks for n=1 and n=2 in separate generate calls.
    kept = [r for r in rows if not (r["prompt_id"] == "p0" and r["sample"] == 1) and r["prompt_id"] != "p1"]
    store.write_text("".join(json.dumps(r) + "\n" for r in kept))
    again = collect_traces(prompts, specs, out, settings)["teachers"]["tiny"]
    rows = store_rows(store)
    assert again["requested"] == 3 and len(rows) == 8
    assert sorted((r["prompt_id"], r["sample"]) for r in rows[5:]) == [("p0", 1), ("p1", 0), ("p1", 1)]
