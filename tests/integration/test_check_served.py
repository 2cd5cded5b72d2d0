"""The served-versus-evaluated check on real TorchServe servers and real archives.

Two tiny runs are trained on generated photos; each check starts its own TorchServe on free
ports in a temporary folder and stops it afterwards.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts import check_served
from scripts.archive import build_archive, find_export
from training import train
from training.synthetic import generate_dataset

pytestmark = [pytest.mark.slow, pytest.mark.server]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    photos = tmp_path_factory.mktemp("photos") / "synthetic"
    generate_dataset(photos, seed=0, counts={"train": 16, "val": 6, "test": 6}, size=64, workers=1)
    runs_dir = tmp_path_factory.mktemp("runs")
    return {
        name: train.run(
            train.load_config(
                "tiny", [f"data.root={photos}", f"runs_dir={runs_dir}", f"name={name}"]
            )
        )
        for name in ("first", "second")
    }


def test_the_archive_of_a_run_answers_like_its_evaluation(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    archive = build_archive(find_export(runs["first"]), tmp_path / "store")

    assert check_served.main(["--run", str(runs["first"]), "--archive", str(archive)]) == 0

    result = json.loads((runs["first"] / "served_check.json").read_text())
    assert result["passed"]
    assert result["photos"] == 24  # val and test, 6 per class each
    assert result["max_abs_difference"] <= check_served.TOLERANCE
    assert result["served_model_versions"] == [result["run_model_version"]]


def test_an_archive_of_another_run_fails_the_check(
    runs: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    archive = build_archive(find_export(runs["second"]), tmp_path / "store")

    assert check_served.main(["--run", str(runs["first"]), "--archive", str(archive)]) == 1

    assert "rebuild it with make archive" in caplog.text
    assert not json.loads((runs["first"] / "served_check.json").read_text())["passed"]


def test_a_run_without_predictions_is_refused_with_the_remedy(
    runs: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (runs["second"] / "predictions.csv").unlink()
    archive = tmp_path / "smoke.mar"
    archive.write_bytes(b"unused")

    assert check_served.main(["--run", str(runs["second"]), "--archive", str(archive)]) == 1

    assert "written by training" in caplog.text
