"""`t3s demo`: the built-in testbed on a laptop CPU (Imitation Shock, token groups, T3S vs SFT)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from t3s.cli.console import print_testbed_result


def demo(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="run directory")] = Path("runs/demo"),
    config: Annotated[Path | None, typer.Option(help="a testbed YAML (default: the built-in demo)")] = None,
) -> None:
    """Run the built-in testbed: SmolLM2-135M distilled from a procedural teacher, on the CPU."""
    from t3s.testbed.config import load_testbed, testbed_default
    from t3s.testbed.runner import run_testbed

    cfg = load_testbed(config) if config else testbed_default(out_dir)
    print_testbed_result(run_testbed(cfg))
