"""Finding, checking and loading labelled photos for training and evaluation.

Three layouts are read (see `DataConfig`): class folders with train/val/test splits, the Kaggle
folders with the label in the file name, and one flat tree of class folders that is split with
the run's seed. Every photo is hashed into a manifest, and the manifest into a fingerprint, so a
result can be traced to exactly the photos it came from. A photo that cannot be decoded is
skipped with one warning and counted.

Photos are decoded once and kept in memory: training photos as uint8 tensors (shorter side
`cache_size`) for augmentation, evaluation photos as the exact tensors the served model will
see, built with the shared `handler.preprocessing` path.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F
from tqdm import tqdm

from handler.preprocessing import (
    CLASS_NAMES,
    ImageRejectedError,
    PreprocessSpec,
    build_eval_transform,
    decode_image,
)
from training.config import AugmentConfig, DataConfig, ModelConfig

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"})
# Folder names and Kaggle file-name prefixes accepted for each label index.
LABEL_ALIASES = {
    "notsmoking": 0,
    "not_smoking": 0,
    "nonsmoking": 0,
    "non_smoking": 0,
    "smoking": 1,
}
KAGGLE_FOLDERS = {"train": "Training", "val": "Validation", "test": "Testing"}
KAGGLE_NAME = re.compile(r"^(?P<label>[a-z_]+?)_?\d+$", re.IGNORECASE)
LAYOUT_HELP = (
    "expected one of: class folders ROOT/{train,val[,test]}/{smoking,notsmoking}/*.jpg; "
    "the Kaggle layout ROOT/{Training,Validation[,Testing]}/[same name again/]smoking_0001.jpg; "
    "or a flat tree ROOT/{smoking,notsmoking}/*.jpg that is split by data.split_ratios"
)


class DataError(ValueError):
    """The photos cannot be used as given; the message says what layout was expected."""


@dataclass(frozen=True)
class Sample:
    path: Path
    split: str
    label: int


@dataclass
class Split:
    """The decoded photos of one split, ready to batch."""

    name: str
    samples: list[Sample]
    images: list[torch.Tensor]  # each (3, H, W) uint8 for train, (3, S, S) float for eval
    labels: torch.Tensor  # (N,) int64


@dataclass
class ManifestRow:
    file: str
    split: str
    label: int
    sha256: str
    bytes: int
    status: str


def discover(config: DataConfig, seed: int) -> list[Sample]:
    """Lists every photo under `config.root` with its split and label.

    Raises:
        DataError: the folder is missing, in no known layout, or a split or class is empty.
    """
    root = Path(config.root)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist; {LAYOUT_HELP}")
    layout = config.layout if config.layout != "auto" else detect_layout(root)
    logger.info("Reading %s as the %s layout", root, layout)
    if layout == "class_folders":
        samples = _discover_class_folders(root)
    elif layout == "kaggle":
        samples = _discover_kaggle(root)
    else:
        samples = _discover_flat(root, config.split_ratios, seed)
    _check_nonempty(samples, root, layout)
    return samples


def detect_layout(root: Path) -> str:
    if (root / "train").is_dir() and (root / "val").is_dir():
        return "class_folders"
    if (root / KAGGLE_FOLDERS["train"]).is_dir():
        return "kaggle"
    if any((root / name).is_dir() for name in LABEL_ALIASES):
        return "flat"
    raise DataError(f"{root} is in no known layout; {LAYOUT_HELP}")


def _list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _class_folders(parent: Path) -> dict[int, list[Path]]:
    found: dict[int, list[Path]] = {0: [], 1: []}
    for child in sorted(parent.iterdir()) if parent.is_dir() else []:
        if child.is_dir() and child.name.lower() in LABEL_ALIASES:
            found[LABEL_ALIASES[child.name.lower()]] += _list_images(child)
    return found


def _discover_class_folders(root: Path) -> list[Sample]:
    samples = []
    for split in SPLITS:
        if not (root / split).is_dir():
            continue
        for label, paths in _class_folders(root / split).items():
            samples += [Sample(path, split, label) for path in paths]
    return samples


def _discover_kaggle(root: Path) -> list[Sample]:
    samples = []
    for split, folder_name in KAGGLE_FOLDERS.items():
        folder = root / folder_name
        if (folder / folder_name).is_dir():  # the Kaggle archive nests each folder once more
            folder = folder / folder_name
        for path in _list_images(folder):
            match = KAGGLE_NAME.match(path.stem)
            label = LABEL_ALIASES.get(match.group("label").lower()) if match else None
            if label is None:
                raise DataError(
                    f"{path}: in the Kaggle layout the file name must start with the label, "
                    f"e.g. smoking_0001.jpg or notsmoking_0001.jpg"
                )
            samples.append(Sample(path, split, label))
    return samples


def _discover_flat(root: Path, ratios: Sequence[float], seed: int) -> list[Sample]:
    """Splits each class on its own (stratified), after a shuffle fixed by `seed`."""
    samples = []
    for label, paths in _class_folders(root).items():
        paths = sorted(paths)
        random.Random(f"{seed}-{label}").shuffle(paths)
        n_train = round(len(paths) * ratios[0])
        n_val = round(len(paths) * ratios[1])
        bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val)}
        bounds["test"] = (n_train + n_val, len(paths))
        for split, (start, stop) in bounds.items():
            samples += [Sample(path, split, label) for path in paths[start:stop]]
    return samples


def _check_nonempty(samples: list[Sample], root: Path, layout: str) -> None:
    counts = Counter((s.split, s.label) for s in samples)
    present = {s.split for s in samples}
    for split in ("train", "val"):
        if split not in present:
            raise DataError(f"{root} ({layout} layout) has no {split} photos; {LAYOUT_HELP}")
    for split in sorted(present):
        for label, name in enumerate(CLASS_NAMES):
            if counts[(split, label)] == 0:
                raise DataError(
                    f"{root} ({layout} layout): split {split!r} has no {name!r} photos; every "
                    f"split needs both classes; {LAYOUT_HELP}"
                )


def build_manifest(samples: Sequence[Sample], root: str | Path) -> list[ManifestRow]:
    """Hashes every photo's bytes; the decode status is filled in later by `load_split`."""
    rows = []
    for sample in samples:
        data = sample.path.read_bytes()
        rows.append(
            ManifestRow(
                file=_relative(sample.path, root),
                split=sample.split,
                label=sample.label,
                sha256=hashlib.sha256(data).hexdigest(),
                bytes=len(data),
                status="ok",
            )
        )
    return rows


