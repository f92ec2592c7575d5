"""Generation backends behind one interface: transformers (always there) and vLLM (when installed).

Prompts are token ids built by `t3s.tokens.encode_prompt`, so generation conditions on exactly
the prefix that training supervises after. Each backend returns, per prompt, `n` completions
with their token count and whether they stopped by themselves or hit the length limit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch

from t3s.errors import T3SError
from t3s.progress import bar

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1
    temperature: float = 0.0  # 0 means greedy decoding
    top_p: float = 1.0
    max_new_tokens: int = 1024
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n < 1:
            raise T3SError(f"samples must be at least 1, got {self.n}")
        if self.temperature < 0:
            raise T3SError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise T3SError(f"top-p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise T3SError(f"max new tokens must be at least 1, got {self.max_new_tokens}")
        if self.n > 1 and self.temperature == 0:
            raise T3SError(
                f"{self.n} samples per prompt with temperature 0 would all be the same greedy answer"
            )


@dataclass(frozen=True)
class Completion:
    text: str
    num_tokens: int
    finish_reason: FinishReason


class Backend(Protocol):
    def generate(self, prompts: Sequence[list[int]], params: SamplingParams) -> list[list[Completion]]: ...


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every id that ends a turn: the tokenizer's EOS and the model's generation-config EOS ids."""
    ids = {tokenizer.eos_token_id}
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
    return sorted(i for i in ids if i is not None)


class TransformersBackend:
    """Batched `model.generate` with left padding; stops each sequence at its end-of-turn token."""

    def __init__(
        self, model: Any, tokenizer: Any, batch_size: int = 32, progress: str | None = "generate"
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.batch_size = batch_size
        self.progress = progress
        self.stop_ids = stop_token_ids(model, tokenizer)

    def _decode(self, row: torch.Tensor) -> Completion:
        ids = row.tolist()
        stops = [k for k, t in enumerate(ids) if t in self.stop_ids]
        if stops:
            ids = ids[: stops[0] + 1]
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return Completion(text, len(ids), "stop" if stops else "length")

    @torch.inference_mode()
    def generate(self, prompts: Sequence[list[int]], params: SamplingParams) -> list[list[Completion]]:
        model = self.model
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.stop_ids[0]
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        out: list[list[Completion]] = [[] for _ in prompts]
        sample = params.temperature > 0
        try:
            with bar(self.progress or "generate", total=len(prompts), unit="prompts") as progress:
                for start in range(0, len(order), self.batch_size):
                    batch = order[start : start + self.batch_size]
                    width = max(len(prompts[i]) for i in batch)
                    ids = torch.full((len(batch), width), pad, dtype=torch.long)
                    mask = torch.zeros((len(batch), width), dtype=torch.long)
                    for b, i in enumerate(batch):
                        ids[b, width - len(prompts[i]) :] = torch.tensor(prompts[i])
                        mask[b, width - len(prompts[i]) :] = 1
                    if sample:
                        torch.manual_seed(params.seed * 1_000_003 + start)
                    kwargs: dict[str, Any] = {"do_sample": sample}
                    if sample:
                        kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=0)
                    gen = model.generate(
                        input_ids=ids.to(device),
                        attention_mask=mask.to(device),
                        max_new_tokens=params.max_new_tokens,
                        num_return_sequences=params.n,
                        eos_token_id=self.stop_ids,
                        pad_token_id=pad,
                        **kwargs,
                    )[:, width:].cpu()
                    for b, i in enumerate(batch):
                        out[i] = [self._decode(gen[b * params.n + k]) for k in range(params.n)]
                    progress.advance(len(batch))
        finally:
            model.train(was_training)
        return out


class VLLMBackend:
    """Offline vLLM (`LLM.generate` with n samples per prompt) over a checkpoint directory."""

    def __init__(
        self, model_path: str, *, dtype: str = "auto", trust_remote_code: bool = False, **engine: Any
    ) -> None:
        try:
            from vllm import LLM
        except ImportError as exc:
            raise T3SError("backend 'vllm' needs vllm installed: pip install 't3s[vllm]'") from exc
        self.llm = LLM(model=model_path, dtype=dtype, trust_remote_code=trust_remote_code, **engine)

    def generate(self, prompts: Sequence[list[int]], params: SamplingParams) -> list[list[Completion]]:
        from vllm import SamplingParams as VSamplingParams

        sp = VSamplingParams(
            n=params.n,
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_new_tokens,
            seed=params.seed,
        )
        requests = [{"prompt_token_ids": list(p)} for p in prompts]
        outputs = self.llm.generate(requests, sp, use_tqdm=True)
        return [
            [
                Completion(o.text, len(o.token_ids), "length" if o.finish_reason == "length" else "stop")
                for o in result.outputs
            ]
            for result in outputs
        ]


BackendName = Literal["transformers", "vllm"]
