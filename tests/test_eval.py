"""Benchmark evaluation: bench loading, scores, durable per-sample resume, re-verification, timeouts."""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import importable_module, write_jsonl
from t3s.errors import T3SError
from t3s.evaluation import Bench, EvalSettings, evaluate, load_bench, output_paths
from t3s.generation import Completion, SamplingParams

CHECK_MODULE = '''
import time

from t3s.verify import Verdict


def exact(gold, completion):
    """The text after the last 'ANSWER ' must equal the gold answer; 'HANG' never returns."""
    answer = completion.rsplit("ANSWER ", 1)[1].strip() if "ANSWER " in completion else None
    if answer == "HANG":
        time.sleep(3600)
    return Verdict(answer == gold, answer)
'''


@pytest.fixture(scope="session")
def check_verifier(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A custom `module:function` verifier importable here and in the spawned verifier workers."""
    importable_module(tmp_path_factory.mktemp("verifiers"), "t3s_eval_check", CHECK_MODULE)
    return "t3s_eval_check:exact"


class FakeBackend:
    """Replies `work ANSWER <a>` with answers scripted per problem, in order; `<a>…` is truncated."""

    def __init__(self, tokenizer, script: dict[str, list[str]], fail_on_call: int | None = None) -> None:
        self.tokenizer, self.script, self.fail_on_call = tokenizer, script, fail_on_call
        self.used = dict.fromkeys(script, 0)
        self.calls: list[tuple[list[str], int, int]] = []  # (problem keys, n, seed)

    def generate(self, prompts: Sequence[list[int]], params: SamplingParams) -> list[list[Completion]]:
        if self.fail_on_call is not None and len(self.calls) == self.fail_on_call:
            raise KeyboardInterrupt  # a kill in the middle of an evaluation
        keys = [next(k for k in self.script if k in self.tokenizer.decode(p)) for p in prompts]
        self.calls.append((keys, params.n, params.seed))
        out = []
        for key in keys:
            answers = self.script[key]
            picked = [answers[(self.used[key] + j) % len(answers)] for j in range(params.n)]
            self.used[key] += params.n
            out.append(
                [
                    Completion(f"work ANSWER {a.rstrip('…')}", 5, "length" if a.endswith("…") else "stop")
                    for a in picked
                ]
            )
        return out


# q3's first sample reaches the right answer but is cut off: never correct, and it does not vote.
SCRIPT = {"1+1": ["2", "2", "3", "2"], "2+2": ["5", "4", "5", "5"], "3+3": ["6…", "1", "1", "6"]}
BENCH_ROWS = [
    {"id": "q1", "problem": "What is 1+1?", "answer": "2"},
    {"id": "q2", "problem": [{"role": "user", "content": "What is 2+2?"}], "answer": 4},
    {"id": "q3", "problem": "What is 3+3?", "answer": "6"},
]


@pytest.fixture
def bench(tmp_path: Path) -> Bench:
    return load_bench(write_jsonl(tmp_path / "arith.jsonl", BENCH_ROWS))


def settings(verifier: str, **kw) -> EvalSettings:
    return EvalSettings(**{"samples": 4, "temperature": 0.7, "max_new_tokens": 5, "verifier": verifier, **kw})


def run_fake(tiny_model: Path, tokenizer, bench: Bench, cfg: EvalSettings, out: Path, **backend_kw):
    backends: list[FakeBackend] = []

    def factory(path: str) -> FakeBackend:
        backends.append(FakeBackend(tokenizer, SCRIPT, **backend_kw))
        return backends[-1]

    summary = evaluate(str(tiny_model), bench, cfg, out, tokenizer=tokenizer, backend_factory=factory)
    return summary, backends


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- benchmarks ----------------------------------------------------------------------------------
def test_bench_reads_jsonl_parquet_and_prompt_columns(tmp_path: Path) -> None:
    b = load_bench(write_jsonl(tmp_path / "aime 24.jsonl", BENCH_ROWS))
    assert b.name == "aime_24"
    assert [(p.id, p.answer) for p in b.problems] == [("q1", "2"), ("q2", "4"), ("q3", "6")]
    assert b.problems[1].prompt == [{"role": "user", "content": "What is 2+2?"}]
    flat = [{"id": 7, "prompt": "What is 3+4?", "answer": "7", "extra": 1}]  # a corpus serves too
    pq.write_table(pa.Table.from_pylist(flat), tmp_path / "c.parquet")
    (p,) = load_bench(tmp_path / "c.parquet").problems
    assert (p.id, p.prompt, p.answer) == ("7", "What is 3+4?", "7")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"id": "a", "problem": "p"}', "b.jsonl:2: field 'answer': missing"),
        ('{"id": "a", "answer": "1"}', "b.jsonl:2: field 'problem': missing"),
        ('{"id": "a", "prompt": " ", "answer": "1"}', "b.jsonl:2: field 'prompt': empty"),
        (
            '{"id": "a", "problem": [{"role": "assistant", "content": "x"}], "answer": "1"}',
            "b.jsonl:2: field 'problem': the last prompt message must have role 'user'",
        ),
        ('{"id": "q1", "problem": "p", "answer": "1"}', "b.jsonl:2: field 'id': duplicate id 'q1'"),
        ('{"id": "a", "problem": "p", "answer": "1"', "b.jsonl:2: malformed JSON"),
    ],
)
def test_bad_bench_rows_name_file_line_and_field(tmp_path: Path, line: str, expected: str) -> None:
    path = tmp_path / "b.jsonl"
    path.write_text(json.dumps(BENCH_ROWS[0]) + "\n" + line + "\n")
    with pytest.raises(T3SError) as err:
        load_bench(path)
    assert expected in str(err.value)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(T3SError, match=r"empty\.jsonl: no rows"):
        load_bench(tmp_path / "empty.jsonl")


def test_output_paths() -> None:
    assert output_paths("x/results.json") == (Path("x/results.json"), Path("x/results.samples.jsonl"))
    assert output_paths("x/out") == (Path("x/out/results.json"), Path("x/out/samples.jsonl"))


# -- scores and records --------------------------------------------------------------------------
def expected_metrics() -> dict[str, float]:
    avg = [3 / 4, 1 / 4, 1 / 4]
    return {
        "avg@4": 5 / 12,
        "avg@4_stderr": statistics.stdev(avg) / 3**0.5,
        "pass@1": 5 / 12,
        "pass@2": (1 + 0.5 + 0.5) / 3,  # q1: 1 - C(1,2)/C(4,2); q2, q3: 1 - C(3,2)/C(4,2)
        "pass@4": 1.0,
        "maj@1": 1 / 3,  # q1 "2" right; q2 "5" wrong; q3's first sample was cut off: no vote
        "maj@2": 1 / 3,  # q2: "5" vs "4" tie, "5" first; q3: only "1" votes
        "maj@4": 1 / 3,  # q2: "5" x3; q3: "1" x2 beats "6"
        "tokens": 60,
        "truncated": 1 / 12,
    }


def test_scores_and_sample_records(
    tmp_path: Path, tiny_model: Path, tokenizer, bench, check_verifier
) -> None:
    cfg = settings(check_verifier, chunk=2)
    summary, (backend,) = run_fake(tiny_model, tokenizer, bench, cfg, tmp_path / "res.json")
    for key, value in expected_metrics().items():
        assert summary["metrics"][key] == pytest.approx(value), key
    assert [(p["id"], p["correct"]) for p in summary["per_problem"]] == [("q1", 3), ("q2", 1), ("q3", 1)]
    assert [len(keys) for keys, _, _ in backend.calls] == [2, 1]  # chunks of 2 problems
    assert json.loads((tmp_path / "res.json").read_text()) == summary
    records = lines(tmp_path / "res.samples.jsonl")
    assert len(records) == 12
    q3 = [r for r in records if r["id"] == "q3"]
    assert [(r["sample"], r["extracted"], r["correct"], r["finish_reason"]) for r in q3] == [
        (0, "6", False, "length"),
        (1, "1", False, "stop"),
        (2, "1", False, "stop"),
        (3, "6", True, "stop"),
    ]
    assert {
        "id",
        "sample",
        "completion",
        "extracted",
        "correct",
        "num_tokens",
        "finish_reason",
        "answer",
    } <= set(records[0])


def test_resume_after_a_kill_generates_only_what_is_missing(
    tmp_path: Path, tiny_model: Path, tokenizer, bench, check_verifier
) -> None:
    cfg = settings(check_verifier, chunk=1)
    out = tmp_path / "res.json"
    samples = tmp_path / "res.samples.jsonl"
    with pytest.raises(KeyboardInterrupt):
        run_fake(tiny_model, tokenizer, bench, cfg, out, fail_on_call=1)
    assert not out.exists()
    assert [r["id"] for r in lines(samples)] == ["q1"] * 4
    with open(samples, "a") as fh:
        fh.write('{"id": "q2", "sample": 0, "compl')  # torn by the kill

    summary, (backend,) = run_fake(tiny_model, tokenizer, bench, cfg, out)
    assert [keys for keys, _, _ in backend.calls] == [["2+2"], ["3+3"]]
    assert summary["generated"] == 8
    for key, value in expected_metrics().items():
        assert summary["metrics"][key] == pytest.approx(value), key
    assert len(lines(samples)) == 12  # the torn tail was cut off, every line is whole

    # Complete: nothing is generated and no model is loaded.
    def no_backend(path: str):
        raise AssertionError("nothing should be generated")

    again = evaluate(str(tiny_model), bench, cfg, out, tokenizer=tokenizer, backend_factory=no_backend)
    assert again["generated"] == 0 and again["metrics"] == summary["metrics"]

    # More samples: only samples 4..7, drawn with a seed of their own.
    seeds = {seed for _, _, seed in backend.calls}
    more, (extra,) = run_fake(
        tiny_model, tokenizer, bench, cfg.model_copy(update={"samples": 8, "chunk": 8}), out
    )
    assert extra.calls == [(["1+1", "2+2", "3+3"], 4, extra.calls[0][2])]
    assert extra.calls[0][2] not in seeds
    assert more["generated"] == 12 and more["samples"] == 8
    assert sorted(r["sample"] for r in lines(samples) if r["id"] == "q1") == list(range(8))

    # Other sampling parameters: a key space of their own in the same file.
    other, _ = run_fake(tiny_model, tokenizer, bench, cfg.model_copy(update={"temperature": 1.0}), out)
    assert other["generated"] == 12 and other["params_hash"] != summary["params_hash"]
    assert len(lines(samples)) == 24 + 12


def q2_answer_changed(bench: Bench) -> Bench:
    """The benchmark with q2's gold answer changed to 5: its stored samples must be re-verified."""
    return Bench(
        bench.name, bench.path, [replace(p, answer="5") if p.id == "q2" else p for p in bench.problems]
    )


def test_changed_gold_answer_is_reverified_not_regenerated(
    tmp_path: Path, tiny_model: Path, tokenizer, bench, check_verifier
) -> None:
    cfg = settings(check_verifier)
    out = tmp_path / "res.json"
    run_fake(tiny_model, tokenizer, bench, cfg, out)
    fixed = q2_answer_changed(bench)

    def no_backend(path: str):
        raise AssertionError("a new gold answer needs no new generation")

    summary = evaluate(str(tiny_model), fixed, cfg, out, tokenizer=tokenizer, backend_factory=no_backend)
    assert summary["generated"] == 0
    assert [p["correct"] for p in summary["per_problem"]] == [3, 3, 1]
    assert summary["metrics"]["maj@4"] == pytest.approx(2 / 3)
    assert len(lines(out.with_suffix(".samples.jsonl"))) == 12 + 4  # q2's samples again, re-verified


def test_a_hanging_verifier_times_out_without_stopping_the_run(
    tmp_path: Path, tiny_model: Path, tokenizer, check_verifier
) -> None:
    bench = load_bench(write_jsonl(tmp_path / "b.jsonl", BENCH_ROWS[:1]))

    def factory(path: str) -> FakeBackend:
        return FakeBackend(tokenizer, {"1+1": ["HANG", "2", "2"]})

    cfg = settings(check_verifier, samples=3, verify_timeout=1.0, max_verifier_errors=0.5)
    start = time.monotonic()
    summary = evaluate(
        str(tiny_model), bench, cfg, tmp_path / "r.json", tokenizer=tokenizer, backend_factory=factory
    )
    assert time.monotonic() - start < 30
    records = lines(tmp_path / "r.samples.jsonl")
    assert [(r["correct"], r["error"]) for r in records] == [
        (False, "timeout after 1 s"),
        (True, None),
        (True, None),
    ]
    assert summary["metrics"]["avg@3"] == pytest.approx(2 / 3)
    assert summary["metrics"]["verifier_errors"] == 1  # counted apart, still wrong in avg@3


def test_vllm_backend_mapping_with_a_fake_vllm(
    tmp_path: Path, tiny_model: Path, tokenizer, bench, check_verifier, monkeypatch
) -> None:
    import types

    from t3s.tokens import encode_prompt

    seen: dict = {"requests": []}

    class LLM:
        def __init__(self, **kwargs) -> None:
            seen["init"] = kwargs

        def generate(self, requests, sp, use_tqdm=True):
            seen["requests"] += requests
            seen["params"] = sp.kwargs
            outputs = [
                types.SimpleNamespace(text="so ANSWER 2", token_ids=[5, 6, 2], finish_reason="stop"),
                types.SimpleNamespace(text="so ANSWER 2 and", token_ids=[1] * 7, finish_reason="length"),
            ]
            return [types.SimpleNamespace(outputs=outputs[: sp.kwargs["n"]]) for _ in requests]

    class FakeSamplingParams:
        def __init__(self, **kwargs) -> None:
            self.kwargs = kwargs

    monkeypatch.setitem(
        sys.modules, "vllm", types.SimpleNamespace(LLM=LLM, SamplingParams=FakeSamplingParams)
    )
    cfg = settings(check_verifier, samples=2, top_p=0.9, backend="vllm", dtype="bf16")
    summary = evaluate(str(tiny_model), bench, cfg, tmp_path / "r.json")
    assert seen["init"] == {
        "model": str(tiny_model),
        "dtype": "bfloat16",
        "trust_remote_code": False,
        "tokenizer": str(tiny_model),
    }
    assert {k: v for k, v in seen["params"].items() if k != "seed"} == {
        "n": 2,
        "temperature": 0.7,
        "top_p": 0.9,
        "max_tokens": 5,
        "stop_token_ids": [2],  # SmolLM2's EOS is its template's <|im_end|>
    }
    assert seen["requests"] == [
        {"prompt_token_ids": encode_prompt(tokenizer, p.prompt, "auto")} for p in bench.problems
    ]
    records = lines(tmp_path / "r.samples.jsonl")
    assert [(r["num_tokens"], r["finish_reason"], r["stop_token"], r["correct"]) for r in records[:2]] == [
        (3, "stop", "<|im_end|>", True),
        (7, "length", None, False),
    ]
    assert summary["metrics"]["tokens"] == 3 * 10


def test_a_corrupt_samples_file_is_reported_not_trusted(
    tmp_path: Path, tiny_model: Path, tokenizer, bench, check_verifier
) -> None:
    (tmp_path / "r.samples.jsonl").write_text('{"id": "q1", "sample": 0}\nnot json\n')
    with pytest.raises(T3SError, match=r"r\.samples\.jsonl: a line is not valid JSON"):
        run_fake(tiny_model, tokenizer, bench, settings(check_verifier), tmp_path / "r.json")
    assert not (tmp_path / "r.json").exists()


def test_samples_written_before_stop_token_existed_are_reverified(
    tmp_path: Path, tiny_model: Path, tokenizer, bench, check_verifier
) -> None:
    cfg = settings(check_verifier)
    out = tmp_path / "res.json"
    run_fake(tiny_model, tokenizer, bench, cfg, out)
    samples = out.with_suffix(".samples.jsonl")
    old = [{k: v for k, v in r.items() if k != "stop_token"} for r in lines(samples)]
    write_jsonl(samples, old)
    fixed = q2_answer_changed(bench)

    def no_backend(path: str):
        raise AssertionError("stored samples need no new generation")

    summary = evaluate(str(tiny_model), fixed, cfg, out, tokenizer=tokenizer, backend_factory=no_backend)
    assert summary["generated"] == 0
    assert [p["correct"] for p in summary["per_problem"]] == [3, 3, 1]
    assert [r["stop_token"] for r in lines(samples)[12:]] == [None] * 4  # unknown for the old samples
