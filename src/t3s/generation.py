"""Generation behind one interface: jobs of missing samples in, finished samples out to a sink.

A `Backend` (built by `t3s.backends.make_backend`) receives jobs (the samples of one prompt still
missing) and hands every finished sample to a sink as soon as it has it. In-process backends run an
`Engine`, defined here: transformers (always there) or vLLM (when installed). Engine prompts are
token ids built by `t3s.tokens.encode_prompt`, so generation conditions on exactly the prefix that
training supervises after. An engine returns, per prompt, `n` completions with their token count and
whether they stopped by themselves (and at which token) or hit the length limit. A turn ends at the
tokenizer's EOS, the model's generation-config EOS ids and, when prompts use the chat template, the
template's own end-of-turn token (ChatML's <|im_end|> on a base model whose EOS is <|endoftext|>,
Llama-3's <|eot_id|>).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator
from rich.console import Console

if TYPE_CHECKING:
    import torch

from t3s.errors import T3SError
from t3s.fingerprint import digest
from t3s.progress import bar
from t3s.tokens import Template, uses_chat_template

console = Console(stderr=True)

ReasoningFormat = Literal["think-tags", "content-only"]


def _distinct_samples(n: int, temperature: float) -> None:
    """Refuse several samples per prompt at temperature 0: they would be one greedy answer repeated."""
    if n > 1 and temperature == 0:
        raise ValueError(f"{n} samples per prompt with temperature 0 would all be the same greedy answer")


class SamplingParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    n: int = Field(1, ge=1, description="samples per prompt")
    temperature: float = Field(0.0, ge=0, description="0 means greedy decoding")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling: the probability mass kept")
    max_new_tokens: int = Field(1024, ge=1, description="new tokens per sample")
    seed: int = Field(0, description="the sampling seed")

    @model_validator(mode="after")
    def _distinct(self) -> SamplingParams:
        _distinct_samples(self.n, self.temperature)
        return self


class SampledSettings(BaseModel):
    """A command's sampling settings: refused at once when they clash, turned into `SamplingParams`."""

    if TYPE_CHECKING:  # declared, with defaults and help, by each subclass
        samples: int
        temperature: float
        top_p: float
        max_new_tokens: int
        seed: int

    @model_validator(mode="after")
    def _distinct(self) -> SampledSettings:
        _distinct_samples(self.samples, self.temperature)
        return self

    def sampling(self) -> SamplingParams:
        return SamplingParams(
            n=self.samples,
            temperature=self.temperature,
            top_p=self.top_p,
            max_new_tokens=self.max_new_tokens,
            seed=self.seed,
        )


@dataclass(frozen=True)
class Completion:
    """One sample as the backend returned it; reasoning an endpoint sent in a separate field is kept apart."""

    text: str
    num_tokens: int | None = None  # through the stop token, when there is one; None: the server did not say
    finish_reason: str = "stop"  # engines: "stop" or "length"; endpoints: what the server said
    stop_token: str | None = None  # the token that ended a "stop" completion, e.g. <|im_end|>
    reasoning: str | None = None

    def with_reasoning(self, reasoning_format: ReasoningFormat) -> str:
        if reasoning_format == "think-tags" and self.reasoning:
            return f"<think>\n{self.reasoning}\n</think>\n\n{self.text}"
        return self.text


@dataclass(frozen=True)
class Job:
    """The samples of one prompt that are still missing."""

    id: str
    prompt: Any  # text or chat messages; token ids for in-process engines
    key: str  # the prompt's hash: its key in a sample store, and part of each sample's seed
    samples: tuple[int, ...]


class Sink(Protocol):
    def add(self, samples: Sequence[tuple[Job, int, Completion]]) -> None:
        """Finished samples (job, sample index, completion), handed over as soon as they are done."""

    def fail(self, job: Job, sample: int, error: str) -> None:
        """A sample the backend could not get (e.g. a prompt the server rejected); asked again next run."""


class Backend(Protocol):
    # What produces the samples (checkpoint and template, served model, function): part of a store's key.
    model: str

    def prepare(self) -> None:
        """Check the backend is usable (reachable, model served) before any sampling starts."""

    def info(self) -> dict[str, Any]:
        """A description for statistics; never a secret."""

    def collect(self, jobs: Sequence[Job], params: SamplingParams, sink: Sink) -> None:
        """Draw every sample of `jobs` (`params.n` is not used: each job names its samples)."""


