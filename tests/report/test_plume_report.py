"""The report's smoke-plume section: Table 2 from synthetic plume runs (records, rollout curves, fields), checked
as data, as HTML, and in a real browser."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import yaml

from relaxbench.cli import main
from relaxbench.config import METRIC_VERSION, RunSpec, grid_hashes, validate_config
from relaxbench.records import RunRecord, atomic_write_bytes, atomic_write_text
from relaxbench.report.plume import PERSISTENCE, ROWS
from tests.report.browser import CHROMIUM, Chromium

CONFIG = "plumes"
#: Future RMSE of each Table 2 row (seed 0; seed 1 adds 0.01; scale 0.05 more); Domain is 0.1 less.
FUTURE = {
    "Conv": 1.0,
    "Equiv": 0.9,
    "RPP": 0.85,
    "Lift": 0.95,
    "RSteer": 0.8,
    "RSteer + relaxation (the paper)": 0.7,
}
#: The persistence forecast's RMSE at every step (its pooled RMSE is the same), per task: better than every row.
PERSISTENCE_RMSE = {"plume": 0.5, "plume_scale": 0.25}
MODEL_KEY = {"conv": "conv", "equiv": "equiv", "lift": "lift", "rsteer": "rsteer"}


def write_plume_run(results: Path, task: str, label: str, arch: str, method: str, seed: int, hashes) -> None:
    value = FUTURE[label] + 0.01 * seed + (0.05 if task == "plume_scale" else 0.0)
    run_dir = results / "runs" / task / arch / method / f"seed{seed}"
    record = RunRecord(
        task=task,
        model=MODEL_KEY[arch],
        arch=arch,
        family="steerable_cnn",
        method=method,
        seed=seed,
        config_name=CONFIG,
        config_hash=hashes[RunSpec(task, MODEL_KEY[arch], method, seed)],  # as trained under the config
        status="ok",
        metric="rmse",
        metric_unit="velocity",
        lower_is_better=True,
        train={"loss": 0.1, "mse": 0.1, "rmse": 0.3},
        val={"loss": 0.2, "mse": 0.2, "rmse": 0.4},
        test={"loss": value**2, "mse": value**2, "rmse": value},
        tests={"test_domain": {"loss": (value - 0.1) ** 2, "mse": (value - 0.1) ** 2, "rmse": value - 0.1}},
        equiv_final_exact=1e-7 if arch == "equiv" and method == "equivariant" else 0.05,
        equiv_final_approx=0.3,
        run_config={
            "task_params": {"symmetry": "scale"} if task == "plume_scale" else {},
            "metric_version": METRIC_VERSION,
        },
    )
    steps = np.arange(1, 4)
    rows = [
        f"{split},{s},{value * s / 3 - (0.1 if split == 'test_domain' else 0)!r}"
        for split in ("test", "test_domain")
        for s in steps
    ]
    atomic_write_text(run_dir / "rollout.csv", "split,step,rmse\n" + "\n".join(rows) + "\n")
    still = [f"{split},{s},{PERSISTENCE_RMSE[task]!r}" for split in ("test", "test_domain") for s in steps]
    atomic_write_text(run_dir / "reference.csv", "split,step,rmse\n" + "\n".join(still) + "\n")
    fields = {}
    for split in ("test", "test_domain"):
        grid = np.linspace(-1, 1, 16)
        swirl = np.stack([-grid[:, None] * np.ones(16), grid[None, :] * np.ones((16, 1))])
        fields[f"{split}_true"] = np.stack([swirl] * 3).astype(np.float32)
        fields[f"{split}_pred"] = 0.9 * fields[f"{split}_true"]
        fields[f"{split}_steps"] = steps
    buffer = io.BytesIO()
    np.savez(buffer, **fields)
    atomic_write_bytes(run_dir / "fields.npz", buffer.getvalue())
    atomic_write_text(run_dir / "history.csv", "epoch,theta,task_loss,val_rmse\n0,0.0,1.0,0.5\n")
    record.write(run_dir / "record.json")


@pytest.fixture(scope="module")
def plume_site(tmp_path_factory):
    root = tmp_path_factory.mktemp("plume-report")
    results = root / "results" / CONFIG
    models = {
        "conv": {"tasks": ["plume", "plume_scale"], "methods": ["equivariant"]},
        "equiv": {"tasks": ["plume", "plume_scale"], "methods": ["equivariant", "rpp"]},
        "lift": {"tasks": ["plume"], "methods": ["equivariant"]},  # a row not run for one symmetry
        "rsteer": {"tasks": ["plume", "plume_scale"], "methods": ["equivariant", "relaxed"]},
    }
    methods = {"equivariant": {}, "relaxed": {}, "rpp": {}}
    raw = {"name": CONFIG, "seeds": [0, 1], "methods": methods, "models": models}
    hashes = grid_hashes(validate_config(raw))
    for run in hashes:
        label = next(lab for lab, arch, method in ROWS if arch == run.model and method == run.method)
        write_plume_run(results, run.task, label, run.model, run.method, run.seed, hashes)
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    common = ["--config", str(config), "--results", str(root / "results")]
    assert main(["collect", *common]) == 0
    assert main(["report", *common, "--reports", str(root / "reports")]) == 0
    return root / "reports" / CONFIG


def test_table2_has_every_row_and_marks_the_best_per_column(plume_site):
    html = (plume_site / "index.html").read_text()
    section = html[
        html.index('<section id="plume">') : html.index("</section>", html.index('<section id="plume">'))
    ]
    for label, arch, method in ROWS:
        assert f"<td>{label.replace('+', '+')}</td>" in section and f"{arch} × {method}" in section
    # columns: rotation Future, Domain, scale Future, Domain; the paper's row is best in all four
    paper_row = section[section.index("RSteer + relaxation (the paper)") :].split("</tr>")[0]
    assert paper_row.count("★") == 4
    assert "0.705" in paper_row and "0.605" in paper_row  # rotation Future / Domain means of 0.70 and 0.71
    assert "0.755" in paper_row and "0.655" in paper_row  # scale
    reference = section[section.index(f'<tr class="reference">\n<td>{PERSISTENCE}</td>') :].split("</tr>")[0]
    assert section.index(PERSISTENCE) < section.index("<td>Conv</td>")  # the first row
    assert (
        ">0.5<br>" in reference and ">0.25<br>" in reference and "★" not in reference
    )  # a reference, never best
    lift = section[section.index("<td>Lift</td>") :].split("</tr>")[0]
    assert lift.count("not run") == 2 and "approximate by design" in lift
    assert section[section.index("<tbody>") :].count("★") == 4
    assert "plume-rollout.png" in section and "plume-rotation-fields.png" in section
    assert "plume-scale-fields.png" in section
    assert (plume_site / "figures" / "plume-rollout.png").stat().st_size > 10_000


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian package 'chromium')")
def test_plume_section_renders_in_chromium(plume_site):
    with Chromium() as browser:
        load = browser.open(plume_site / "index.html")
        assert load.errors == [] and load.external_requests == []
        widths = browser.evaluate(
            "Promise.all([...document.querySelectorAll('#plume img')].map(i => { i.loading = 'eager'; "
            "return i.decode().then(() => i.naturalWidth); }))"
        )
        assert len(widths) == 3 and min(widths) > 0
        cells = browser.evaluate("document.querySelectorAll('#plume table.table2 tbody tr').length")
        assert cells == len(ROWS) + 1  # and the persistence row
