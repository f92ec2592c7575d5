"""The OpenAI-compatible teacher against a scripted HTTP server: the protocol details a real server
cannot be made to show on demand (reasoning fields, 429/503, 400, keys, several models)."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from conftest import write_jsonl
from t3s.errors import T3SError
from t3s.teacher.collect import TeacherSettings, collect_traces
from t3s.teacher.specs import parse_teachers

KEY = "s3cret-value-never-logged"
SETTINGS = TeacherSettings(samples=3, max_tokens=64, concurrency=2, retries=3, verify_timeout=30)


class Script:
    """What the fake server answers, and what it saw."""

    def __init__(self) -> None:
        self.models = ["stub-model"]
        self.bodies: list[dict[str, Any]] = []
        self.attempts: Counter[str] = Counter()
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    script: Script

    def log_message(self, *args: Any) -> None:  # keep pytest's output clean
        pass

    def _send(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._send(
            200, {"object": "list", "data": [{"id": m, "object": "model"} for m in self.script.models]}
        )

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.headers.get("Authorization") != f"Bearer {KEY}":
            self._send(401, {"error": {"message": "Invalid API key", "type": "auth"}})
            return
        script = self.script
        prompt = body["messages"][-1]["content"]
        with script.lock:
            script.bodies.append(body)
            script.attempts[prompt] += 1
            attempt = script.attempts[prompt]
            script.in_flight += 1
            script.max_in_flight = max(script.max_in_flight, script.in_flight)
        time.sleep(0.05)
        with script.lock:
            script.in_flight -= 1
        if prompt == "flaky" and attempt == 1:
            self._send(429, {"error": {"message": "slow down"}}, {"retry-after-ms": "10"})
        elif prompt == "flaky" and attempt == 2:
            self._send(503, {"error": {"message": "overloaded"}}, {"retry-after-ms": "10"})
        elif prompt == "too long":
            self._send(400, {"error": {"message": "prompt exceeds the context"}})
        else:
            message: dict[str, Any] = {"role": "assistant", "content": "So \\boxed{4}."}
            if prompt == "reason":
                message["reasoning_content"] = "2+2 makes 4"
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            usage = {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
            self._send(200, {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                             "choices": [choice], "usage": usage})  # fmt: skip


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Script]]:
    monkeypatch.setenv("STUB_KEY", KEY)
    script = Script()
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("H", (Handler,), {"script": script}))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", script
    server.shutdown()
    server.server_close()


def prompts(tmp_path: Path, *texts: str) -> Path:
    return write_jsonl(
        tmp_path / "p.jsonl", [{"id": t.replace(" ", "_"), "prompt": t, "answer": "4"} for t in texts]
    )


def run(url: str, path: Path, out: Path, settings: TeacherSettings = SETTINGS, **opts: Any) -> dict[str, Any]:
    specs = parse_teachers([f"t={url}"], opts.get("models", []), opts.get("keys", ["STUB_KEY"]))
    return collect_traces(path, specs, out, settings)["teachers"]["t"]


def test_one_request_per_sample_bounded_concurrency_and_reasoning_kept(
    stub: tuple[str, Script], tmp_path: Path
) -> None:
    url, script = stub
    path, out = prompts(tmp_path, "plain", "reason"), tmp_path / "out"
    stats = run(url, path, out)
    assert len(script.bodies) == 6 and all(b["n"] == 1 and b["max_tokens"] == 64 for b in script.bodies)
    assert {b["model"] for b in script.bodies} == {"stub-model"}  # the only model served
    assert len({b["seed"] for b in script.bodies}) == 6
    assert script.max_in_flight == 2
    assert stats["model"] == "stub-model" and stats["kept"] == 2 and stats["pass_rate"] == 1.0
    assert stats["tokens"]["kept"] == {"count": 2, "min": 7, "mean": 7.0, "max": 7}
    rows = {r["id"]: r for r in map(json.loads, (out / "t" / "corpus.jsonl").read_text().splitlines())}
    assert rows["reason"]["response"] == "<think>\n2+2 makes 4\n</think>\n\nSo \\boxed{4}."
    assert rows["plain"]["response"] == "So \\boxed{4}."
    # The raw parts are stored, so another format needs no new request.
    again = run(url, path, out, SETTINGS.model_copy(update={"reasoning_format": "content-only"}))
    assert again["requested"] == 0 and len(script.bodies) == 6
    rows = {r["id"]: r for r in map(json.loads, (out / "t" / "corpus.jsonl").read_text().splitlines())}
    assert rows["reason"]["response"] == "So \\boxed{4}."


def test_rate_limits_and_server_errors_are_retried(stub: tuple[str, Script], tmp_path: Path) -> None:
    url, script = stub
    stats = run(url, prompts(tmp_path, "flaky"), tmp_path / "out", SETTINGS.model_copy(update={"samples": 1}))
    assert script.attempts["flaky"] == 3  # 429, 503, then the answer
    assert stats["samples"] == 1 and stats["kept"] == 1 and stats["failed"] == 0


def test_a_rejected_request_is_counted_and_asked_again_next_run(
    stub: tuple[str, Script], tmp_path: Path
) -> None:
    url, script = stub
    path, out = prompts(tmp_path, "too long", "plain"), tmp_path / "out"
    stats = run(url, path, out)
    assert stats["failed"] == 3 and stats["samples"] == 3 and stats["dropped_ids"] == ["too_long"]
    assert "HTTP 400: prompt exceeds the context" in stats["failures"][0]
    assert script.attempts["too long"] == 3  # a 400 is not retried within the run
    again = run(url, path, out)
    assert again["requested"] == 3 and script.attempts["too long"] == 6


def test_api_key_comes_from_the_environment_and_is_never_written(
    stub: tuple[str, Script], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = stub
    path, out = prompts(tmp_path, "plain"), tmp_path / "out"
    with pytest.raises(T3SError, match=r"environment variable NOT_SET_VAR \(from --api-key-env\) is not set"):
        run(url, path, out, keys=["NOT_SET_VAR"])
    monkeypatch.setenv("WRONG_KEY", "nope")
    with pytest.raises(T3SError, match=r"the API key was refused \(HTTP 401\); put the key in \$WRONG_KEY"):
        run(url, path, out, keys=["WRONG_KEY"])
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(T3SError, match=r"refused \(HTTP 401\); put the key in \$OPENAI_API_KEY"):
        run(url, path, out, keys=[])  # no variable named: a placeholder key, which this server refuses
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    assert run(url, path, out, keys=[])["kept"] == 1
    written = "".join(p.read_text() for p in out.rglob("*") if p.is_file())
    assert "OPENAI_API_KEY" in written and KEY not in written


def test_the_model_must_be_served(stub: tuple[str, Script], tmp_path: Path) -> None:
    url, script = stub
    script.models = ["a", "b"]
    path, out = prompts(tmp_path, "plain"), tmp_path / "out"
    with pytest.raises(T3SError, match="it serves a, b; name the model with --teacher-model t=MODEL"):
        run(url, path, out)
    with pytest.raises(T3SError, match=r"model 'c' is not served \(it serves: a, b\)"):
        run(url, path, out, models=["c"])
    assert run(url, path, out, models=["b"])["model"] == "b"
    assert script.bodies[-1]["model"] == "b"


def test_unreachable_endpoint_fails_fast(tmp_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(T3SError, match=r"teacher 't' at http://127.0.0.1:9/v1: cannot reach the server"):
        run("http://127.0.0.1:9/v1", prompts(tmp_path, "plain"), tmp_path / "out", keys=[])
    assert time.monotonic() - start < 10
    assert not (tmp_path / "out" / "t" / "samples.jsonl").exists()
