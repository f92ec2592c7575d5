"""Where commands print: results on stdout, tables, progress and warnings on stderr."""

from __future__ import annotations

from typing import Any

from rich.console import Console

console = Console(stderr=True)
out = Console()


def print_testbed_result(result: dict[str, Any]) -> None:
    """The held-out accuracy table and report paths of a testbed run (`t3s demo`, `t3s run`)."""
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
