"""The benchmark's quick mode end to end, on the fixed-weight model.

It runs `python -m scripts.bench --quick` in its own process (the benchmark sets torch's
thread pools, which a process can size only once) on a run folder holding `fixed_export`, and
checks that the report is complete and well formed. It asserts no timing: the machine may be
busy, and the figures are the benchmark's business.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from scripts.bench import CASES, TARGETS
from tests.conftest import REPO_ROOT, read_vmargs


@pytest.mark.slow
@pytest.mark.server
def test_quick_bench_writes_a_complete_report(fixed_export: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(fixed_export, run_dir / "export")
    out_dir = tmp_path / "bench"
    command = [sys.executable, "-m", "scripts.bench", "--run", str(run_dir), "--quick"]
    result = subprocess.run(
        [*command, "--out", str(out_dir)], cwd=REPO_ROOT, timeout=600, capture_output=True
    )
    assert result.returncode == 0, result.stderr.decode()[-3000:]

    (report_dir,) = [path for path in out_dir.iterdir() if path.name != "latest"]
    assert (out_dir / "latest").is_symlink()
    assert (out_dir / "latest").resolve() == report_dir.resolve()

    results = json.loads((report_dir / "results.json").read_text(encoding="utf-8"))
    assert set(results["cases"]) == set(CASES)
    assert results["settings"]["model"]["version"] == "fixed-colour-1"
    assert results["settings"]["quick"] is True
    assert set(results["ratios"]) == set(TARGETS)
    for name, value in results["ratios"].items():
        assert isinstance(value, (int, float)) and math.isfinite(value), name
    assert set(results["targets"]) == set(TARGETS)
    for name, target in results["targets"].items():
        assert (target["comparison"], target["target"]) == TARGETS[name]
        assert isinstance(target["met"], bool)
    workers = results["settings"]["model_config"]["minWorkers"]
    if workers > 1:
        # The served figure is compared with as many handler processes as the server has workers.
        parallel = results["cases"]["in_process"]["parallel"]
        assert parallel["processes"] == workers
        assert parallel["mean_images_per_s"] > 0
    for case in ("served", "stock"):
        levels = results["cases"][case]["levels"]
        assert [level["concurrency"] for level in levels] == [1, 4]
        assert all(level["requests"] > 0 and level["errors"] == 0 for level in levels), case
    # Our server's JVM runs with the options of config.properties, the stock one with none.
    vmargs = read_vmargs(REPO_ROOT / "config.properties")
    assert results["cases"]["served"]["server"]["jvm_options"] == [
        arg for arg in vmargs if arg.startswith("-X")
    ]
    assert results["cases"]["stock"]["server"]["jvm_options"] == []

    report = (report_dir / "report.md").read_text(encoding="utf-8")
    for name in TARGETS:
        assert name in report
    assert "What limits the served throughput" in report
    with Image.open(report_dir / "latency_vs_concurrency.png") as image:
        assert image.format == "PNG"
        image.verify()
