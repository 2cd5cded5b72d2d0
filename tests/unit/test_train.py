"""End-to-end training on a few generated photos: artifacts, loss, export, resume, errors."""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from handler.preprocessing import PreprocessSpec
from handler.torchscript import load_torchscript
from tests.conftest import encode_photo
from training import train
from training.engine import build_lr_scheduler
from training.export import ExportError, InferenceModel, check_parity
from training.synthetic import generate_dataset

TINY_COUNTS = {"train": 24, "val": 8, "test": 8}
TIMING_COLUMNS = {"images_per_second", "seconds"}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny_data") / "synthetic"
    generate_dataset(root, seed=0, counts=TINY_COUNTS, size=64, workers=1)
    return root


def run_tiny(tiny_data: Path, runs: Path, *overrides: str) -> Path:
    config = train.load_config("tiny", [f"data.root={tiny_data}", f"runs_dir={runs}", *overrides])
    return train.run(config)


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    with open(run_dir / "metrics.csv", encoding="utf-8") as f:
        rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in rows]


@pytest.fixture(scope="module")
def tiny_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run_tiny(tiny_data, tmp_path_factory.mktemp("runs"))


def test_two_epochs_lower_the_training_loss(tiny_run: Path) -> None:
    rows = read_metrics(tiny_run)
    assert [row["epoch"] for row in rows] == [1, 2]
    assert rows[1]["train_loss"] < rows[0]["train_loss"]


def test_a_run_writes_every_artifact(tiny_run: Path) -> None:
    expected = [
        "config.yaml",
        "manifest.csv",
        "metrics.csv",
        "environment.json",
        "summary.json",
        "curves.png",
        "confusion_matrix.png",
        "checkpoints/best.pt",
        "checkpoints/last.pt",
        "export/model.pt",
        "export/index_to_name.json",
        "export/preprocess.json",
    ]
    missing = [name for name in expected if not (tiny_run / name).is_file()]
    assert not missing
    assert (tiny_run.parent / "latest").resolve() == tiny_run.resolve()
    manifest = (tiny_run / "manifest.csv").read_text().splitlines()
    assert len(manifest) == 1 + 2 * sum(TINY_COUNTS.values())
    environment = json.loads((tiny_run / "environment.json").read_text())
    assert environment["seed"] == 0 and environment["torch"] == torch.__version__


def test_checkpoints_hold_what_resuming_needs(tiny_run: Path) -> None:
    last = torch.load(tiny_run / "checkpoints" / "last.pt", weights_only=False)
    assert {"model", "optimizer", "lr_scheduler", "config", "state", "rng", "shuffle_rng"} <= set(
        last
    )
    assert last["epoch"] == 2
    assert last["config"]["train"]["epochs"] == 2


def test_export_is_described_by_its_json_files(tiny_run: Path) -> None:
    export = tiny_run / "export"
    spec = PreprocessSpec.load(export / "preprocess.json")
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert json.loads((export / "index_to_name.json").read_text()) == {
        "0": "not_smoking",
        "1": "smoking",
    }
    assert spec.input_size == 48 and spec.model_version == tiny_run.name
    assert spec.data_fingerprint == summary["data_fingerprint"]
    assert spec.threshold == summary["threshold"] and spec.temperature == summary["temperature"]
    assert spec.metrics["test_accuracy"] == pytest.approx(summary["test_accuracy"], abs=1e-5)
    model = load_torchscript(export / "model.pt")
    assert model(torch.randn(2, 3, 48, 48)).shape == (2, 2)


def test_same_config_and_seed_give_the_same_metrics(tiny_run: Path, tiny_data: Path) -> None:
    again = run_tiny(tiny_data, tiny_run.parent)
    assert read_metrics(again) == read_metrics(tiny_run)
    first = load_torchscript(tiny_run / "export" / "model.pt")
    second = load_torchscript(again / "export" / "model.pt")
    batch = torch.randn(4, 3, 48, 48)
    assert torch.equal(first(batch), second(batch))


