"""The HTML report: built through the CLI from synthetic run folders, checked as files and in a real browser."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml
from markupsafe import escape

from relaxbench.cli import main
from relaxbench.report import figures
from relaxbench.report.site import fmt_num, fmt_p, slug, sort_key
from tests.report.browser import CHROMIUM, Chromium
from tests.report.synthetic import CONFIG_NAME, SCRIPT, collect_standard_runs

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The synthetic runs collected, then ``relaxbench report``; returns (results, site dir)."""
    root = tmp_path_factory.mktemp("report")
    collect_standard_runs(root / "results" / CONFIG_NAME)
    config = root / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": CONFIG_NAME,
                "description": f"synthetic records {SCRIPT}",
                "seeds": [0, 1, 2],
                "methods": {"equivariant": {}, "relaxed": {}},
                "models": {"tfn": {"tasks": ["tetris"]}},
            }
        )
    )
    common = ["--config", str(config), "--results", str(root / "results")]
    assert main(["report", *common, "--reports", str(root / "reports")]) == 0
    return root / "results" / CONFIG_NAME, root / "reports" / CONFIG_NAME


def _pages(out: Path) -> list[Path]:
    return [out / "index.html", *sorted((out / "runs").glob("*.html"))]


def test_collect_writes_the_tables(site):
    results, _ = site
    board = (results / "leaderboard.csv").read_text("utf-8").splitlines()
    assert len(board) == 1 + 18  # header + every run, failed and diverged included
    assert (results / "aggregates.csv").is_file()


def test_every_run_has_a_page_linked_from_the_overview(site):
    results, out = site
    index = (out / "index.html").read_text("utf-8")
    records = sorted(results.glob("runs/*/*/*/seed*/record.json"))
    pages = sorted((out / "runs").glob("*.html"))
    assert len(records) == len(pages) == 18
    for page in pages:
        assert f'href="runs/{page.name}"' in index
    assert len(re.findall(r'<tr class="status-row-', index)) == 18
    assert len(list((out / "figures").glob("*.png"))) == 8 + 9  # 4 per task, 1 per relaxed run with a history
    activity = (out / "runs" / "tetris--vn--relaxed--seed1.html").read_text("utf-8")
    assert 'src="../figures/run-tetris--vn--relaxed--seed1-activity.png"' in activity
    assert 'class="pill inactive"' in activity  # peak share 0.004 < 1 %
    active = (out / "runs" / "tetris--tfn--relaxed--seed0.html").read_text("utf-8")
    assert 'class="pill inactive"' not in active
    assert "activity.png" not in (out / "runs" / "tetris--tfn--equivariant--seed0.html").read_text("utf-8")
    # the legend of each task (2) and of the answer (1), the vn/relaxed entry and its answer cell, its 2 ok
    # runs, the methods section
    assert index.count('<span class="pill inactive"') == 2 + 1 + 1 + 1 + 2 + 1
    for page in _pages(out):  # every local link and image exists
        for target in re.findall(r'(?:href|src)="([^"#]+)', page.read_text("utf-8")):
            assert not re.match(r"[a-z]+:", target), f"{page.name}: non-relative link {target}"
            assert (page.parent / target).is_file(), f"{page.name}: broken link {target}"


def test_failed_and_diverged_runs_are_marked_with_their_reason(site):
    _, out = site
    index = (out / "index.html").read_text("utf-8")
    assert '<span class="badge status-diverged"' in index and '<span class="badge status-failed"' in index
    assert "Runs left out of the statistics (2)" in index
    assert "non-finite training loss (nan) at epoch 3, step 2" in index
    assert escape(f"RuntimeError: {SCRIPT}") in index
    assert "2/3" in index  # n_ok / n_total of an entry with a run left out
    diverged = (out / "runs" / "tetris--tfn--relaxed--seed2.html").read_text("utf-8")
    assert "status-diverged" in diverged and "(at epoch 3)" in diverged
    # best and tied entries are marked (tetris: tfn/relaxed best, tfn/equivariant tied)
    assert index.count('<tr class="best') == 2 and '<tr class="tied' in index