def sample_seed(seed: int, source: str, prompt_key: str, sample: int) -> int:
    """The seed of one sample: reruns ask for (and a Python function produces) the same sample again."""
    return int(digest(seed, source, prompt_key, sample), 16) % 2**31


# -- engines: token ids in, completions out --------------------------------------------------------
OnBatch = Callable[[list[int], list[list[Completion]]], None]


class Engine(Protocol):
    def generate(
        self, prompts: Sequence[list[int]], params: SamplingParams, on_batch: OnBatch | None = None
    ) -> list[list[Completion]]:
        """`params.n` completions per prompt; an engine that works batch by batch also reports each
        batch (the indices of its prompts and their completions) to `on_batch` as it is done."""


# Text no template writes itself: where it lands in a rendered turn marks the end of the content.
_SENTINEL = "T3S-SENTINEL-CONTENT"


def end_of_turn_ids(tokenizer: Any) -> list[int]:
    """The special token(s) the chat template writes right after an assistant message's content."""
    messages = [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": _SENTINEL}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    if _SENTINEL not in text:
        return []
    after = text[text.rindex(_SENTINEL) + len(_SENTINEL) :].lstrip()
    special = set(tokenizer.all_special_ids)
    special.update(i for i, t in tokenizer.added_tokens_decoder.items() if t.special)
    ids = tokenizer(after, add_special_tokens=False)["input_ids"]
    return list(itertools.takewhile(lambda i: i in special, ids))


def stop_tokens(tokenizer: Any, template: Template = "auto", generation_config: Any = None) -> dict[int, str]:
    """Every token that ends a turn, by id: the tokenizer's EOS, the generation config's EOS ids and,
    when prompts use the chat template, its end-of-turn token(s)."""
    ids = {tokenizer.eos_token_id}
    if uses_chat_template(tokenizer, template):
        ids.update(end_of_turn_ids(tokenizer))
    gen_eos = getattr(generation_config, "eos_token_id", None)
    ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
    return {i: tokenizer.convert_ids_to_tokens(i) for i in sorted(i for i in ids if i is not None)}


def warn_if_mostly_truncated(
    completions: Sequence[Sequence[Completion]], params: SamplingParams, stops: dict[int, str]
) -> None:
    """A generate call whose samples mostly ran to the length limit scores mostly wrong answers."""
    flat = [c for cs in completions for c in cs]
    cut = sum(c.finish_reason == "length" for c in flat)
    if cut * 2 > len(flat):
        console.print(
            f"[yellow]warning:[/] {cut} of {len(flat)} samples hit the {params.max_new_tokens}-token "
            f"limit before a stop token ({', '.join(stops.values())}) and count as wrong; raise "
            "max_new_tokens, or check that the model ends its turns with one of these tokens",
            highlight=False,
            soft_wrap=True,  # one line, whatever the terminal's width
        )


def row_sampler(prompts: Sequence[list[int]], params: SamplingParams, device: Any) -> Any:
    """Logits processors that make greedy decoding sample at `params`' temperature and top-p, each row
    (sample k of a prompt) with a random stream seeded by (seed, prompt, k): by the Gumbel-max trick,
    argmax(log p + Gumbel noise) is a draw from p. A row's answer then does not depend on the other
    prompts of its batch, so it is the same whatever the batch size or the number of processes that
    share the prompts (vLLM's per-request seeds do the same).
    """
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

    seeds = [int(digest(params.seed, list(p), k), 16) % 2**63 for p in prompts for k in range(params.n)]

    class GumbelNoise(LogitsProcessor):
        def __init__(self) -> None:
            self.streams = [torch.Generator(device=device).manual_seed(seed) for seed in seeds]

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            u = torch.stack([torch.rand(scores.shape[1], generator=g, device=device) for g in self.streams])
            tiny = torch.finfo(u.dtype).tiny  # rand's 0 would give an infinite draw
            return scores + -torch.log(-torch.log(u.clamp(min=tiny))).to(scores.dtype)

    warpers = [TemperatureLogitsWarper(params.temperature)]
    if params.top_p < 1:
        warpers.append(TopPLogitsWarper(params.top_p))  # filtered tokens go to -inf and stay there
    return LogitsProcessorList([*warpers, GumbelNoise()])


class TransformersEngine:
    """Batched `model.generate` with left padding; stops each sequence at its end-of-turn token."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        batch_size: int = 32,
        progress: str | None = "generate",
        *,
        template: Template = "auto",
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.batch_size = batch_size
        self.progress = progress
        self.stops = stop_tokens(tokenizer, template, getattr(model, "generation_config", None))

    def _decode(self, row: torch.Tensor) -> Completion:
        ids = row.tolist()
        end = next((k for k, t in enumerate(ids) if t in self.stops), None)
        if end is None:
            return Completion(self.tokenizer.decode(ids, skip_special_tokens=True), len(ids), "length")
        ids = ids[: end + 1]
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return Completion(text, len(ids), "stop", self.stops[ids[-1]])

    def generate(
        self, prompts: Sequence[list[int]], params: SamplingParams, on_batch: OnBatch | None = None
    ) -> list[list[Completion]]:
        import torch

        with torch.inference_mode():
            return self._generate(prompts, params, on_batch)

    def _generate(
        self, prompts: Sequence[list[int]], params: SamplingParams, on_batch: OnBatch | None
    ) -> list[list[Completion]]:
        model = self.model
        was_training = model.training
        model.eval()
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        out: list[list[Completion]] = [[] for _ in prompts]
        try:
            with bar(self.progress or "generate", total=len(prompts), unit="prompts") as progress:
                for start in range(0, len(order), self.batch_size):
                    batch = order[start : start + self.batch_size]
                    new = self._generate_batch([prompts[i] for i in batch], params, start)
                    for b, i in enumerate(batch):
                        out[i] = [self._decode(new[b * params.n + k]) for k in range(params.n)]
                    if on_batch is not None:
                        on_batch(batch, [out[i] for i in batch])
                    progress.advance(len(batch))
        finally:
            model.train(was_training)
        warn_if_mostly_truncated(out, params, self.stops)
        return out

    def _generate_batch(self, prompts: list[list[int]], params: SamplingParams, start: int) -> Any:
        """The new tokens of `params.n` samples per prompt (row b·n + k: sample k of prompt b); each
        sampled row draws from a stream of its own (`row_sampler`)."""
        import torch

        model = self.model
        device = next(model.parameters()).device
        stop_ids = list(self.stops)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else stop_ids[0]
        # The n samples of a prompt are n rows (generate refuses num_return_sequences when greedy).
        rows = [p for p in prompts for _ in range(params.n)]
        width = max(len(p) for p in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for b, prompt in enumerate(rows):
            ids[b, width - len(prompt) :] = torch.tensor(prompt)
            mask[b, width - len(prompt) :] = 1
        kwargs: dict[str, Any] = {"do_sample": False}
        if params.temperature > 0:
            kwargs["logits_processor"] = row_sampler(prompts, params, device)
        return model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=params.max_new_tokens,
            eos_token_id=stop_ids,
            pad_token_id=pad,
            **kwargs,
        )[:, width:].cpu()


class VLLMEngine:
    """Offline vLLM (`LLM.generate` with n samples per prompt) over a checkpoint directory."""

    def __init__(
        self,
        model_path: str,
        stops: dict[int, str],
        *,
        dtype: str = "auto",
        trust_remote_code: bool = False,
        **engine: Any,
    ) -> None:
        try:
            from vllm import LLM
        except ImportError as exc:
            raise T3SError("backend 'vllm' needs vllm installed: pip install 't3s[vllm]'") from exc
        self.stops = stops
        self.llm = LLM(model=model_path, dtype=dtype, trust_remote_code=trust_remote_code, **engine)

    def _completion(self, out: Any) -> Completion:
        ids = list(out.token_ids)
        if out.finish_reason == "length":
            return Completion(out.text, len(ids), "length")
        # vLLM keeps the stop token as the last output id (and out of the text).
        return Completion(out.text, len(ids), "stop", self.stops.get(ids[-1]) if ids else None)

    def generate(
        self, prompts: Sequence[list[int]], params: SamplingParams, on_batch: OnBatch | None = None
    ) -> list[list[Completion]]:
        """One call for every prompt (vLLM schedules them itself): nothing is reported before the end."""
        from vllm import SamplingParams as VSamplingParams

        sp = VSamplingParams(
            n=params.n,
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_new_tokens,
            seed=params.seed,
            stop_token_ids=list(self.stops),
        )
        requests = [{"prompt_token_ids": list(p)} for p in prompts]
        outputs = self.llm.generate(requests, sp, use_tqdm=True)
        out = [[self._completion(o) for o in result.outputs] for result in outputs]
        warn_if_mostly_truncated(out, params, self.stops)
        return out
