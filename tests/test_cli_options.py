"""Typer options generated from settings models (`t3s.cli.model_options`) and the commands built with them."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest
import typer
from pydantic import BaseModel, ConfigDict, Field
from typer.testing import CliRunner

from t3s.cli import app, main
from t3s.cli.model_options import FromModel, settings_command
from t3s.probe import ProbeEval, ProbeSettings
from t3s.probe_search import AdaptiveSearch
from t3s.tokens import TokenizeConfig
from t3s.training import LoraSettings, TrainRecipe


class Sub(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size: int = Field(4, ge=1, description="the size")
    names: list[str] | str = Field("all", description="names (repeatable)")


class Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    every: int = Field(1, ge=1, description="how often")
    batch_size: int = Field(32, description="inner batch")


class Toy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_new_tokens: int = Field(1024, ge=1, description="new tokens")
    rate: float = Field(0.5, description="a rate")
    label: str | None = Field(None, description="a label")
    path: Path | None = Field(None, description="a path")
    flag: bool = Field(False, description="a flag")
    mode: Literal["fast", "slow"] = Field("fast", description="the mode")
    keep: list[int] = Field(default_factory=list, description="kept steps")
    inner: Inner = Field(default_factory=Inner, description="nested")
    sub: Sub | None = Field(None, description="turn the sub-model on")
    hidden: dict[str, int] = Field(default_factory=dict, description="no command-line form")


class Bare(BaseModel):
    x: int = 0


TOY = FromModel(
    rename={"keep": "--keep-step", "inner.batch_size": "--gen-batch-size"},
    exclude={"hidden"},
    flatten={"inner"},
    help={"rate": "the rate, on this command"},
)
built: list[Any] = []


def toy(name: Annotated[str, typer.Option("--name", "-n", help="a plain option")] = "x", *,
        toy: Annotated[Toy, TOY]) -> None:  # fmt: skip
    """A toy command."""
    built.append((name, toy))


def run_toy(*args: str) -> Any:
    toy_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    toy_app.command()(settings_command(toy))
    toy_app.command()(lambda: None)  # a second command, so that `toy` is a subcommand
    built.clear()
    result = CliRunner().invoke(toy_app, ["toy", *args], env={"COLUMNS": "200"})
    return result


def test_fields_become_options_with_help_and_defaults() -> None:
    result = run_toy("--help")
    assert result.exit_code == 0, result.output
    for flag, help_text in [
        ("--max-new-tokens", "new tokens [default: 1024]"),
        ("--rate", "the rate, on this command [default: 0.5]"),
        ("--label", "a label"),
        ("--path", "a path"),
        ("--flag", "a flag [default: no-flag]"),
        ("--mode", "[fast|slow]"),
        ("--keep-step", "kept steps"),
        ("--every", "how often [default: 1]"),
        ("--gen-batch-size", "inner batch [default: 32]"),
        ("--sub", "turn the sub-model on [default: no-sub]"),
        ("--sub-size", "the size [default: 4]"),
        ("--sub-names", "names (repeatable) [default: all]"),
    ]:
        line = next((ln for ln in result.output.splitlines() if f" {flag} " in ln), "")
        assert help_text in " ".join(line.split()), (flag, line)
    assert "--hidden" not in result.output and "--batch-size" not in result.output


def test_defaults_are_the_models_and_nothing_given_is_passed() -> None:
    assert run_toy().exit_code == 0
    name, model = built[0]
    assert name == "x" and model == Toy() and model.model_fields_set == set()


def test_given_options_build_the_model() -> None:
    result = run_toy("-n", "y", "--max-new-tokens", "5", "--rate", "2", "--label", "L", "--path", "p", "--flag",
                     "--mode", "slow", "--keep-step", "3", "--keep-step", "4", "--every", "2", "--gen-batch-size",
                     "8", "--sub", "--sub-names", "a", "--sub-names", "b")  # fmt: skip
    assert result.exit_code == 0, result.output
    name, model = built[0]
    assert name == "y"
    assert model == Toy(
        max_new_tokens=5, rate=2.0, label="L", path=Path("p"), flag=True, mode="slow", keep=[3, 4],
        inner=Inner(every=2, batch_size=8), sub=Sub(names=["a", "b"]),
    )  # fmt: skip
    assert run_toy("--sub").exit_code == 0 and built[0][1].sub == Sub()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mode", "medium"], "--mode: Input should be 'fast' or 'slow'"),
        (["--every", "0"], "--every: Input should be greater than or equal to 1"),
        (["--sub", "--sub-size", "0"], "--sub-size: Input should be greater than or equal to 1"),
        (["--sub-size", "2"], "--sub-size needs --sub"),
        (["--no-sub", "--sub-size", "2"], "--sub-size needs --sub"),
    ],
)
def test_bad_values_name_the_option(args: list[str], message: str) -> None:
    result = run_toy(*args)
    assert str(result.exception) == message and not built


def test_two_settings_on_one_flag_are_refused_when_the_command_is_built() -> None:
    def clash(*, toy: Annotated[Toy, FromModel(rename={"rate": "--label"}, exclude={"hidden"})]) -> None: ...

    with pytest.raises(ValueError, match=r"^clash: --label would set both toy.rate and toy.label$"):
        settings_command(clash)

    def clash_plain(rate: Annotated[float, typer.Option("--rate")] = 0.0, *,
                    toy: Annotated[Toy, FromModel(exclude={"hidden"})]) -> None: ...  # fmt: skip

    with pytest.raises(ValueError, match=r"--rate would set both rate and toy.rate"):
        settings_command(clash_plain)

    def seeds(*, recipe: Annotated[TrainRecipe, FromModel()],
              settings: Annotated[ProbeSettings, FromModel(flatten={"eval"})]) -> None: ...  # fmt: skip

    with pytest.raises(
        ValueError, match=r"--batch-size would set both recipe.batch_size and settings.eval.batch_size"
    ):
        settings_command(seeds)


def test_fields_without_a_command_line_form_or_help_are_refused() -> None:
    def unexcluded(*, toy: Annotated[Toy, FromModel()]) -> None: ...

    with pytest.raises(TypeError, match=r"Toy.hidden: .* has no command-line form; exclude it"):
        settings_command(unexcluded)

    def bare(*, b: Annotated[Bare, FromModel()]) -> None: ...

    with pytest.raises(TypeError, match="Bare.x has no description"):
        settings_command(bare)


def test_every_command_builds() -> None:
    group = typer.main.get_command(app)
    names = set(group.commands)  # type: ignore[attr-defined]
    expected = {"validate", "probe", "profile", "select", "export", "train", "rrt", "run", "analyze", "report",
                "demo", "eval", "teacher", "mix"}  # fmt: skip
    assert names == expected
    for command in group.commands.values():  # type: ignore[attr-defined]
        flags = [o for p in command.params for o in (*p.opts, *p.secondary_opts)]
        assert len(flags) == len(set(flags)), command.name


# -- t3s probe takes every recipe, LoRA, probe and tokenize setting --------------------------------
def _flags(model: type[BaseModel], prefix: str = "") -> list[str]:
    return [f"--{prefix}{name.replace('_', '-')}" for name in model.model_fields]


def test_probe_help_lists_every_setting() -> None:
    result = CliRunner().invoke(app, ["probe", "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0
    listed = set(result.output.split())
    renamed = {"--every": "--eval-every", "--prompts": "--eval-prompts", "--batch-size": "--gen-batch-size",
               "--seed": "--eval-seed", "--loss": "--eval-loss", "--keep-steps": "--keep-step"}  # fmt: skip
    probe_flags = [renamed.get(f, f) for f in [*_flags(ProbeSettings), *_flags(ProbeEval)] if f != "--eval"]
    probe_flags = [f for f in probe_flags if f != "--adaptive"] + _flags(AdaptiveSearch, "adaptive-")
    for flag in [*_flags(TrainRecipe), *_flags(LoraSettings, "lora-"), *probe_flags, *_flags(TokenizeConfig)]:
        assert flag in listed, flag
    assert {"--no-lora", "--no-gradient-checkpointing", "--no-eval-loss", "--no-freeze-embeddings"} <= listed


@pytest.fixture
def probe_calls(monkeypatch) -> list[dict[str, Any]]:
    import t3s.api

    calls: list[dict[str, Any]] = []

    def fake(run: Path, model: str, data: Path | None, **kwargs: Any) -> dict[str, Any]:
        calls.append({"model": model, **kwargs})
        return {"step": 2, "train_accuracy": 0.5, "bottleneck": "B"}

    monkeypatch.setattr(t3s.api, "probe", fake)
    return calls


def _probe(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["t3s", "probe", "--model", "M", "--run", "R", *args])
    with pytest.raises(SystemExit) as done:
        main()
    captured = capsys.readouterr()
    return int(done.value.code or 0), captured.out, captured.err


def test_probe_defaults_are_the_models(probe_calls, monkeypatch, capsys) -> None:
    code, out, _ = _probe(monkeypatch, capsys)
    assert code == 0 and "bottleneck θb: step 2, training accuracy 0.500 -> B" in out
    call = probe_calls[0]
    assert call["recipe"] == TrainRecipe() and call["settings"] == ProbeSettings()
    assert call["tokenize"] == TokenizeConfig() and call["model"] == "M"
    assert call["restart"] is False and call["trust_remote_code"] is False


def test_probe_builds_every_recipe_field(probe_calls, monkeypatch, capsys) -> None:
    code, _, err = _probe(
        monkeypatch, capsys,
        "--steps", "7", "--batch-size", "8", "--micro-batch-size", "2", "--lr", "2e-5", "--scheduler", "cosine",
        "--warmup-steps", "2", "--weight-decay", "0.1", "--adam-beta1", "0.8", "--adam-beta2", "0.9",
        "--max-grad-norm", "0.5", "--seed", "3", "--freeze-embeddings", "--freeze-layers", "1",
        "--gradient-checkpointing", "--param-dtype", "bfloat16", "--mixed-precision", "no",
        "--report-to", "tensorboard", "--optim", "adafactor",
        "--lora", "--lora-r", "4", "--lora-dropout", "0.1", "--lora-target-modules", "q_proj",
        "--lora-target-modules", "v_proj", "--lora-layers", "0", "--lora-layers", "1",
        "--mode", "all", "--keep-step", "2", "--keep-step", "4", "--eval-every", "2", "--eval-prompts", "3",
        "--samples", "2", "--temperature", "0.7", "--top-p", "0.9", "--max-new-tokens", "9",
        "--gen-batch-size", "5", "--backend", "transformers", "--verifier", "m:f", "--eval-seed", "9",
        "--no-eval-loss", "--heldout", "h.jsonl", "--heldout-prompts", "6", "--max-verifier-errors", "0.2",
        "--template", "plain", "--max-length", "128", "--overlong", "drop", "--restart",
    )  # fmt: skip
    assert code == 0, err
    call = probe_calls[0]
    assert call["recipe"] == TrainRecipe(
        steps=7, batch_size=8, micro_batch_size=2, lr=2e-5, scheduler="cosine", warmup_steps=2, weight_decay=0.1,
        adam_beta1=0.8, adam_beta2=0.9, max_grad_norm=0.5, seed=3, freeze_embeddings=True, freeze_layers=1,
        gradient_checkpointing=True, param_dtype="bfloat16", mixed_precision="no", report_to=["tensorboard"],
        optim="adafactor",
        lora=LoraSettings(r=4, alpha=8, dropout=0.1, target_modules=["q_proj", "v_proj"], layers=[0, 1]),
    )  # fmt: skip
    assert call["settings"] == ProbeSettings(
        mode="all", keep_steps=[2, 4],
        eval=ProbeEval(every=2, prompts=3, samples=2, temperature=0.7, top_p=0.9, max_new_tokens=9, batch_size=5,
                       verifier="m:f", seed=9, loss=False, heldout="h.jsonl", heldout_prompts=6,
                       max_verifier_errors=0.2),
    )  # fmt: skip
    assert call["tokenize"] == TokenizeConfig(template="plain", max_length=128, overlong="drop")
    assert call["restart"] is True


def test_probe_lora_options(probe_calls, monkeypatch, capsys) -> None:
    assert _probe(monkeypatch, capsys, "--lora", "--lora-alpha", "7")[0] == 0
    assert probe_calls[-1]["recipe"].lora == LoraSettings(r=16, alpha=7)
    assert _probe(monkeypatch, capsys, "--lora", "--lora-target-modules", "all-linear")[0] == 0
    assert probe_calls[-1]["recipe"].lora.target_modules == "all-linear"
    assert _probe(monkeypatch, capsys, "--lora-r", "4") == (2, "", "error: --lora-r needs --lora\n")
    code, _, err = _probe(monkeypatch, capsys, "--param-dtype", "fp8")
    assert (code, err) == (2, "error: --param-dtype: Input should be 'float32' or 'bfloat16'\n")
    assert len(probe_calls) == 2