def test_strings_from_configs_and_records_are_escaped(site):
    _, out = site
    for page in _pages(out):
        text = page.read_text("utf-8")
        assert "<script>alert" not in text, page.name
        assert text.count("<script>") == 1, page.name  # only the report's own sorting script
    assert escape(f"synthetic records {SCRIPT}") in (out / "index.html").read_text(
        "utf-8"
    )  # description and reason
    run_page = (out / "runs" / "tetris--tfn--equivariant--seed0.html").read_text("utf-8")
    assert "&lt;script&gt;alert(" in run_page  # the run config's note


def test_report_needs_collect_and_shows_missing_runs(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"name": "empty", "models": {"tfn": {"tasks": ["tetris"]}}}))
    report = [
        "report",
        "--config",
        str(config),
        "--results",
        str(tmp_path / "r"),
        "--reports",
        str(tmp_path / "out"),
    ]
    assert main(report) == 2
    assert "run `relaxbench collect` first" in capsys.readouterr().err
    assert main(["collect", "--config", str(config), "--results", str(tmp_path / "r")]) == 0  # missing runs
    assert "6 missing" in capsys.readouterr().out
    assert main(report) == 0
    index = (tmp_path / "out" / "empty" / "index.html").read_text("utf-8")
    assert index.count('<span class="badge status-missing"') >= 6 and "0/3" in index
    assert not (tmp_path / "out" / "empty" / "figures").exists()


def test_report_opens_with_the_verdict_of_every_comparison(site):
    results, out = site
    index = (out / "index.html").read_text("utf-8")
    answer = index[index.index('<section id="answer">') : index.index("</section>")]
    assert index.index('<section id="answer">') < index.index('<section class="task"')
    # three comparisons (tetris/tfn, tetris/vn, toy_acc/tfn: relaxed against equivariant), one column
    assert answer.count('class="verdict-cell"') == 3 and "<th>relaxed − equivariant</th>" in answer
    agg = pd.read_csv(results / "aggregates.csv")
    compared = agg[agg["method"] != "equivariant"]
    powered = int(compared["test_metric_vs_equivariant_powered"].astype(bool).sum())
    assert f"{powered} of 3 comparisons powered" in answer
    for verdict in compared["test_metric_vs_equivariant_verdict"]:
        assert f'class="badge verdict-{verdict.replace(" ", "-")}">{verdict}<' in answer
    # tetris/tfn: n = 2 pairs, underpowered: says what it cannot see and how many seeds would
    row = compared[(compared["task"] == "tetris") & (compared["model"] == "tfn")].iloc[0]
    assert row["test_metric_vs_equivariant_verdict"] == "inconclusive"
    assert f"n = 2 cannot see differences below {fmt_num(row['test_metric_vs_equivariant_mde'], 2)}" in answer


def test_sweep_figure_draws_one_column_per_value_of_the_crossed_axes(tmp_path):
    rows = []
    for layers in (2, 4):
        for n_train in (100, 300, 1000):
            for method, value in (("equivariant", 0.10), ("relaxed", 0.09)):
                mean = value * layers / n_train
                rows.append(
                    {
                        "params.layers": layers,
                        "nbody.n_train": n_train,
                        "method": method,
                        "metric": "mse",
                        "metric_unit": "length^2",
                        "test_metric_mean": mean,
                        "test_metric_ci_low": mean * 0.9,
                        "test_metric_ci_high": mean * 1.1,
                        "test_metric_vs_equivariant_mean": None if method == "equivariant" else -mean / 10,
                        "test_metric_vs_equivariant_ci_low": None if method == "equivariant" else -mean / 5,
                        "test_metric_vs_equivariant_ci_high": None if method == "equivariant" else 0.0,
                    }
                )
    entries = pd.DataFrame(rows)
    one = figures.sweep_figure(
        entries[entries["params.layers"] == 2], "nbody.n_train", [], "equivariant", tmp_path / "a.png"
    )
    crossed = figures.sweep_figure(
        entries, "nbody.n_train", ["params.layers"], "equivariant", tmp_path / "b.png"
    )
    width = lambda path: int.from_bytes(path.read_bytes()[16:20], "big")  # noqa: E731 (PNG header)
    assert width(crossed) > width(one)
    assert (
        figures.sweep_figure(entries.iloc[:0], "nbody.n_train", [], "equivariant", tmp_path / "c.png") is None
    )


