"""Every shipped example config validates, so a user's first `t3s run` does not fail on our typo."""

from pathlib import Path

import pytest
import yaml

from t3s.config import load_config
from t3s.testbed.config import load_testbed

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_config_validates(path: Path) -> None:
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    cfg = load_testbed(path) if "testbed" in raw else load_config(path)
    assert {"t3s", "dllm-t3s"} & {p.policy for p in cfg.policies}  # each example trains a T3S policy


def test_testbed_full_is_the_issue_comparison() -> None:
    cfg = load_testbed(Path(__file__).parent.parent / "examples" / "testbed-full.yaml")
    assert len(cfg.seeds) >= 3 and cfg.cross_student
    kinds = {(p.policy, p.selector, p.profile, p.match) for p in cfg.policies}
    assert {("static-high", "bottleneck", None, "t3s"), ("static-low", "bottleneck", None, "t3s"),
            ("random", "bottleneck", None, "t3s"), ("inverse", "bottleneck", None, None)} <= kinds  # fmt: skip
    assert {p.selector for p in cfg.policies} >= {"bottleneck", "step5", "step12"}
    assert all(int(s[4:]) in cfg.profile_steps for s in {p.selector for p in cfg.policies} - {"bottleneck"})


def test_llada2_example_is_the_papers_dllm_setting() -> None:
    cfg = load_config(Path(__file__).parent.parent / "examples" / "llada2-mini-s1k.yaml")
    assert cfg.student is not None and cfg.trust_remote_code and not cfg.rrt
    d = cfg.student.diffusion
    assert (d.objective, d.block_size, cfg.recipe.lr, cfg.recipe.batch_size) == ("block", 32, 1e-5, 64)
    assert cfg.recipe.steps == -(-20 * 1000 // 64) and cfg.tokenize.max_length == 16384
    assert [(p.policy, p.tau, p.match) for p in cfg.policies] == [
        ("sft", 0.2, None),
        ("dllm-t3s", 0.2, None),
        ("dllm-random", 0.2, "dllm-t3s"),
    ]