def test_interrupted_run_resumes_to_the_same_result(
    tiny_run: Path, tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_train_one_epoch = train.train_one_epoch

    def stop_in_second_epoch(*args, **kwargs):
        if args[5] == 2:  # the epoch number
            raise KeyboardInterrupt
        return real_train_one_epoch(*args, **kwargs)

    monkeypatch.setattr(train, "train_one_epoch", stop_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        run_tiny(tiny_data, tmp_path)
    interrupted = (tmp_path / "latest").resolve()
    assert [row["epoch"] for row in read_metrics(interrupted)] == [1]

    monkeypatch.setattr(train, "train_one_epoch", real_train_one_epoch)
    resumed = run_tiny(tiny_data, tmp_path, f"train.resume={interrupted}")
    assert resumed == interrupted
    assert read_metrics(resumed) == read_metrics(tiny_run)


def test_resume_refuses_changed_photos(tiny_data: Path, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    shutil.copytree(tiny_data, photos)
    run_dir = run_tiny(photos, tmp_path / "runs", "train.epochs=1")
    changed = next((photos / "train" / "smoking").iterdir())
    changed.write_bytes(encode_photo((1, 2, 3), (64, 64), "JPEG"))
    with pytest.raises(train.ConfigError, match="the photos changed"):
        run_tiny(photos, tmp_path / "runs", f"train.resume={run_dir}")


def test_export_parity_check_fails_loudly_on_a_mismatch(tiny_run: Path) -> None:
    other = InferenceModel(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(2)))
    batch = torch.randn(2, 3, 48, 48)
    other(batch)
    with pytest.raises(ExportError, match="differs from the eager model"):
        check_parity(other, tiny_run / "export" / "model.pt", batch, tolerance=1e-4)


def test_weights_and_biases_offline_run_is_recorded(tiny_data: Path, tmp_path: Path) -> None:
    run_dir = run_tiny(tiny_data, tmp_path, "wandb.mode=offline", "train.epochs=1")
    offline_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1
    assert list(offline_runs[0].glob("*.wandb"))


def test_training_survives_a_failing_weights_and_biases(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    """W&B is replaced by a stub whose `init` raises, as an unreachable server would."""
    import wandb

    def unreachable(*args, **kwargs):
        raise ConnectionError("api.wandb.ai unreachable")

    monkeypatch.setattr(wandb, "init", unreachable)
    with caplog.at_level(logging.WARNING, logger="training.tracking"):
        run_dir = run_tiny(tiny_data, tmp_path, "wandb.mode=online", "train.epochs=1")
    assert (run_dir / "export" / "model.pt").is_file()
    assert "W&B tracking is off" in caplog.text


def test_cli_reports_a_bad_override_and_exits_2(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        assert train.main(["--config", "tiny", "train.epochs=lots"]) == 2
    assert "train.epochs must be a whole number" in caplog.text


def test_cli_reports_missing_photos_and_exits_2(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        code = train.main(["--config", "tiny", f"data.root={tmp_path / 'absent'}"])
    assert code == 2
    assert "does not exist" in caplog.text


def test_cli_prints_the_run_and_its_accuracy(
    tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    code = train.main(["--config", "tiny", f"data.root={tiny_data}", f"runs_dir={tmp_path}"])
    assert code == 0
    line = capsys.readouterr().out.strip()
    assert "val_accuracy" in line and "test_accuracy" in line and "model.pt" in line


@pytest.mark.parametrize(("epochs", "steps_per_epoch"), [(1, 1), (1, 2), (2, 2), (1, 3), (3, 50)])
def test_one_cycle_schedule_runs_for_any_number_of_steps(epochs: int, steps_per_epoch: int) -> None:
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([parameter], lr=0.01)
    config = train.load_config("tiny", [f"train.epochs={epochs}", "train.warmup_epochs=0.5"]).train
    scheduler = build_lr_scheduler(optimizer, config, steps_per_epoch)
    rates = []
    for _ in range(epochs * steps_per_epoch):
        optimizer.step()
        scheduler.step()
        rates.append(optimizer.param_groups[0]["lr"])
    assert all(0 < rate <= 0.01 for rate in rates)


def test_missing_weights_file_stops_before_a_run_folder_is_made(
    tiny_data: Path, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    with pytest.raises(FileNotFoundError, match=r"model\.init_weights=.*nope\.pth does not exist"):
        run_tiny(tiny_data, runs, f"model.init_weights={tmp_path / 'nope.pth'}")
    assert not runs.exists() or not any(runs.iterdir())


@pytest.mark.parametrize(
    ("asked", "fast_bf16", "trained"),
    [
        ("bf16", True, "bf16"),
        ("bf16", False, "fp32"),
        ("fp32", True, "fp32"),
        ("fp32", False, "fp32"),
    ],
)
def test_bf16_is_used_only_where_the_cpu_runs_it_natively(
    asked: str, fast_bf16: bool, trained: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(train, "cpu_has_fast_bf16", lambda: fast_bf16)
    config = train.load_config("tiny", [f"train.precision={asked}"])
    assert train.choose_precision(config).train.precision == trained


def test_a_run_records_the_precision_it_fell_back_to(
    tiny_data: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(train, "cpu_has_fast_bf16", lambda: False)
    with caplog.at_level(logging.WARNING):
        run_dir = run_tiny(tiny_data, tmp_path, "train.epochs=1", "train.precision=bf16")
    assert "no native bfloat16" in caplog.text
    assert "precision: fp32" in (run_dir / "config.yaml").read_text()
