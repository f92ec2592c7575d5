"""Tokenization with the model's own chat template, keeping the response span exact.

The prompt is rendered as the user turn(s) with the generation prompt, the response as the
assistant turn. Prompt and completion are tokenized separately and concatenated, so training
sees exactly the ids that generation from the same prompt would condition on. The supervised span
runs from the first completion token through the template's end-of-turn token.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from t3s.data import Example, Prompt
from t3s.errors import T3SError
from t3s.fingerprint import digest

Template = Literal["auto", "chat", "plain"]
Overlong = Literal["error", "truncate", "drop"]


class TokenizeConfig(BaseModel):
    """How examples become token ids; part of a run's identity (`fingerprint`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    template: Template = Field("auto", description="prompt format: auto (chat template if any), chat, plain")
    max_length: int = Field(4096, ge=2, description="maximum tokens per example")
    overlong: Overlong = Field("error", description="responses beyond --max-length: error, truncate or drop")

    def fingerprint(self) -> str:
        return digest(self.model_dump())


@dataclass(frozen=True)
class TokenizedExample:
    id: str
    input_ids: list[int]
    response_start: int
    response_end: int
    truncated: bool = False


def uses_chat_template(tokenizer: Any, template: Template) -> bool:
    if template == "chat" and not tokenizer.chat_template:
        raise T3SError("template 'chat' was asked for, but the tokenizer has no chat template")
    return template == "chat" or (template == "auto" and bool(tokenizer.chat_template))


def _messages(prompt: Prompt) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def _plain_prompt(prompt: Prompt) -> str:
    return prompt if isinstance(prompt, str) else "\n\n".join(m["content"] for m in prompt)


def render_prompt(tokenizer: Any, prompt: Prompt, template: Template = "auto") -> str:
    """The text a model is given to answer `prompt` (chat template with generation prompt, or raw)."""
    if uses_chat_template(tokenizer, template):
        return tokenizer.apply_chat_template(_messages(prompt), tokenize=False, add_generation_prompt=True)
    return _plain_prompt(prompt)


def encode_prompt(tokenizer: Any, prompt: Prompt, template: Template = "auto") -> list[int]:
    """Prompt token ids, identical to the prefix `tokenize_example` builds for the same prompt."""
    text = render_prompt(tokenizer, prompt, template)
    # Chat templates carry their own BOS in the text; a raw prompt gets the tokenizer's specials.
    add_special = not uses_chat_template(tokenizer, template)
    return list(tokenizer(text, add_special_tokens=add_special)["input_ids"])


def _completion_ids(tokenizer: Any, example: Example, prompt_text: str, chat: bool) -> list[int]:
    if not chat:
        if tokenizer.eos_token_id is None:
            raise T3SError("the tokenizer has no EOS token; the plain template needs one to end a response")
        return [*tokenizer(example.response, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
    full = tokenizer.apply_chat_template(
        [*_messages(example.prompt), {"role": "assistant", "content": example.response}], tokenize=False
    )
    if not full.startswith(prompt_text):
        raise T3SError(
            f"example {example.id!r}: the chat template renders the prompt differently with and without "
            "the response, so the response span is ambiguous; use --template plain or another template"
        )
    # The template's trailing newline after the end-of-turn token is not something to learn.
    completion = full[len(prompt_text) :].rstrip()
    return list(tokenizer(completion, add_special_tokens=False)["input_ids"])


def tokenize_example(tokenizer: Any, example: Example, config: TokenizeConfig) -> TokenizedExample | None:
    """Tokenize one example; None when it is too long and `overlong` is 'drop'."""
    chat = uses_chat_template(tokenizer, config.template)
    prompt_text = render_prompt(tokenizer, example.prompt, config.template)
    prompt_ids = encode_prompt(tokenizer, example.prompt, config.template)
    completion_ids = _completion_ids(tokenizer, example, prompt_text, chat)
    if len(prompt_ids) >= config.max_length:
        raise T3SError(
            f"example {example.id!r}: the prompt has {len(prompt_ids)} tokens, not less than max length "
            f"{config.max_length}; raise --max-length or remove the example"
        )
    total = len(prompt_ids) + len(completion_ids)
    truncated = False
    if total > config.max_length:
        if config.overlong == "drop":
            return None
        if config.overlong == "error":
            raise T3SError(
                f"example {example.id!r}: {total} tokens exceed max length {config.max_length}; "
                "pass --overlong truncate or --overlong drop, or raise --max-length"
            )
        completion_ids = completion_ids[: config.max_length - len(prompt_ids)]
        truncated = True
    return TokenizedExample(
        id=example.id,
        input_ids=prompt_ids + completion_ids,
        response_start=len(prompt_ids),
        response_end=len(prompt_ids) + len(completion_ids),
        truncated=truncated,
    )


@dataclass(frozen=True)
class TokenizeStats:
    examples: int
    kept: int
    dropped: int
    truncated: int
    response_tokens: int
    max_tokens: int


def tokenize_corpus(
    tokenizer: Any, examples: Sequence[Example], config: TokenizeConfig
) -> tuple[list[TokenizedExample], TokenizeStats]:
    out = [t for t in (tokenize_example(tokenizer, e, config) for e in examples) if t is not None]
    stats = TokenizeStats(
        examples=len(examples),
        kept=len(out),
        dropped=len(examples) - len(out),
        truncated=sum(t.truncated for t in out),
        response_tokens=sum(t.response_end - t.response_start for t in out),
        max_tokens=max((len(t.input_ids) for t in out), default=0),
    )
    if not out:
        raise T3SError(f"all {len(examples)} examples were dropped as longer than {config.max_length} tokens")
    return out, stats


TOKENS_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("input_ids", pa.list_(pa.int32())),
        ("response_start", pa.int32()),
        ("response_end", pa.int32()),
        ("truncated", pa.bool_()),
    ]
)


def tokens_table(items: Sequence[TokenizedExample]) -> pa.Table:
    return pa.table(
        {
            "id": [t.id for t in items],
            "input_ids": [t.input_ids for t in items],
            "response_start": [t.response_start for t in items],
            "response_end": [t.response_end for t in items],
            "truncated": [t.truncated for t in items],
        },
        schema=TOKENS_SCHEMA,
    )


def tokens_items(table: pa.Table) -> list[TokenizedExample]:
    """The examples of a tokens table (`tokens.parquet`)."""
    return [
        TokenizedExample(r["id"], r["input_ids"], r["response_start"], r["response_end"], r["truncated"])
        for r in table.to_pylist()
    ]


def tokens_fingerprint(items: Sequence[TokenizedExample]) -> str:
    h = hashlib.sha256()
    for t in items:
        h.update(t.id.encode("utf-8") + b"\x00")
        h.update(np.asarray([t.response_start, t.response_end, len(t.input_ids)], dtype=np.int64).tobytes())
        h.update(np.asarray(t.input_ids, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]
