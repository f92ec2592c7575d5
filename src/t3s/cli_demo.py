"""`t3s demo`: the built-in testbed on a laptop CPU (Imitation Shock, token groups, T3S vs SFT)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from t3s.cli import app, out


def print_result(result: dict[str, Any]) -> None:
    agg = result["aggregate"]["models"]
    out.print("\nheld-out accuracy (greedy):", highlight=False)
    for name, row in agg.items():
        spread = (
            f" ± {100 * row['std']:.1f} (std over {row['seeds']} seeds)" if row["std"] is not None else ""
        )
        out.print(
            f"  {name:>10}: {100 * row['mean']:5.1f}%{spread}  on {row['problems']} problems", highlight=False
        )
    out.print(f"report: {result['report']['html']}", highlight=False)
    out.print(f"summary: {result['report']['markdown']}", highlight=False)


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="run directory")] = Path("runs/demo"),
    config: Annotated[Path | None, typer.Option(help="a testbed YAML (default: the built-in demo)")] = None,
) -> None:
    """Run the built-in testbed: SmolLM2-135M distilled from a procedural teacher, on the CPU."""
    from t3s.testbed.config import load_testbed, testbed_default
    from t3s.testbed.runner import run_testbed

    cfg = load_testbed(config) if config else testbed_default(out_dir)
    print_result(run_testbed(cfg))