def test_report_ranks_the_methods(site):
    """Two methods on three cells: ranks and verdict counts, and the reason there is no Friedman test."""
    _, out = site
    index = (out / "index.html").read_text("utf-8")
    ranking = index[index.index('<section id="ranking">') :]
    ranking = ranking[: ranking.index("</section>")]
    assert "<code>relaxed</code>" in ranking and "<code>equivariant</code>" in ranking
    assert "No Friedman / Nemenyi test: the Friedman and Nemenyi tests need at least 3 methods" in ranking
    assert 'href="#ranking"' in index


def test_formatting_helpers():
    assert fmt_num(float("nan")) == "–" and fmt_num(None) == "–"
    assert fmt_num(0.123456) == "0.1235" and fmt_num(-2.5e-7) == "-2.5e-07" and fmt_num(3.0) == "3"
    assert fmt_num(math.inf) == "∞" and fmt_num(True) == "yes"
    assert fmt_p(0.0) == "< 1e-4" and fmt_p(0.04567) == "0.0457" and fmt_p(float("nan")) == "–"
    assert sort_key(float("nan")) == "" and sort_key(-math.inf) == "-Infinity" and sort_key(0.5) == "0.5"
    assert slug("tetris", "tfn") == "tetris--tfn"
    assert slug("a/b", "c") != slug("a_b", "c") and "/" not in slug("a/b", "c")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian package 'chromium')")
def test_pages_render_in_chromium_without_errors(site, tmp_path):
    _, out = site
    broken = tmp_path / "broken.html"  # the harness itself sees errors, missing files and network requests
    broken.write_text(
        '<img src="missing.png"><img src="https://example.invalid/x.png">'
        '<script>console.error("boom"); undefinedFunction();</script>'
    )
    with Chromium() as browser:
        load = browser.open(broken)
        assert any("boom" in e for e in load.errors) and any("undefinedFunction" in e for e in load.errors)
        assert any("missing.png" in e for e in load.errors)
        assert load.external_requests == ["https://example.invalid/x.png"]
        for page in _pages(out):
            load = browser.open(page)
            assert load.errors == [], f"{page.name}: {load.errors}"
            assert load.external_requests == [], f"{page.name}: {load.external_requests}"
            assert browser.evaluate("document.querySelectorAll('table.sortable th.sort-header').length") > 0
        load = browser.open(out / "index.html")
        # every figure decodes (lazy images are switched to eager first)
        widths = browser.evaluate(
            "Promise.all([...document.images].map(i => { i.loading = 'eager'; "
            "return i.decode().then(() => i.naturalWidth); }))"
        )
        assert len(widths) == 8 and min(widths) > 0
        # the first screen is the answer: its table is the first table of the page, above the fold
        first = browser.evaluate("document.querySelector('table').closest('section').id")
        top = browser.evaluate("document.querySelector('#answer table').getBoundingClientRect().top")
        assert first == "answer" and top < 900
        # clicking a header sorts its table: test metric column of the first leaderboard, then reversed
        rows = "document.querySelector('table.leaderboard').tBodies[0].rows"
        column = f"Array.from({rows}).map(r => r.cells[4].dataset.v)"
        browser.evaluate("document.querySelector('table.leaderboard thead th:nth-child(5)').click()")
        ascending = browser.evaluate(column)
        numbers = [float(v) for v in ascending if v]
        assert len(numbers) == 4 and numbers == sorted(numbers)
        browser.evaluate("document.querySelector('table.leaderboard thead th:nth-child(5)').click()")
        descending = [float(v) for v in browser.evaluate(column) if v]
        assert descending == sorted(numbers, reverse=True)
        browser.open(out / "index.html")
        shot = browser.screenshot(ARTIFACTS / "report_overview.png")
    assert shot.stat().st_size > 10_000
