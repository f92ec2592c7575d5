from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import build_tiny_model
from t3s.errors import T3SError
from t3s.rrt import rrt


@pytest.fixture
def three(tokenizer, tmp_path: Path) -> list[Path]:
    return [
        build_tiny_model(tokenizer, tmp_path / n, seed=s) for n, s in (("base", 0), ("neck", 1), ("final", 2))
    ]


def test_rrt_is_base_plus_final_minus_bottleneck(three: list[Path], tmp_path: Path) -> None:
    base, neck, final = three
    summary = rrt(base, neck, final, tmp_path / "out")
    got = load_file(tmp_path / "out" / "model.safetensors")
    b, n, f = (load_file(p / "model.safetensors") for p in three)
    assert summary["tensors"] == len(got) == len(f)
    for name in f:
        torch.testing.assert_close(got[name], b[name] + (f[name] - n[name]))
    assert (tmp_path / "out" / "config.json").exists() and (tmp_path / "out" / "tokenizer.json").exists()


def test_rrt_of_a_model_with_itself_as_bottleneck_is_the_base(three: list[Path], tmp_path: Path) -> None:
    base, _, final = three
    rrt(base, final, final, tmp_path / "out")
    got, b = load_file(tmp_path / "out" / "model.safetensors"), load_file(base / "model.safetensors")
    for name in b:
        torch.testing.assert_close(got[name], b[name])


def test_mismatched_models_are_refused(three: list[Path], tokenizer, tmp_path: Path) -> None:
    base, neck, final = three
    deeper = build_tiny_model(tokenizer, tmp_path / "deeper", layers=3)
    with pytest.raises(T3SError, match="RRT needs one architecture: num_hidden_layers differs"):
        rrt(base, deeper, final, tmp_path / "out")
    weights = load_file(neck / "model.safetensors")
    name = next(iter(weights))
    weights[name] = weights[name][:-1].contiguous()
    save_file(weights, neck / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(T3SError, match=f"tensor {name} has different shapes"):
        rrt(base, neck, final, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written
