"""RRT on LoRA runs: θb and θf are PEFT adapters over θ0, checked against PEFT's own merge."""

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import arithmetic_rows, write_jsonl
from t3s.config import load_config
from t3s.errors import T3SError
from t3s.pipeline import run_pipeline
from t3s.rrt import rrt


def tiny_gpt2(path: Path) -> Path:
    """GPT-2 stores its Linear weights as (in, out) (Conv1D): its LoRA adapters set fan_in_fan_out."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(
        GPT2Config(vocab_size=100, n_positions=32, n_embd=16, n_layer=2, n_head=2)
    ).save_pretrained(path)
    return path


def make_adapter(base: Path, out: Path, seed: int, **lora: object) -> dict[str, torch.Tensor]:
    """Save a LoRA adapter over `base` with random nonzero A and B; return PEFT's merged weights."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(**lora))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                p.copy_(torch.randn_like(p) * 0.1)
    model.save_pretrained(out)
    return {k: v.clone() for k, v in model.merge_and_unload().state_dict().items()}


def assert_rrt_matches_merge(base: Path, out: Path, merged_b: dict, merged_f: dict) -> None:
    got, theta0 = load_file(out / "model.safetensors"), load_file(base / "model.safetensors")
    assert got.keys() == theta0.keys()
    changed = 0
    for name, value in got.items():
        expected = theta0[name] + merged_f[name] - merged_b[name]
        torch.testing.assert_close(value, expected, atol=1e-6, rtol=0)
        changed += not torch.equal(value, theta0[name])
    assert changed > 0


LLAMA_CASES = {
    "all-linear": {"r": 4, "lora_alpha": 8, "target_modules": "all-linear"},
    "rslora-layers-patterns": {
        "r": 4, "lora_alpha": 6, "use_rslora": True, "target_modules": ["q_proj", "v_proj", "down_proj"],
        "layers_to_transform": [1], "rank_pattern": {"v_proj": 2}, "alpha_pattern": {"down_proj": 3},
    },
    "embedding-modules-to-save": {
        "r": 3, "lora_alpha": 5, "target_modules": ["embed_tokens", "o_proj"], "modules_to_save": ["model.norm"],
    },
}  # fmt: skip


@pytest.mark.parametrize("case", LLAMA_CASES)
def test_rrt_of_two_adapters_equals_base_plus_merged_f_minus_merged_b(
    tiny_model: Path, tmp_path: Path, case: str
) -> None:
    lora = {"task_type": "CAUSAL_LM", **LLAMA_CASES[case]}
    merged_b = make_adapter(tiny_model, tmp_path / "neck", seed=1, **lora)
    merged_f = make_adapter(tiny_model, tmp_path / "final", seed=2, **lora)
    summary = rrt(tiny_model, tmp_path / "neck", tmp_path / "final", tmp_path / "out")
    assert_rrt_matches_merge(tiny_model, tmp_path / "out", merged_b, merged_f)
    assert summary["tensors"] == len(load_file(tiny_model / "model.safetensors"))
    # θ0's config and tokenizer files come along; no adapter file does.
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"config.json", "tokenizer.json", "model.safetensors"} <= files
    assert "adapter_config.json" not in files


def test_rrt_of_fan_in_fan_out_adapters(tmp_path: Path) -> None:
    base = tiny_gpt2(tmp_path / "gpt2")
    lora = {"r": 2, "lora_alpha": 4, "target_modules": ["c_attn", "c_fc"], "fan_in_fan_out": True}
    merged_b = make_adapter(base, tmp_path / "neck", seed=1, **lora)
    merged_f = make_adapter(base, tmp_path / "final", seed=2, **lora)
    rrt(base, tmp_path / "neck", tmp_path / "final", tmp_path / "out")
    assert_rrt_matches_merge(base, tmp_path / "out", merged_b, merged_f)


def test_rrt_of_a_full_bottleneck_and_an_adapter_final(tiny_model: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    lora = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "up_proj"]}
    merged_b = make_adapter(tiny_model, tmp_path / "neck-adapter", seed=1, **lora)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    model.load_state_dict(merged_b)
    model.save_pretrained(tmp_path / "neck")
    merged_f = make_adapter(tiny_model, tmp_path / "final", seed=2, **lora)
    rrt(tiny_model, tmp_path / "neck", tmp_path / "final", tmp_path / "out")
    assert_rrt_matches_merge(tiny_model, tmp_path / "out", merged_b, merged_f)


