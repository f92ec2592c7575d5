"""The dLLM sampler: seeded, never leaves mask tokens, counts tokens through the first end-of-turn,
parallel decoding, and the same job interface as the AR backends."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest
import torch

from conftest import build_tiny_model
from t3s.backends import BackendOptions
from t3s.dllm.a2d import convert_checkpoint, is_bidirectional, load_dllm
from t3s.dllm.sampler import (
    DiffusionEngine,
    DiffusionSampling,
    diffusion_backend,
    load_diffusion_engine,
    transfer_schedule,
)
from t3s.errors import T3SError
from t3s.generation import Job, SamplingParams
from t3s.models import load_tokenizer


@pytest.fixture(scope="module")
def student(tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("dllm")
    convert_checkpoint(str(build_tiny_model(tokenizer, root / "ar")), root / "a2d")
    return load_dllm(str(root / "a2d"), device=torch.device("cpu")), load_tokenizer(str(root / "a2d"))


PROMPTS = [[1, 504, 314, 253, 30, 17], [1, 1842, 30]]  # unequal lengths: left padding


def new_ids(engine: DiffusionEngine, params: SamplingParams) -> torch.Tensor:
    rows = [p for p in PROMPTS for _ in range(params.n)]
    blocks, per_block = engine._check(params)
    return engine._denoise(rows, params, blocks, per_block, torch.Generator().manual_seed(params.seed))


@pytest.mark.parametrize(("attention", "remasking"), [("full", "low_confidence"), ("block", "random")])
def test_seeded_and_never_leaves_mask_tokens(student, attention, remasking) -> None:
    model, tok = student
    engine = DiffusionEngine(model, tok, DiffusionSampling(steps=8, block_length=4, attention=attention,
                                                           remasking=remasking), progress=None)  # fmt: skip
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=8, seed=3)
    a, b = new_ids(engine, params), new_ids(engine, params)
    assert torch.equal(a, b)
    assert a.shape == (4, 8) and not (a == tok.mask_token_id).any()
    assert not torch.equal(a, new_ids(engine, params.model_copy(update={"seed": 4})))
    completions = engine.generate(PROMPTS, params)
    assert [len(c) for c in completions] == [2, 2]
    assert [c.num_tokens for cs in completions for c in cs] == [
        8,
        8,
        8,
        8,
    ]  # a random model never says <|im_end|>


class Scripted(torch.nn.Module):
    """A fake dLLM: at response position j it predicts `script[j]` with probability ~`confidence[j]`."""

    def __init__(self, vocab: int, prompt_length: int, script: list[int], confidence: list[float]) -> None:
        super().__init__()
        self.config = SimpleNamespace(_attn_implementation="sdpa")
        self.weight = torch.nn.Parameter(torch.zeros(vocab, 1))
        self.vocab, self.prompt_length, self.script, self.confidence = (
            vocab,
            prompt_length,
            script,
            confidence,
        )
        self.calls = 0

    def get_input_embeddings(self):
        return self

    def forward(self, input_ids, attention_mask, position_ids):
        self.calls += 1
        logits = torch.zeros(*input_ids.shape, self.vocab)
        for i in range(input_ids.shape[1]):
            j = int(position_ids[0, i]) - self.prompt_length
            if 0 <= j < len(self.script):
                logits[:, i, self.script[j]] = torch.logit(torch.tensor(self.confidence[j])) + torch.log(
                    torch.tensor(float(self.vocab - 1))
                )
        return SimpleNamespace(logits=logits)


def scripted_engine(tokenizer, script, confidence, settings: DiffusionSampling):
    tok = copy.deepcopy(tokenizer)
    tok.add_special_tokens({"mask_token": "<|mdm_mask|>"})
    model = Scripted(len(tok), 3, script, confidence)
    return DiffusionEngine(model, tok, settings, progress=None, template="plain"), model, tok


def test_token_count_stops_at_the_first_end_of_turn_and_later_blocks_are_skipped(tokenizer) -> None:
    eos = tokenizer.eos_token_id
    script = [504, 314, eos, 253, 30, 17, 30, 30]
    engine, model, tok = scripted_engine(tokenizer, script, [0.9] * 8, DiffusionSampling(block_length=4))
    [[done]] = engine.generate([[1, 504, 314]], SamplingParams(max_new_tokens=8))
    assert done.num_tokens == 3 and done.finish_reason == "stop" and done.stop_token == tok.eos_token
    assert done.text == tok.decode([504, 314])
    assert model.calls == 4  # one block of 4 one-token steps: the second block is never decoded
    engine, model, _ = scripted_engine(tokenizer, [504] * 8, [0.9] * 8, DiffusionSampling(block_length=4))
    [[cut]] = engine.generate([[1, 504, 314]], SamplingParams(max_new_tokens=8))
    assert cut.num_tokens == 8 and cut.finish_reason == "length"


def test_low_confidence_commits_the_most_confident_first_and_threshold_decodes_in_parallel(tokenizer) -> None:
    script, confidence = [504, 314, 253, 30], [0.3, 0.99, 0.5, 0.98]
    engine, model, _ = scripted_engine(
        tokenizer, script, confidence, DiffusionSampling(steps=2, block_length=4)
    )
    params = SamplingParams(max_new_tokens=4)
    rows = [[1, 504, 314]]
    first_step = engine._denoise(
        rows, params.model_copy(update={"max_new_tokens": 4}), 1, 1, torch.Generator()
    )
    assert first_step.tolist() == [script]
    # Two steps of two tokens: after the first, only the two confident positions are filled.
    seen = []
    original = engine._predict
    engine._predict = lambda logits, t, gen: seen.append(1) or original(logits, t, gen)
    engine._denoise(rows, params, 1, 2, torch.Generator())
    assert len(seen) == 2 and model.calls == 3
    parallel, model, _ = scripted_engine(
        tokenizer, script, confidence, DiffusionSampling(steps=4, block_length=4, threshold=0.9)
    )
    assert parallel._denoise(rows, params, 1, 4, torch.Generator()).tolist() == [script]
    assert model.calls == 3  # 0.99 and 0.98 together, then 0.5, then 0.3


def test_unsupported_settings_are_refused(student) -> None:
    model, tok = student
    engine = DiffusionEngine(model, tok, DiffusionSampling(block_length=4, steps=3), progress=None)
    with pytest.raises(T3SError, match="max_new_tokens 6 is not a multiple of the dLLM block length 4"):
        engine.generate(PROMPTS, SamplingParams(max_new_tokens=6))
    with pytest.raises(T3SError, match="dLLM steps 3 do not divide evenly over 2 blocks of 4 tokens"):
        engine.generate(PROMPTS, SamplingParams(max_new_tokens=8))
    with pytest.raises(T3SError, match="top_p must be 1, not 0.9"):
        engine.generate(PROMPTS, SamplingParams(max_new_tokens=8, top_p=0.9, temperature=1))
    plain = copy.deepcopy(tok)
    plain.mask_token = None
    with pytest.raises(T3SError, match="the dLLM's tokenizer has no mask token; convert the AR checkpoint"):
        DiffusionEngine(model, plain, DiffusionSampling())


def test_the_backend_serves_jobs_like_the_ar_backends(student) -> None:
    model, tok = student

    class Sink:
        def __init__(self) -> None:
            self.got: list = []

        def add(self, samples) -> None:
            self.got.extend(samples)

        def fail(self, job, sample, error) -> None:
            raise AssertionError(error)

    backend = diffusion_backend(model, tok, DiffusionSampling(block_length=4), BackendOptions(progress=None))
    sink = Sink()
    jobs = [Job("a", PROMPTS[0], "ka", (0, 1)), Job("b", "What is 2+2?", "kb", (0, 1))]
    backend.collect(jobs, SamplingParams(n=2, temperature=1.0, max_new_tokens=4), sink)
    assert sorted((job.id, k) for job, k, _ in sink.got) == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    assert all(0 < c.num_tokens <= 4 for _, _, c in sink.got)


def test_transfer_schedule_spreads_every_token() -> None:
    assert transfer_schedule(32, 32) == [1] * 32
    assert sum(transfer_schedule(7, 3)) == 7 and transfer_schedule(7, 3) == [3, 2, 2]


REMOTE_CONFIG = """from transformers import LlamaConfig


