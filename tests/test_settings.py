"""Settings models: pinned fingerprints, the one validation-error formatter, `--set` overrides."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from t3s.cli import main
from t3s.config import RunConfig, load_config
from t3s.config_file import Override, parse_set
from t3s.errors import T3SError, validation_error
from t3s.evaluation import EvalSettings
from t3s.fingerprint import digest
from t3s.generation import SamplingParams
from t3s.probe import ProbeEval, ProbeSettings, probe_fingerprint
from t3s.teacher.collect import TeacherSettings, generation_hash
from t3s.testbed.config import load_testbed
from t3s.tokens import TokenizeConfig
from t3s.training import LoraSettings, TrainRecipe


# -- fingerprints: the values the dataclass settings had on the commit before they became models --
def test_fingerprints_keep_their_values() -> None:
    assert TokenizeConfig().fingerprint() == "e33e85a324c013fa"
    assert (
        TokenizeConfig(template="plain", max_length=160, overlong="drop").fingerprint() == "5101ec5e2e593acc"
    )
    settings = EvalSettings()
    assert settings.params_hash() == "fd6c5d56bc57d315"
    assert settings.sampling_dict() == {"temperature": 0.6, "top_p": 0.95, "max_new_tokens": 32768, "seed": 0}
    assert generation_hash("m", TeacherSettings().sampling()) == "2e951ed175dc1292"
    assert probe_fingerprint("tok", "some/hub-name", TrainRecipe(), ProbeSettings()) == "c69ced6b138a67c0"
    sampled = ProbeSettings(eval=ProbeEval(samples=4, temperature=0.7))
    assert (
        probe_fingerprint("tok", "some/hub-name", TrainRecipe(lora=LoraSettings()), sampled)
        == "f094fc21bbfcc4bc"
    )


# The chain's eval, analyze and report sections are new keys of the echo; all else is as before.
NEW_SECTIONS = {"eval", "analyze", "report"}


def test_the_manifest_echo_of_a_config_is_unchanged() -> None:
    config = RunConfig(run_dir="r", model="m", data="d")  # type: ignore[arg-type]
    assert digest(config.model_dump(mode="json", exclude=NEW_SECTIONS)) == "f6f7acfb33947773"
    config = RunConfig(
        run_dir="r",
        model="m",
        data="d",
        recipe={"lora": {}},
        policies=["t3s", {"policy": "random", "fraction": 0.2}],
    )  # type: ignore[arg-type]
    text = json.dumps(
        config.model_dump(mode="json", exclude=NEW_SECTIONS)
    )  # key order too, as the manifest writes it
    assert hashlib.sha256(text.encode()).hexdigest()[:16] == "462803a2e609ee9f"


def test_lora_alpha_defaults_to_twice_the_rank_and_is_dumped() -> None:
    assert LoraSettings().model_dump() == {
        "r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear", "layers": None,
    }  # fmt: skip
    assert LoraSettings(r=4).alpha == 8
    assert LoraSettings(r=4, alpha=5).alpha == 5
    assert LoraSettings(target_modules=["all-linear"]).target_modules == "all-linear"


def test_sampling_settings_refuse_repeated_greedy_samples_at_once() -> None:
    message = "2 samples per prompt with temperature 0 would all be the same greedy answer"
    for build in (
        lambda: SamplingParams(n=2),
        lambda: EvalSettings(samples=2, temperature=0),
        lambda: ProbeEval(samples=2),
        lambda: TeacherSettings(samples=2, temperature=0),
    ):
        with pytest.raises(ValidationError, match=message):
            build()
    with pytest.raises(ValidationError, match="frozen"):
        EvalSettings().samples = 3  # type: ignore[misc]


# -- the one formatter --------------------------------------------------------------------------
class _Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    every: int = Field(1, ge=1)


class _Outer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inner: _Inner = Field(default_factory=_Inner)
    steps: list[int] = Field(default_factory=list)


def _error(**data: object) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        _Outer(**data)
    return info.value


def test_validation_errors_are_one_line_naming_file_key_or_flag() -> None:
    bad = _error(inner={"every": 0})
    assert str(validation_error(bad)) == "inner.every: Input should be greater than or equal to 1"
    assert str(validation_error(bad, source=Path("c.yaml"))) == (
        "c.yaml: inner.every: Input should be greater than or equal to 1"
    )
    assert str(validation_error(bad, source="c.yaml", prefix=("testbed",))) == (
        "c.yaml: testbed.inner.every: Input should be greater than or equal to 1"
    )
    # A value from a command-line option names the option, not the file it did not come from.
    flags = {("inner", "every"): "--eval-every", ("steps",): "--step"}
    assert str(validation_error(bad, source="c.yaml", flags=flags)) == (
        "--eval-every: Input should be greater than or equal to 1"
    )
    assert str(validation_error(_error(steps=["x"]), flags=flags)) == (
        "--step: Input should be a valid integer, unable to parse string as an integer"
    )
    assert (
        str(validation_error(_error(inner={"evry": 2}), source="c.yaml")) == "c.yaml: inner.evry: unknown key"
    )


def test_errors_of_a_whole_model_name_the_model_or_root() -> None:
    with pytest.raises(ValidationError) as info:
        TrainRecipe(batch_size=6, micro_batch_size=4)
    expected = "Value error, batch_size 6 is not a multiple of micro_batch_size 4"
    assert str(validation_error(info.value)) == f"TrainRecipe: {expected}"
    assert str(validation_error(info.value, source="c.yaml", root="config")) == f"c.yaml: config: {expected}"


# -- t3s run: --set and --run-dir ---------------------------------------------------------------
@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text("run_dir: r\nmodel: m\ndata: d\nrecipe: {steps: 5}\npolicies: [t3s, {policy: inverse}]\n")
    return path


def test_set_overrides_dotted_paths(config: Path, tmp_path: Path) -> None:
    sets = ["recipe.lr=2e-5", "probe.eval.every=5", "policies.1.threshold=0.5", "recipe.lora={r: 4}",
            "probe.keep_steps=[2, 3]", "probe.eval.heldout=null"]  # fmt: skip
    overrides = [parse_set(s) for s in sets]
    cfg = load_config(config, [*overrides, Override(("run_dir",), str(tmp_path / "elsewhere"), "--run-dir")])
    assert cfg.recipe.lr == 2e-5 and cfg.recipe.steps == 5
    assert cfg.recipe.lora == LoraSettings(r=4, alpha=8)
    assert cfg.probe.eval.every == 5 and cfg.probe.keep_steps == [2, 3] and cfg.probe.eval.heldout is None
    assert [p.threshold for p in cfg.policies] == [0.0, 0.5]
    assert cfg.run_dir == tmp_path / "elsewhere"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("recipe.lrr=1", "--set recipe.lrr: unknown key"),
        ("recipe.lr=-1", "--set recipe.lr: Input should be greater than 0"),
        ("recipe={lrr: 1}", "--set recipe.lrr: unknown key"),
        ("probe.eval.every=often", "--set probe.eval.every: Input should be a valid integer"),
        ("recipe.lr", "--set 'recipe.lr': write KEY.PATH=VALUE, e.g. --set recipe.lr=2e-5"),
        ("recipe..lr=1", "--set 'recipe..lr=1': write KEY.PATH=VALUE"),
        ("recipe.steps.x=1", "--set recipe.steps.x: recipe.steps is not a mapping"),
        ("policies.7.threshold=1", "--set policies.7.threshold: policies is a list of 2 items"),
        ("recipe.lr=[1", "--set recipe.lr: the value is not valid YAML"),
    ],
)
def test_set_errors_are_one_line(config: Path, text: str, message: str) -> None:
    with pytest.raises(T3SError) as info:
        load_config(config, [parse_set(text)])
    assert str(info.value).startswith(message)


def test_an_error_in_the_file_still_names_the_file(config: Path) -> None:
    config.write_text(config.read_text() + "save_every: 0\n")
    with pytest.raises(
        T3SError, match=r"^\S*c\.yaml: save_every: Input should be greater than or equal to 1$"
    ):
        load_config(config, [parse_set("recipe.lr=2e-5")])


def test_testbed_configs_take_overrides(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("testbed:\n  eval_every: 2\n")
    cfg = load_testbed(
        path, [parse_set("testbed.train_problems=64"), Override(("testbed", "run_dir"), "x", "--run-dir")]
    )
    assert (cfg.eval_every, cfg.train_problems, cfg.run_dir) == (2, 64, Path("x"))
    with pytest.raises(
        T3SError, match=r"^--set testbed.train_problems: Input should be greater than or equal to 8$"
    ):
        load_testbed(path, [parse_set("testbed.train_problems=2")])
    with pytest.raises(T3SError, match=r"^--set recipe.lr: a testbed config's settings are under testbed\.$"):
        load_testbed(path, [parse_set("recipe.lr=1")])
    path.write_text("testbed:\n  eval_evry: 2\n")
    with pytest.raises(T3SError, match=r"t\.yaml: testbed\.eval_evry: unknown key$"):
        load_testbed(path)


def _t3s(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["t3s", *args])
    with pytest.raises(SystemExit) as done:
        main()
    captured = capsys.readouterr()
    return int(done.value.code or 0), captured.out, captured.err


def test_run_command_applies_set_and_run_dir(config: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    import t3s.pipeline

    seen: list[RunConfig] = []
    monkeypatch.setattr(t3s.pipeline, "run_pipeline", lambda cfg: seen.append(cfg) or {"t3s": "M"})
    code, out, _ = _t3s(monkeypatch, capsys, "run", str(config), "--set", "recipe.lr=2e-5",
                        "--set", "probe.eval.every=5", "--run-dir", str(tmp_path / "r2"))  # fmt: skip
    assert code == 0 and out.split() == ["t3s:", "M"]
    assert (seen[0].recipe.lr, seen[0].probe.eval.every, seen[0].run_dir) == (2e-5, 5, tmp_path / "r2")
    code, _, err = _t3s(monkeypatch, capsys, "run", str(config), "--set", "probe.evl.every=5")
    assert (code, err) == (2, "error: --set probe.evl: unknown key\n")