def test_t3s_rrt_command_takes_adapters_and_writes_a_loadable_model(tiny_model: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    lora = {"r": 4, "lora_alpha": 8, "target_modules": "all-linear"}
    merged_b = make_adapter(tiny_model, tmp_path / "neck", seed=1, **lora)
    merged_f = make_adapter(tiny_model, tmp_path / "final", seed=2, **lora)
    proc = subprocess.run(
        [sys.executable, "-m", "t3s.cli", "rrt", "--base", str(tiny_model), "--bottleneck",
         str(tmp_path / "neck"), "--final", str(tmp_path / "final"), "-o", str(tmp_path / "out")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("RRT: 20 tensors -> ")  # rich may wrap the path
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    expected = load_file(tiny_model / "model.safetensors")["model.layers.1.mlp.up_proj.weight"]
    expected = (
        expected
        + merged_f["model.layers.1.mlp.up_proj.weight"]
        - merged_b["model.layers.1.mlp.up_proj.weight"]
    )
    torch.testing.assert_close(model.model.layers[1].mlp.up_proj.weight.data, expected, atol=1e-6, rtol=0)


def _dora(base: Path, out: Path) -> None:
    make_adapter(base, out, seed=1, r=2, lora_alpha=4, target_modules=["q_proj"], use_dora=True)


def _pissa(base: Path, out: Path) -> None:
    make_adapter(base, out, seed=1, r=2, lora_alpha=4, target_modules=["q_proj"])
    cfg = json.loads((out / "adapter_config.json").read_text())
    (out / "adapter_config.json").write_text(json.dumps({**cfg, "init_lora_weights": "pissa"}))


def _lm_head(base: Path, out: Path) -> None:
    # The tiny model ties lm_head to the embeddings: its checkpoint has no lm_head.weight.
    make_adapter(base, out, seed=1, r=2, lora_alpha=4, target_modules=["q_proj", "lm_head"])


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_dora, "adapter_config.json sets use_dora=True; RRT handles plain LoRA adapters only"),
        (_pissa, "init_lora_weights='pissa' changes θ0's weights as well"),
        (
            _lm_head,
            "adapter tensor base_model.model.lm_head.base_layer.weight (lm_head.weight) matches no tensor",
        ),
    ],
)
def test_unsupported_adapters_are_refused_in_one_line(
    tiny_model: Path, tmp_path: Path, make: Callable[[Path, Path], None], message: str
) -> None:
    make(tiny_model, tmp_path / "final")
    make_adapter(tiny_model, tmp_path / "neck", seed=3, r=2, lora_alpha=4, target_modules=["q_proj"])
    with pytest.raises(T3SError, match="^" + str(tmp_path / "final")) as err:
        rrt(tiny_model, tmp_path / "neck", tmp_path / "final", tmp_path / "out")
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def write_config(root: Path, model: str, **extra: object) -> Path:
    cfg = {
        "run_dir": str(root / "run"),
        "model": model,
        "data": str(write_jsonl(root / "c.jsonl", arithmetic_rows(8))),
        "recipe": {"steps": 4, "batch_size": 4, "micro_batch_size": 2, "lr": 3e-3, "seed": 1},
        "probe": {"fixed_step": 2},
        "policies": ["sft"],
        "rrt": True,
        **extra,
    }
    path = root / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_run_refuses_lora_rrt_it_cannot_do_before_any_stage(tiny_model: Path, tmp_path: Path) -> None:
    lora = {"r": 2, "alpha": 4, "target_modules": ["q_proj", "lm_head"]}
    config = write_config(tmp_path, str(tiny_model), recipe={"steps": 4, "lora": lora})
    proc = subprocess.run(
        [sys.executable, "-m", "t3s.cli", "run", str(config)], capture_output=True, text=True
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith("error: rrt with recipe.lora: adapter tensor base_model.model.lm_head.")
    assert "matches no tensor of θ0" in proc.stderr and proc.stderr.count("\n") == 1
    assert not (tmp_path / "run").exists()  # no stage ran, not even tokenize


def test_run_refuses_rrt_from_a_hub_model_before_any_stage(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path, "HuggingFaceTB/SmolLM2-135M"))
    with pytest.raises(T3SError, match="rrt: model 'HuggingFaceTB/SmolLM2-135M' is not a local checkpoint"):
        run_pipeline(cfg)
    assert not (tmp_path / "run").exists()


def test_lora_run_with_rrt_completes_and_its_rrt_is_the_merged_arithmetic(
    tiny_model: Path, tmp_path: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    lora = {"r": 4, "alpha": 8}
    config = write_config(tmp_path, str(tiny_model), recipe={"steps": 4, "batch_size": 4, "micro_batch_size": 2,
                                                             "lr": 3e-3, "seed": 1, "lora": lora})  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "t3s.cli", "run", str(config)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["models"]["rrt"] == str(run / "train" / "rrt" / "model")
    assert manifest["stages"]["rrt"]["status"] == "done"
    neck, final = (run / manifest["probe"][k] for k in ("bottleneck", "final"))
    assert (final / "adapter_config.json").exists() and not (final / "config.json").exists()

    def merged(adapter: Path) -> dict[str, torch.Tensor]:
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), adapter)
        return model.merge_and_unload().state_dict()

    merged_b, merged_f = merged(neck), merged(final)
    assert not torch.equal(merged_b["model.layers.0.self_attn.q_proj.weight"],
                           merged_f["model.layers.0.self_attn.q_proj.weight"])  # fmt: skip
    out = run / "train" / "rrt" / "model"
    assert_rrt_matches_merge(tiny_model, out, merged_b, merged_f)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model(torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, model.config.vocab_size)