def fingerprint(rows: Sequence[ManifestRow]) -> str:
    """A short hash of which photos (by content) went into which split with which label."""
    digest = hashlib.sha256()
    for row in sorted(rows, key=lambda r: (r.split, r.label, r.sha256)):
        if row.status == "ok":
            digest.update(f"{row.split},{row.label},{row.sha256}\n".encode())
    return digest.hexdigest()[:16]


def write_manifest(rows: Sequence[ManifestRow], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "split", "label", "sha256", "bytes", "status"])
        for row in rows:
            writer.writerow([row.file, row.split, row.label, row.sha256, row.bytes, row.status])


def _relative(path: Path, root: str | Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def load_split(
    name: str,
    samples: Sequence[Sample],
    decode: Callable[[Sample], torch.Tensor],
    threads: int,
) -> tuple[Split, list[Sample]]:
    """Decodes the photos of one split in parallel; returns the split and the skipped samples.

    A photo that fails to decode is skipped with one WARNING naming it.
    """
    chosen = [s for s in samples if s.split == name]

    def attempt(sample: Sample) -> torch.Tensor | None:
        try:
            return decode(sample)
        except (ImageRejectedError, OSError) as error:
            logger.warning("Skipping unreadable photo %s: %s", sample.path, error)
            return None

    with ThreadPoolExecutor(max_workers=threads) as pool:
        results = list(
            tqdm(
                pool.map(attempt, chosen),
                total=len(chosen),
                desc=f"decode {name}",
                unit="img",
                leave=False,
                disable=None,
            )
        )
    kept = [(s, t) for s, t in zip(chosen, results, strict=True) if t is not None]
    skipped = [s for s, t in zip(chosen, results, strict=True) if t is None]
    for label, class_name in enumerate(CLASS_NAMES):
        if not any(s.label == label for s, _ in kept):
            raise DataError(
                f"split {name!r} has no readable {class_name!r} photos after skipping "
                f"{len(skipped)} unreadable ones"
            )
    split = Split(
        name=name,
        samples=[s for s, _ in kept],
        images=[t for _, t in kept],
        labels=torch.tensor([s.label for s, _ in kept], dtype=torch.int64),
    )
    return split, skipped


def train_decoder(cache_size: int) -> Callable[[Sample], torch.Tensor]:
    """Decodes a training photo to a uint8 `(3, H, W)` tensor with shorter side `cache_size`."""

    def decode(sample: Sample) -> torch.Tensor:
        image = decode_image(sample.path.read_bytes(), draft_size=cache_size)
        if min(image.size) != cache_size:
            scale = cache_size / min(image.size)
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=None)
        return F.pil_to_tensor(image)

    return decode


def eval_decoder(spec: PreprocessSpec) -> Callable[[Sample], torch.Tensor]:
    """Decodes a photo exactly as the served handler does: `(3, S, S)` float32."""
    transform = build_eval_transform(spec)

    def decode(sample: Sample) -> torch.Tensor:
        return transform(decode_image(sample.path.read_bytes(), draft_size=spec.draft_size))

    return decode


def build_train_transform(augment: AugmentConfig, model: ModelConfig) -> v2.Transform:
    """The random per-photo augmentation, on uint8 tensors, ending in a normalised float."""
    steps: list[v2.Transform] = [
        v2.RandomResizedCrop(
            model.input_size, scale=augment.crop_scale, ratio=augment.crop_ratio, antialias=True
        )
    ]
    if augment.hflip:
        steps.append(v2.RandomHorizontalFlip(augment.hflip))
    if augment.rotation:
        steps.append(v2.RandomRotation(augment.rotation))
    if augment.policy == "trivial":
        steps.append(v2.TrivialAugmentWide())
    elif augment.policy == "randaugment":
        steps.append(v2.RandAugment())
    elif augment.policy == "autoaugment":
        steps.append(v2.AutoAugment())
    if augment.color_jitter or augment.hue:
        strength = augment.color_jitter
        steps.append(v2.ColorJitter(strength, strength, strength, augment.hue))
    if augment.grayscale:
        steps.append(v2.RandomGrayscale(augment.grayscale))
    if augment.blur:
        steps.append(v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 2.0))], p=augment.blur))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(model.mean, model.std)]
    if augment.erasing:
        steps.append(v2.RandomErasing(augment.erasing))
    return v2.Compose(steps)


class AugmentedDataset(torch.utils.data.Dataset):
    """Training photos held in memory, augmented afresh every time one is drawn."""

    def __init__(self, split: Split, transform: v2.Transform):
        self.split = split
        self.transform = transform

    def __len__(self) -> int:
        return len(self.split.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.split.images[index]), self.split.labels[index]
