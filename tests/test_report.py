"""`t3s report`: one offline HTML page and a Markdown summary, sections present exactly when their data is."""

from __future__ import annotations

import base64
import importlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from t3s.analysis.options import NAMES
from t3s.cli import app
from t3s.errors import T3SError
from t3s.io import write_json
from test_analysis import analyzed_run

report = importlib.import_module("t3s.report")  # the module: `from t3s import report` is the API's function


@pytest.fixture(scope="module")
def run(tiny_model: Path, tokenizer, tmp_path_factory) -> Path:
    return analyzed_run(tiny_model, tokenizer, tmp_path_factory.mktemp("report"))


def light_copy(run: Path, dest: Path) -> Path:
    """The run's small artifacts (no checkpoints, no caches): enough for a report."""
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("checkpoints", "cache", "report"))
    return dest


def h2_titles(page: str) -> list[str]:
    return re.findall(r"<h2>(.*?)</h2>", page)


def test_report_of_an_analysed_run_is_self_contained(run: Path) -> None:
    result = CliRunner().invoke(app, ["report", "--run", str(run)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    page = (run / "report" / "index.html").read_text(encoding="utf-8")
    assert f"report -> {run / 'report' / 'index.html'}" in result.output
    assert "θb step 1" in result.output and "anchor share" in result.output
    # No external resource of any kind: no scripts, stylesheets, or remote URLs.
    assert not re.search(r"(src|href)=\"(?!data:|#)", page)
    assert "<script" not in page and "<link" not in page and "http" not in page.split("<main>")[0]
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == len(NAMES)  # one per analysis
    assert all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)
    assert h2_titles(page) == [
        "Overview",
        "Imitation Shock (probe)",
        "Token groups (Δc at θb)",
        "Why anchors dominate (analyses)",
        "Run configuration",
    ]
    assert "trained on ↓ / evaluated on →" in page  # the transfer matrix as a table
    md = (run / "report" / "summary.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\((figures/[^)]+\.png)\)", md)
    assert len(links) == len(images)
    assert all((run / "report" / link).stat().st_size > 1000 for link in links)
    assert md.startswith("# T3S report: run") and "## Token groups (Δc at θb)" in md


def test_sections_appear_only_with_their_data(run: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    (bare / "probe").mkdir(parents=True)
    for name in ("manifest.json", "probe/metrics.jsonl", "probe/bottleneck.json"):
        shutil.copy(run / name, bare / name)
    result = report.build_report([bare])
    page = result.html.read_text(encoding="utf-8")
    assert h2_titles(page) == ["Overview", "Imitation Shock (probe)", "Run configuration"]
    assert page.count("data:image/png;base64,") == 1  # shock curves drawn from the probe's metrics
    assert result.headlines == {
        "bare": {"θb step": "1", "training accuracy θ0 → θb → final": "0.0% → 0.0% → 0.0%"}
    }
    with pytest.raises(T3SError, match="no manifest.json"):
        report.build_report([tmp_path])


def test_eval_policies_and_extra_items_become_sections(run: Path, tmp_path: Path) -> None:
    r = light_copy(run, tmp_path / "r")
    bench = r / "eval" / "aime24"
    bench.mkdir(parents=True)
    curve = [{"step": s, "model": "m", "problems": 30, "samples": 4, "avg@4": a, "avg@4_stderr": 0.05, "pass@4": 0.5}
             for s, a in ((0, 0.4), (1, 0.1), (3, 0.3))]  # fmt: skip
    bench.joinpath("curve.jsonl").write_text("".join(json.dumps(c) + "\n" for c in curve))
    bench.joinpath("policies.jsonl").write_text(
        json.dumps({"policy": "t3s", "avg@4": 0.5, "avg@4_stderr": 0.1}) + "\n"
    )
    policy = r / "train" / "t3s"
    (policy / "model").mkdir(parents=True)
    (policy / "model" / "model.safetensors").write_bytes(b"x")
    policy.joinpath("log.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": 3.0 / s}) + "\n" for s in (1, 2, 3))
    )
    extra = r / "report" / "extra"
    extra.mkdir(parents=True)
    shutil.copy(r / "analysis" / "drops.png", extra / "fig.png")
    write_json(extra / "results.json", {
        "title": "Final results", "order": 5, "text": "n = 30 problems.",
        "table": {"columns": ["method", "AIME24"], "rows": [["base", "40.0 ± 5.0"], ["T3S", "50.0 ± 5.1"]]},
        "images": [{"path": "fig.png", "caption": "an extra figure"}],
    })  # fmt: skip
    (extra / "gate.md").write_text("# Competence gate\n\n| check | ok |\n|---|---|\n| base ≥ 50% | yes |\n")
    (extra / "broken.json").write_text("{not json")
    result = report.build_report([r])
    page = result.html.read_text(encoding="utf-8")
    titles = h2_titles(page)
    assert titles[:2] == ["Overview", "Final results"]  # order 5: before the probe
    assert {"Evaluation", "Trained policies", "Competence gate"} <= set(titles)
    assert "40.0% ± 5.0%" in page and "50.0% ± 10.0%" in page  # curve and policy rows with standard errors
    assert "an extra figure" in page and "| base ≥ 50% | yes |" in page
    md = result.markdown.read_text(encoding="utf-8")
    assert "| T3S | 50.0 ± 5.1 |" in md and "| base ≥ 50% | yes |" in md
    assert "Training loss of each policy." in md


