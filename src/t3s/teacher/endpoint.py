"""An OpenAI-compatible endpoint as a teacher (vLLM serve, SGLang, llama.cpp server, hosted APIs).

One chat-completion request per sample, so servers that ignore `n` stay correct, with at most
`concurrency` in flight. The `openai` client retries connection errors, timeouts, 408/409/429 and
5xx with exponential backoff (honouring Retry-After); what still fails after `retries` stops the
run with one line, and the samples already stored stay. A request the server rejects on its own
(400/422, e.g. a prompt longer than the context) is counted as failed and asked again next run.
The API key comes from an environment variable only and is never logged.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import Sequence
from typing import Any

from t3s.errors import T3SError
from t3s.generation import Completion, Job, SamplingParams, Sink, sample_seed
from t3s.tokens import _messages

DEFAULT_KEY_ENV = "OPENAI_API_KEY"
# Servers that need no key still want one in the Authorization header.
_NO_KEY = "t3s-no-key"
# Preflight listing of models: fail fast on an endpoint that is down instead of backing off for minutes.
_PREFLIGHT_RETRIES = 2


def _short(exc: Exception) -> str:
    """The server's own words (OpenAI's `error.message`, FastAPI's `detail`) on one short line."""
    body = getattr(exc, "body", None)
    text = (body.get("message") or body.get("detail")) if isinstance(body, dict) else None
    return " ".join(str(text or exc).split())[:300]


class EndpointBackend:
    def __init__(
        self,
        teacher: str,
        url: str,
        *,
        model: str | None = None,
        api_key_env: str | None = None,
        concurrency: int = 16,
        timeout: float = 3600.0,
        retries: int = 8,
    ) -> None:
        self.teacher, self.url = teacher, url
        self.model = model or ""
        self.concurrency, self.timeout, self.retries = concurrency, timeout, retries
        self.key_env = api_key_env or DEFAULT_KEY_ENV
        key = os.environ.get(self.key_env)
        if api_key_env is not None and not key:
            raise T3SError(
                f"teacher {teacher!r}: environment variable {api_key_env} (from --api-key-env) is not set"
            )
        self._api_key = key or _NO_KEY

    def info(self) -> dict[str, Any]:
        return {"backend": "openai", "endpoint": self.url, "model": self.model, "api_key_env": self.key_env}

    def _client(self, retries: int) -> Any:
        from openai import AsyncOpenAI

        return AsyncOpenAI(
            base_url=self.url, api_key=self._api_key, max_retries=retries, timeout=self.timeout
        )

    def _fatal(self, exc: Exception) -> T3SError:
        """The one-line error for a failure that no later request would escape."""
        import openai

        where = f"teacher {self.teacher!r} at {self.url}"
        if isinstance(exc, openai.APIConnectionError):  # includes timeouts
            return T3SError(f"{where}: cannot reach the server ({_short(exc)}) after {self.retries} retries")
        if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
            return T3SError(
                f"{where}: the API key was refused (HTTP {exc.status_code}); put the key in "
                f"${self.key_env} or name its variable with --api-key-env"
            )
        if isinstance(exc, openai.NotFoundError):
            return T3SError(f"{where}: model {self.model!r} not found (HTTP 404: {_short(exc)})")
        if isinstance(exc, openai.APIStatusError):
            return T3SError(f"{where}: HTTP {exc.status_code} after {self.retries} retries ({_short(exc)})")
        return T3SError(f"{where}: {type(exc).__name__}: {_short(exc)}")

    def prepare(self) -> None:
        """Reach the server and settle the model name: the one asked for, or the only one served."""
        asyncio.run(self._prepare())

    async def _prepare(self) -> None:
        import openai

        async with self._client(min(self.retries, _PREFLIGHT_RETRIES)) as client:
            try:
                served: list[str] | None = [m.id async for m in client.models.list()]
            except openai.NotFoundError:  # some gateways do not list models
                served = None
            except openai.APIError as exc:
                raise self._fatal(exc) from None
        where = f"teacher {self.teacher!r} at {self.url}"
        if self.model:
            if served is not None and self.model not in served:
                raise T3SError(
                    f"{where}: model {self.model!r} is not served (it serves: {', '.join(served) or 'nothing'})"
                )
        elif served is not None and len(served) == 1:
            self.model = served[0]
        else:
            listing = f"it serves {', '.join(served) or 'nothing'}" if served is not None else "no model list"
            raise T3SError(f"{where}: {listing}; name the model with --teacher-model {self.teacher}=MODEL")

    async def _request(self, client: Any, job: Job, sample: int, params: SamplingParams) -> Completion:
        response = await client.chat.completions.create(
            model=self.model,
            messages=_messages(job.prompt),
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_new_tokens,
            seed=sample_seed(params.seed, self.teacher, job.key, sample),
            n=1,
        )
        if not response.choices:
            raise T3SError(f"teacher {self.teacher!r} at {self.url}: a response without choices")
        choice = response.choices[0]
        message = choice.message
        # vLLM and SGLang reasoning parsers, DeepSeek: reasoning_content; OpenRouter and newer servers: reasoning.
        reasoning = getattr(message, "reasoning_content", None) or getattr(message, "reasoning", None)
        usage = response.usage
        return Completion(
            message.content or "",
            num_tokens=usage.completion_tokens if usage is not None else None,
            finish_reason=str(choice.finish_reason or "unknown"),
            reasoning=reasoning if isinstance(reasoning, str) and reasoning else None,
        )

    def collect(self, jobs: Sequence[Job], params: SamplingParams, sink: Sink) -> None:
        if jobs:
            asyncio.run(self._collect(jobs, params, sink))

    async def _collect(self, jobs: Sequence[Job], params: SamplingParams, sink: Sink) -> None:
        import openai

        queue = deque((job, k) for job in jobs for k in job.samples)

        async def worker(client: Any) -> None:
            while queue:
                job, k = queue.popleft()
                try:
                    completion = await self._request(client, job, k, params)
                except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
                    sink.fail(job, k, f"HTTP {exc.status_code}: {_short(exc)}")
                    continue
                except openai.APIError as exc:
                    raise self._fatal(exc) from None
                sink.add([(job, k, completion)])

        async with self._client(self.retries) as client:
            workers = [asyncio.create_task(worker(client)) for _ in range(min(self.concurrency, len(queue)))]
            try:
                await asyncio.gather(*workers)
            finally:
                for w in workers:
                    w.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
