"""Tests of `scripts.archive`: what goes into smoke.mar and how missing inputs are refused."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
import yaml

from scripts.archive import ArchiveError, build_archive, find_export, main
from tests.conftest import REPO_ROOT


@pytest.fixture
def run_dir(fixed_export: Path, tmp_path: Path) -> Path:
    """A run folder whose export/ is the fixed-weight export."""
    run = tmp_path / "run"
    shutil.copytree(fixed_export, run / "export")
    return run


def test_archive_holds_model_handler_package_and_config(run_dir: Path, tmp_path: Path) -> None:
    archive = build_archive(find_export(run_dir), tmp_path / "store")

    assert archive == tmp_path / "store" / "smoke.mar"
    with zipfile.ZipFile(archive) as mar:
        names = set(mar.namelist())
        manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))
        packaged_handler = mar.read("smoke_handler.py")
        packaged_preprocessing = mar.read("handler/preprocessing.py")
        model_config = yaml.safe_load(mar.read("model_config.yaml"))
        model = mar.read("model.pt")
    assert {
        "model.pt",
        "smoke_handler.py",
        "handler/__init__.py",
        "handler/preprocessing.py",
        "handler/torchscript.py",
        "handler/worker_process.py",
        "index_to_name.json",
        "preprocess.json",
        "model_config.yaml",
        "MAR-INF/MANIFEST.json",
    } == names
    assert manifest["model"] == {
        "modelName": "smoke",
        "serializedFile": "model.pt",
        "handler": "smoke_handler.py",
        "modelVersion": "fixed-colour-1",
        "configFile": "model_config.yaml",
    }
    assert packaged_handler == (REPO_ROOT / "handler" / "smoke_handler.py").read_bytes()
    assert packaged_preprocessing == (REPO_ROOT / "handler" / "preprocessing.py").read_bytes()
    assert model == (run_dir / "export" / "model.pt").read_bytes()
    assert model_config["handler"]["intra_op_threads"] >= 1


def test_cli_builds_the_archive_with_another_name_and_config(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "batching.yaml"
    config.write_text("batchSize: 4\nmaxBatchDelay: 200\n")
    out = tmp_path / "out"
    arguments = ["--run", str(run_dir), "--out", str(out), "--name", "other"]
    assert main([*arguments, "--model-config", str(config)]) == 0
    archive = out / "other.mar"
    assert capsys.readouterr().out.strip() == str(archive)
    with zipfile.ZipFile(archive) as mar:
        manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))["model"]
        packaged_config = yaml.safe_load(mar.read(manifest["configFile"]))
    assert manifest["modelName"] == "other"
    assert packaged_config == {"batchSize": 4, "maxBatchDelay": 200}


def test_missing_run_folder_says_to_train_first(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match=r"does not exist.*make train"):
        find_export(tmp_path / "no-such-run")


def test_run_without_export_says_to_train_again(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    with pytest.raises(ArchiveError, match=r"no export/ folder.*make train"):
        find_export(tmp_path / "run")


@pytest.mark.parametrize("missing", ["model.pt", "index_to_name.json", "preprocess.json"])
def test_export_missing_a_file_names_it(run_dir: Path, missing: str) -> None:
    (run_dir / "export" / missing).unlink()
    with pytest.raises(ArchiveError, match=rf"lacks {missing}.*make train"):
        find_export(run_dir)


def test_cli_refusal_exits_non_zero_without_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    assert main(["--run", str(tmp_path / "nothing"), "--out", str(tmp_path / "store")]) == 1
    assert capsys.readouterr().out == ""
    assert "make train" in caplog.text
    assert not (tmp_path / "store").exists()
