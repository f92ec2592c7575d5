"""A sharded-training launch that accelerate quietly turns into DDP on CPUs is reported."""

from __future__ import annotations

import pytest

from t3s import distributed


@pytest.mark.parametrize("flag", ["ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"])
def test_sharding_on_cpu_warns_once(flag: str, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(distributed, "_warned", set())
    monkeypatch.setenv(flag, "true")
    distributed.state()
    distributed.state()
    err = capsys.readouterr().err
    name = flag.removeprefix("ACCELERATE_USE_")
    assert err.count("warning:") == 1
    assert f"{name} was requested ({flag}) but this job runs on CPUs" in err


def test_no_warning_without_sharding(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(distributed, "_warned", set())
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    distributed.state()
    assert "warning" not in capsys.readouterr().err