def test_a_given_list_of_section_builders_is_used(run: Path, tmp_path: Path) -> None:
    r = light_copy(run, tmp_path / "r")

    def custom(ctx: report.ReportContext) -> list[report.Section]:
        return [report.Section("Custom", [report.Text(f"{len(ctx.runs)} run")], order=15)]

    page = report.build_report([r], builders=[*report.SECTIONS, custom]).html.read_text(encoding="utf-8")
    titles = h2_titles(page)
    assert titles.index("Custom") == titles.index("Imitation Shock (probe)") + 1 and "<p>1 run</p>" in page


def test_a_malformed_artifact_costs_one_section_not_the_report(run: Path, tmp_path: Path) -> None:
    r = light_copy(run, tmp_path / "r")
    write_json(r / "analysis" / "gradients.json", {"steps": [0, 1]})
    page = report.build_report([r]).html.read_text(encoding="utf-8")
    assert "mechanisms_section (not built)" in h2_titles(page) and "KeyError" in page
    assert "Token groups (Δc at θb)" in h2_titles(page)


def test_several_runs_are_compared(run: Path, tmp_path: Path) -> None:
    a = light_copy(run, tmp_path / "a")
    b = light_copy(run, tmp_path / "b")
    shutil.rmtree(b / "analysis")
    result = report.build_report([a, b], tmp_path / "out")
    page = result.html.read_text(encoding="utf-8")
    assert result.html == tmp_path / "out" / "index.html" and set(result.headlines) == {"a", "b"}
    assert "Training accuracy of every run along its probe." in page
    assert page.count("<h3>a</h3>") >= 3 and page.count("<h3>b</h3>") >= 2  # b: probe, tokens, config
    assert (tmp_path / "out" / "figures" / "compare_accuracy.png").exists()
    assert (tmp_path / "out" / "figures" / "a_groups.png").exists()


def test_a_testbed_run_gets_the_testbed_sections_in_a_fresh_process(tmp_path: Path) -> None:
    """`t3s report --run runs/demo` keeps the testbed's sections: they are picked from what the run
    holds (a testbed summary), not registered by importing t3s.testbed first."""
    run = tmp_path / "demo"
    write_json(run / "manifest.json", {"stages": {}})
    final = {"problems": 8, "accuracy": 0.5, "stderr": 0.1, "by_count": {"3": 0.5}, "teacher_style": 0.25,
             "mean_tokens": 20.0}  # fmt: skip
    curve = [{"step": s, "teacher_forced_loss": 1.0 / (s + 1), "train_accuracy": 0.5} for s in (0, 3)]
    gate = {
        "prefix": " Step 1:",
        "problems": 8,
        "own_style_accuracy": 0.5,
        "forced_teacher_prefix_accuracy": 0.4,
    }
    write_json(run / "testbed" / "summary.json", {
        "seed": 0, "final": {"base": final, "sft": final}, "gate": gate, "curve": curve,
        "bottleneck": {"step": 3}, "config": {"teacher": "reverse"},
    })  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "t3s.cli", "report", "--run", str(run)], capture_output=True,
                          text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    md = (run / "report" / "summary.md").read_text(encoding="utf-8")
    for title in ("Testbed: held-out results", "Testbed: Imitation Shock", "Testbed: competence gate"):
        assert f"## {title}" in md
