"""Reading the three photo layouts, skipping unreadable files, and the data manifest."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import pytest
import torch

from tests.conftest import encode_photo
from training import data
from training.config import DataConfig

SIZE = (40, 32)


def write_photo(path: Path, colour: tuple[int, int, int] = (120, 80, 60)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_photo(colour, SIZE, "JPEG"))
    return path


def make_class_folders(root: Path, per_class: int = 3, splits=("train", "val", "test")) -> None:
    for split in splits:
        for folder in ("smoking", "notsmoking"):
            for i in range(per_class):
                write_photo(root / split / folder / f"{folder}_{i:04d}.jpg", (i * 40, 90, 30))


def counts(samples: list[data.Sample]) -> Counter:
    return Counter((s.split, s.label) for s in samples)


def test_class_folder_layout_labels_notsmoking_zero_and_smoking_one(tmp_path: Path) -> None:
    make_class_folders(tmp_path)
    samples = data.discover(DataConfig(root=str(tmp_path)), seed=0)
    assert data.detect_layout(tmp_path) == "class_folders"
    assert counts(samples) == {(s, label): 3 for s in data.SPLITS for label in (0, 1)}
    assert all((s.label == 1) == (s.path.parent.name == "smoking") for s in samples)


def test_class_folder_layout_without_test_split(tmp_path: Path) -> None:
    make_class_folders(tmp_path, splits=("train", "val"))
    samples = data.discover(DataConfig(root=str(tmp_path)), seed=0)
    assert {s.split for s in samples} == {"train", "val"}


@pytest.mark.parametrize("nested", [True, False])
def test_kaggle_layout_takes_the_label_from_the_file_name(tmp_path: Path, nested: bool) -> None:
    for folder in data.KAGGLE_FOLDERS.values():
        target = tmp_path / folder / folder if nested else tmp_path / folder
        for i in range(2):
            write_photo(target / f"smoking_{i:04d}.jpg")
            write_photo(target / f"notsmoking_{i:04d}.jpg")
    samples = data.discover(DataConfig(root=str(tmp_path)), seed=0)
    assert data.detect_layout(tmp_path) == "kaggle"
    assert counts(samples) == {(s, label): 2 for s in data.SPLITS for label in (0, 1)}
    assert all((s.label == 1) == s.path.name.startswith("smoking") for s in samples)


def test_kaggle_file_without_a_label_prefix_is_refused(tmp_path: Path) -> None:
    write_photo(tmp_path / "Training" / "smoking_0001.jpg")
    write_photo(tmp_path / "Training" / "photo_0002.jpg")
    with pytest.raises(data.DataError, match="must start with the label"):
        data.discover(DataConfig(root=str(tmp_path), layout="kaggle"), seed=0)


def test_flat_layout_is_split_by_ratio_per_class_and_by_seed(tmp_path: Path) -> None:
    for folder in ("smoking", "notsmoking"):
        for i in range(20):
            write_photo(tmp_path / folder / f"{i:03d}.jpg")
    config = DataConfig(root=str(tmp_path), split_ratios=(0.6, 0.2, 0.2))
    first = data.discover(config, seed=1)
    assert data.detect_layout(tmp_path) == "flat"
    assert counts(first) == {
        (split, label): n
        for split, n in (("train", 12), ("val", 4), ("test", 4))
        for label in (0, 1)
    }
    assert data.discover(config, seed=1) == first
    assert data.discover(config, seed=2) != first


def test_folder_in_no_layout_says_what_was_expected(tmp_path: Path) -> None:
    write_photo(tmp_path / "photos" / "a.jpg")
    with pytest.raises(data.DataError, match="expected one of: class folders"):
        data.discover(DataConfig(root=str(tmp_path)), seed=0)


def test_missing_folder_is_reported(tmp_path: Path) -> None:
    with pytest.raises(data.DataError, match="does not exist"):
        data.discover(DataConfig(root=str(tmp_path / "absent")), seed=0)


def test_empty_class_stops_with_an_error(tmp_path: Path) -> None:
    make_class_folders(tmp_path)
    for photo in (tmp_path / "val" / "smoking").iterdir():
        photo.unlink()
    with pytest.raises(data.DataError, match="split 'val' has no 'smoking' photos"):
        data.discover(DataConfig(root=str(tmp_path)), seed=0)


def test_missing_validation_split_stops_with_an_error(tmp_path: Path) -> None:
    make_class_folders(tmp_path, splits=("train", "test"))
    (tmp_path / "val").mkdir()
    with pytest.raises(data.DataError, match="has no val photos"):
        data.discover(DataConfig(root=str(tmp_path), layout="class_folders"), seed=0)


def test_unreadable_photo_is_skipped_with_one_warning_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_class_folders(tmp_path)
    broken = tmp_path / "train" / "smoking" / "smoking_0001.jpg"
    broken.write_bytes(b"this is not a jpeg")
    samples = data.discover(DataConfig(root=str(tmp_path)), seed=0)
    with caplog.at_level(logging.WARNING, logger="training.data"):
        split, skipped = data.load_split("train", samples, data.train_decoder(24), threads=1)
    assert [s.path for s in skipped] == [broken]
    assert len(split.images) == 5
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(broken) in warnings[0].getMessage()


def test_split_whose_class_is_all_unreadable_is_an_error(tmp_path: Path) -> None:
    make_class_folders(tmp_path, per_class=1)
    (tmp_path / "val" / "smoking" / "smoking_0000.jpg").write_bytes(b"")
    samples = data.discover(DataConfig(root=str(tmp_path)), seed=0)
    with pytest.raises(data.DataError, match="no readable 'smoking' photos"):
        data.load_split("val", samples, data.train_decoder(24), threads=1)


def test_train_decoder_resizes_the_shorter_side(tmp_path: Path) -> None:
    photo = write_photo(tmp_path / "a.jpg")
    tensor = data.train_decoder(16)(data.Sample(photo, "train", 0))
    assert tensor.dtype == torch.uint8
    assert tensor.shape == (3, 16, 20)  # 40x32 photo: height 32 -> 16, width 40 -> 20


def test_manifest_hashes_content_and_fingerprint_follows_it(tmp_path: Path) -> None:
    make_class_folders(tmp_path)
    samples = data.discover(DataConfig(root=str(tmp_path)), seed=0)
    rows = data.build_manifest(samples, tmp_path)
    assert rows[0].file == str(samples[0].path.relative_to(tmp_path))
    assert all(len(row.sha256) == 64 and row.bytes > 0 for row in rows)
    before = data.fingerprint(rows)
    assert data.fingerprint(data.build_manifest(samples, tmp_path)) == before
    write_photo(samples[0].path, (1, 2, 3))
    assert data.fingerprint(data.build_manifest(samples, tmp_path)) != before
    data.write_manifest(rows, tmp_path / "manifest.csv")
    header = (tmp_path / "manifest.csv").read_text().splitlines()[0]
    assert header == "file,split,label,sha256,bytes,status"
