"""`make demo`, the project's main job, run exactly as a user runs it, in a copy of the checkout.

The copy holds the files git tracks (and the untracked ones it does not ignore) with their
times kept, and links to this checkout's `.venv`, so `make setup` finds everything installed
and the demo itself generates the photos, trains the default config, builds the archive and
starts a real TorchServe. The server listens on free ports (TorchServe's TS_* variables) and
keeps its pid file and sockets in a private TMPDIR; `make stop` always runs afterwards.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from scripts.server import Server, find_jvm, pick_free_ports
from tests.colour_baseline import histogram_accuracy
from tests.conftest import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.server]

DEMO_TIMEOUT_S = 900


def copy_checkout(destination: Path) -> None:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    for name in filter(None, listed.split("\0")):
        source = REPO_ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    (destination / ".venv").symlink_to(REPO_ROOT / ".venv")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str], str]]:
    """Runs `make demo` once; yields the checkout copy, its environment and the demo's output."""
    checkout = tmp_path_factory.mktemp("checkout")
    private_tmp = tmp_path_factory.mktemp("tmp")
    copy_checkout(checkout)
    inference, management, metrics, grpc_inference, grpc_management = pick_free_ports(5)
    environment = {
        **os.environ,
        "TMPDIR": str(private_tmp),
        "TS_INFERENCE_ADDRESS": f"http://127.0.0.1:{inference}",
        "TS_MANAGEMENT_ADDRESS": f"http://127.0.0.1:{management}",
        "TS_METRICS_ADDRESS": f"http://127.0.0.1:{metrics}",
        "TS_GRPC_INFERENCE_PORT": str(grpc_inference),
        "TS_GRPC_MANAGEMENT_PORT": str(grpc_management),
        "WANDB_MODE": "offline",
    }
    try:
        finished = subprocess.run(
            ["make", "demo"],
            cwd=checkout,
            env=environment,
            capture_output=True,
            text=True,
            timeout=DEMO_TIMEOUT_S,
        )
        assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
        yield checkout, environment, finished.stdout
    finally:
        subprocess.run(["make", "stop"], cwd=checkout, env=environment, timeout=120)


def test_demo_prints_the_answer_for_a_smoking_photo(
    demo: tuple[Path, dict[str, str], str],
) -> None:
    _, _, output = demo
    answer = json.loads(re.search(r"\(a smoking photo\):\n(\{.*?\n\})", output, re.S).group(1))
    assert set(answer) == {"label", "probability", "probabilities", "model_version"}
    assert answer["probabilities"]["smoking"] == pytest.approx(answer["probability"])
    assert "make stop" in output
    assert re.search(r"Prometheus metrics: curl -s http://127\.0\.0\.1:\d+/metrics", output)


def test_the_printed_curl_line_works_as_printed(demo: tuple[Path, dict[str, str], str]) -> None:
    checkout, environment, output = demo
    curl_line = re.search(r"Query it yourself:\n\s+(curl .*)", output).group(1)
    answered = subprocess.run(
        ["bash", "-c", curl_line],
        cwd=checkout,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(answered.stdout)["label"] in {"smoking", "not_smoking"}


def test_the_demo_server_counts_its_predictions_on_metrics(
    demo: tuple[Path, dict[str, str], str],
) -> None:
    _, environment, _ = demo
    text = requests.get(environment["TS_METRICS_ADDRESS"] + "/metrics", timeout=10).text
    predictions = sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "smoke_predictions_total"
    )
    assert predictions >= 1


def test_the_trained_model_clearly_beats_a_colour_histogram(
    demo: tuple[Path, dict[str, str], str],
) -> None:
    checkout, _, _ = demo
    summary = json.loads((checkout / "runs" / "latest" / "summary.json").read_text())
    photos = checkout / "data" / "synthetic"

    def split(name: str) -> Iterator[tuple[Image.Image, int]]:
        for label, folder in ((0, "notsmoking"), (1, "smoking")):
            for path in sorted((photos / name / folder).iterdir()):
                with Image.open(path) as image:
                    yield image.resize((64, 64)), label

    baseline = histogram_accuracy(split("train"), split("test"))
    assert summary["test_accuracy"] >= baseline + 0.15, (summary["test_accuracy"], baseline)


def test_make_stop_leaves_no_server_behind(demo: tuple[Path, dict[str, str], str]) -> None:
    checkout, environment, _ = demo
    subprocess.run(["make", "stop"], cwd=checkout, env=environment, timeout=120, check=True)
    served = Server.load(checkout, tmp_dir=Path(environment["TMPDIR"]))
    assert find_jvm(served) is None
