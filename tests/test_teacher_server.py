"""`t3s teacher` against a real OpenAI-compatible server: llama.cpp serving SmolLM2-135M-Instruct.

The server ignores `n` and answers one request at a time (~65 tokens/s on one thread), so these
tests keep to a few prompts, a few samples and short generations.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import write_jsonl
from t3s.data import load_corpus
from t3s.errors import T3SError
from t3s.teacher.collect import TeacherSettings, collect_traces
from t3s.teacher.specs import parse_teachers
from test_teacher import cli, store_rows, subprocess_env

pytestmark = [
    pytest.mark.server,
    pytest.mark.skipif(
        __import__("importlib").util.find_spec("llama_cpp") is None,
        reason="llama_cpp is not importable: pip install 'llama-cpp-python[server]'",
    ),
]

KEY = "local-secret-key"
SETTINGS = TeacherSettings(
    samples=3, max_tokens=16, concurrency=2, verifier="test_teacher_verifiers:gold_any"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def llama_server(port: int) -> Iterator[subprocess.Popen]:
    from t3s.testbed.smollm2 import gguf_path

    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_path()), "--host", "127.0.0.1",
           "--port", str(port), "--n_threads", "1", "--n_ctx", "1024", "--model_alias", "smol",
           "--api_key", KEY, "--verbose", "False"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while True:
            try:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": f"Bearer {KEY}"}
                )
                urllib.request.urlopen(request, timeout=1).read()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("llama.cpp server did not start") from None
                time.sleep(0.2)
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    port = free_port()
    with llama_server(port):
        yield f"http://127.0.0.1:{port}/v1"


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLAMA_KEY", KEY)


def prompts(tmp_path: Path, n: int = 2) -> Path:
    rows = [
        {"id": "yes", "prompt": "Say only: yes", "answer": "ANY"},
        {"id": "impossible", "prompt": "What is 2+2? Answer with the number.", "answer": "never"},
        {"id": "color", "prompt": [{"role": "user", "content": "Name one color."}], "answer": "ANY"},
        {"id": "capital", "prompt": "What is the capital of France?", "answer": "ANY"},
    ]
    return write_jsonl(tmp_path / "prompts.jsonl", rows[:n])


def test_truncated_samples_are_never_kept_and_hopeless_prompts_dropped(server: str, tmp_path: Path) -> None:
    path, out = prompts(tmp_path), tmp_path / "out"
    specs = parse_teachers([f"smol={server}"], [], ["LLAMA_KEY"])
    collect_traces(path, specs, out, SETTINGS)
    stats = json.loads((out / "smol" / "stats.json").read_text())
    assert stats["model"] == "smol" and stats["samples"] == 6 and stats["requested"] == 6
    rows = store_rows(out / "smol" / "samples.jsonl")
    by_prompt = {p["id"]: p for p in stats["per_prompt"]}
    stopped = [r["sample"] for r in rows if r["prompt_id"] == "yes" and r["finish_reason"] == "stop"]
    assert by_prompt["yes"]["correct"] == len(stopped) and by_prompt["yes"]["kept_sample"] in (
        stopped or [None]
    )
    assert by_prompt["impossible"] == {**by_prompt["impossible"], "correct": 0, "kept_sample": None}
    assert "impossible" in stats["dropped_ids"]
    assert stats["truncated"] == sum(r["finish_reason"] == "length" for r in rows)
    assert all(1 <= r["num_tokens"] <= 16 for r in rows)
    corpus = load_corpus(out / "smol" / "corpus.jsonl")
    assert [e.id for e in corpus] == (["yes"] if stopped else [])

    # One new token cannot end a turn: every sample is truncated, so even the "ANY" prompt is dropped.
    tiny = collect_traces(path, specs, out, SETTINGS.model_copy(update={"max_tokens": 1}))["teachers"]["smol"]
    assert tiny["requested"] == 6 and tiny["truncated"] == 6 and tiny["kept"] == 0 and tiny["dropped"] == 2
    assert (out / "smol" / "corpus.jsonl").read_text() == ""


def test_killed_run_resumes_with_only_the_missing_requests(server: str, tmp_path: Path) -> None:
    path, out = prompts(tmp_path, n=4), tmp_path / "out"
    args = cli(*f"teacher --prompts {path} --teacher smol={server} --api-key-env LLAMA_KEY --samples 3 "
               f"--max-tokens 16 --concurrency 2 --verifier test_teacher_verifiers:gold_any --out {out}".split())  # fmt: skip
    env = subprocess_env(LLAMA_KEY=KEY)
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = out / "smol" / "samples.jsonl"
    deadline = time.time() + 90
    while time.time() < deadline and proc.poll() is None:
        if store.exists() and store.read_text().count("\n") >= 3:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = store_rows(store)
    assert 3 <= len(before) < 12, "the run finished before it could be killed"

    done = subprocess.run(args, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    after = store_rows(store)
    assert after[: len(before)] == before
    keys = [(r["prompt_hash"], r["sample"]) for r in after]
    assert len(keys) == 12 and len(set(keys)) == 12
    stats = json.loads((out / "smol" / "stats.json").read_text())
    assert stats["requested"] == 12 - len(before) and stats["received"] == 12 - len(before)
    answerable = {
        r["prompt_id"] for r in after if r["finish_reason"] == "stop" and r["prompt_id"] != "impossible"
    }
    assert {e.id for e in load_corpus(out / "corpus.jsonl")} == {f"smol/{i}" for i in answerable}


def start_and_kill_server_after(port: int, store: Path, rows: int, args: list[str]) -> subprocess.Popen:
    """Start a server and the command; kill the server once the store holds `rows` rows."""
    with llama_server(port) as server:
        run = subprocess.Popen(args, env=subprocess_env(LLAMA_KEY=KEY), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
        deadline = time.time() + 90
        while time.time() < deadline and run.poll() is None:
            if store.exists() and store.read_text().count("\n") >= rows:
                break
            time.sleep(0.02)
        server.send_signal(signal.SIGKILL)  # requests in flight die with it
        server.wait()
    assert run.poll() is None, "the run finished before the server went down"
    return run


def test_server_restarted_mid_run_is_retried_and_a_dead_one_fails_clearly(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    path, out = prompts(tmp_path, n=4), tmp_path / "out"
    args = cli(*f"teacher --prompts {path} --teacher smol={url} --api-key-env LLAMA_KEY --samples 3 --max-tokens 16 "
               f"--concurrency 2 --retries 8 --verifier test_teacher_verifiers:gold_any --out {out}".split())  # fmt: skip
    store = out / "smol" / "samples.jsonl"
    run = start_and_kill_server_after(port, store, 2, args)
    with llama_server(port):  # back within the client's backoff
        _, stderr = run.communicate(timeout=120)
        assert run.returncode == 0, stderr[-2000:]
    rows = store_rows(store)
    assert len(rows) == 12 and len({(r["prompt_hash"], r["sample"]) for r in rows}) == 12

    # A server that dies for good with few retries left: one line, and every stored sample stays.
    more = list(args)
    more[more.index("--samples") + 1] = "5"
    more[more.index("--retries") + 1] = "1"
    run = start_and_kill_server_after(port, store, 13, more)
    _, stderr = run.communicate(timeout=60)
    assert run.returncode == 2 and stderr.count("\n") == 1, stderr
    assert f"teacher 'smol' at {url}: cannot reach the server" in stderr and "after 1 retries" in stderr
    after = store_rows(store)
    assert after[:12] == rows and 13 <= len(after) < 20
    assert len({(r["prompt_hash"], r["sample"]) for r in after}) == len(after)


def test_bad_model_key_or_variable_are_one_line_errors(server: str, tmp_path: Path) -> None:
    path, out = prompts(tmp_path), tmp_path / "out"
    with pytest.raises(T3SError, match=r"model 'gpt-4' is not served \(it serves: smol\)"):
        collect_traces(path, parse_teachers([f"smol={server}"], ["gpt-4"], ["LLAMA_KEY"]), out, SETTINGS)
    args = cli(
        *f"teacher --prompts {path} --teacher smol={server} --api-key-env WRONG_KEY --out {out}".split()
    )
    proc = subprocess.run(args, env=subprocess_env(WRONG_KEY="not-the-key"), capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "the API key was refused (HTTP 401); put the key in $WRONG_KEY" in proc.stderr
    assert "not-the-key" not in proc.stderr and KEY not in proc.stderr
    env = {k: v for k, v in subprocess_env().items() if k != "ABSENT_KEY"}
    proc = subprocess.run(
        [*args[:-4], "--api-key-env", "ABSENT_KEY", *args[-2:]], env=env, capture_output=True, text=True
    )
    assert (
        proc.returncode == 2
        and "environment variable ABSENT_KEY (from --api-key-env) is not set" in proc.stderr
    )
    assert not (out / "smol" / "samples.jsonl").exists()
