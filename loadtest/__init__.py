"""Load test of the served model, plus what it shares with the benchmark: photos and reports.

    python -m loadtest.run            # Locust, headless, against the server of `make serve`

The Locust user classes live in `loadtest/locustfile.py`, their settings in `loadtest/locust.conf`.
This package itself imports neither Locust nor torch and does nothing on import, so that
`scripts/bench.py` sends the same photos and files its reports the same way (a folder per run
named by its UTC start time, and a `latest` link to the newest) without Locust's gevent patching.
"""

from __future__ import annotations

import io
import logging
import os
import time
from pathlib import Path

from PIL import Image

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PHOTO_ROOT = REPO_ROOT.parent / "shared" / "data" / "kaggle-smoking"
PHOTO_SPLITS = ("val", "train")
PHOTO_CLASSES = ("smoking", "notsmoking")
SYNTHETIC_SIDE = 250  # the side of the real photos, so both sources cost the server the same
JPEG_QUALITY = 90


def find_photos(root: Path) -> list[Path]:
    """The JPEG photos under `root/{val,train}/{smoking,notsmoking}/`, classes interleaved."""
    per_class = [
        sorted(path for split in PHOTO_SPLITS for path in (root / split / name).glob("*.jpg"))
        for name in PHOTO_CLASSES
    ]
    interleaved = [path for pair in zip(*per_class, strict=False) for path in pair]
    longest = max(per_class, key=len)
    return interleaved + longest[min(len(paths) for paths in per_class) :]


def load_photos(root: Path | None, count: int) -> tuple[list[bytes], str]:
    """Reads `count` photos from the real data set, or draws synthetic ones when it is absent.

    Args:
        root: the data set folder; None means `../shared/data/kaggle-smoking`.
        count: how many photos to return (fewer when the data set holds fewer).

    Returns:
        The encoded JPEG photos, half of each class, and a line saying where they came from.
    """
    root = root or DEFAULT_PHOTO_ROOT
    paths = find_photos(root) if root.is_dir() else []
    if paths:
        step = max(1, len(paths) // count)
        chosen = paths[::step][:count]
        return [path.read_bytes() for path in chosen], f"{len(chosen)} real photos from {root}"
    logger.warning("No photos under %s; drawing %d synthetic scenes instead", root, count)
    return render_photos(count), f"{count} synthetic {SYNTHETIC_SIDE} px scenes"


def render_photos(count: int, seed: int = 0) -> list[bytes]:
    """Draws `count` synthetic scenes (alternately smoking and not) as JPEG photos."""
    import numpy as np

    from training.synthetic import render_scene

    photos = []
    for idx in range(count):
        rng = np.random.default_rng([seed, idx])
        photos.append(encode_jpeg(render_scene(rng, smoking=idx % 2 == 0, size=SYNTHETIC_SIDE)))
    return photos


def encode_jpeg(image: Image.Image, quality: int = JPEG_QUALITY) -> bytes:
    """The image encoded as a baseline JPEG."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def new_report_dir(parent: Path) -> Path:
    """Creates `parent/<UTC time>/` (with a suffix when that name is taken) and returns it."""
    parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for attempt in range(100):
        report_dir = parent / (stamp if attempt == 0 else f"{stamp}-{attempt}")
        try:
            report_dir.mkdir()
        except FileExistsError:
            continue
        return report_dir
    raise FileExistsError(f"no free report folder name for {stamp} in {parent}")


def point_latest(report_dir: Path) -> Path:
    """Points `<parent>/latest` at `report_dir` (a relative link, replaced atomically)."""
    link = report_dir.parent / "latest"
    staging = report_dir.parent / f".latest-{os.getpid()}"
    staging.unlink(missing_ok=True)
    staging.symlink_to(report_dir.name, target_is_directory=True)
    os.replace(staging, link)
    return link