class CustomConfig(LlamaConfig):
    model_type = "t3s_custom_llama"
"""
REMOTE_MODEL = """from transformers import LlamaForCausalLM

from .configuration_custom import CustomConfig


class CustomForCausalLM(LlamaForCausalLM):
    config_class = CustomConfig
"""


def test_a_dllm_with_its_own_code_loads_for_eval_only_with_trust_remote_code(tokenizer, tmp_path) -> None:
    # LLaDA and Dream ship their modelling code: `t3s eval` must pass the user's flag to the model load.
    path = tmp_path / "custom"
    convert_checkpoint(str(build_tiny_model(tokenizer, tmp_path / "ar")), path)
    (path / "configuration_custom.py").write_text(REMOTE_CONFIG)
    (path / "modeling_custom.py").write_text(REMOTE_MODEL)
    config = json.loads((path / "config.json").read_text())
    config |= {
        "model_type": "t3s_custom_llama",
        "architectures": ["CustomForCausalLM"],
        "auto_map": {
            "AutoConfig": "configuration_custom.CustomConfig",
            "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM",
        },
    }
    (path / "config.json").write_text(json.dumps(config))
    sampling = DiffusionSampling(steps=4, block_length=4)
    with pytest.raises(T3SError, match="custom.*cannot load"):
        load_diffusion_engine(str(path), sampling, BackendOptions(device="cpu"))
    engine = load_diffusion_engine(str(path), sampling, BackendOptions(device="cpu", trust_remote_code=True))
    assert type(engine.model).__name__ == "CustomForCausalLM" and is_bidirectional(engine.model)
