"""The Locust load test against a real TorchServe serving the fixed-weight model.

The server runs from a temporary folder on free ports with our model config (as `make serve`
would), built from `fixed_export`, and is always stopped afterwards. Each test runs
`python -m loadtest.run` as `make loadtest` does, for a few seconds, and reads the reports it
leaves. Nothing here asserts a latency: the machine may be busy.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.archive import build_archive
from scripts.server import KEY_FILE, Server, serve_archive
from tests.conftest import REPO_ROOT

PROFILES = (
    "photo raw 250px",
    "photo multipart 250px",
    "photo mixed 250px",
    "photo mixed 1024px",
    "photo mixed 4000px",
)
BAD_INPUTS = ("bad: empty", "bad: not an image", "bad: truncated jpeg", "bad: pixel bomb png")


@pytest.fixture(scope="module")
def server(fixed_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("loadtest_server")
    archive = build_archive(fixed_export, root / "archives")
    with serve_archive(archive, root / "serve") as served:
        yield served


def run_load_test(server: Server, out_dir: Path, *options: str) -> int:
    """Runs `python -m loadtest.run` against `server` and returns its exit code."""
    command = [
        sys.executable,
        "-m",
        "loadtest.run",
        "--host",
        server.url("inference", ""),
        "--key-file",
        str(server.workdir / KEY_FILE),
        "--out",
        str(out_dir),
        "--users",
        "5",
        "--spawn-rate",
        "5",
        *options,
    ]
    return subprocess.run(command, cwd=REPO_ROOT, timeout=300).returncode


def read_stats(report_dir: Path) -> dict[str, dict[str, str]]:
    with open(report_dir / "locust_stats.csv", encoding="utf-8", newline="") as f:
        return {row["Name"]: row for row in csv.DictReader(f)}


@pytest.mark.slow
@pytest.mark.server
def test_load_test_passes_and_reports_every_profile_without_failures(
    server: Server, tmp_path: Path
) -> None:
    # A generous p95 limit: this asserts the traffic and the reports, not the machine's speed.
    code = run_load_test(server, tmp_path, "--run-time", "10s", "--max-p95-ms", "20000")

    assert code == 0
    report_dir = (tmp_path / "latest").resolve()
    assert report_dir.parent == tmp_path.resolve()
    assert (report_dir / "report.html").stat().st_size > 0
    stats = read_stats(report_dir)
    for name in (*PROFILES, *BAD_INPUTS):
        assert int(stats[name]["Request Count"]) > 0, name
        assert int(stats[name]["Failure Count"]) == 0, name
    assert int(stats["Aggregated"]["Failure Count"]) == 0


@pytest.mark.slow
@pytest.mark.server
def test_an_impossible_p95_limit_fails_the_run(server: Server, tmp_path: Path) -> None:
    code = run_load_test(server, tmp_path, "--run-time", "4s", "--max-p95-ms", "0.001")

    assert code != 0
    assert (tmp_path / "latest" / "locust_stats.csv").is_file()
