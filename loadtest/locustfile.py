"""Locust traffic for the served smoke model: one user class per kind of client.

    python -m loadtest.run                                   # the usual way, with reports
    locust -f loadtest/locustfile.py --config loadtest/locust.conf   # by hand, from the repo root

Profiles, each a user class:

- `RawPhotoUser`: a 250 px photo as the raw body (`curl -T photo.jpg`), "photo raw 250px".
- `MultipartPhotoUser`: the same photos as the form field `data`, "photo multipart 250px".
- `MixedSizeUser`: a phone-like mix as the raw body: 60 % thumbnails (250 px), 30 % web-sized
  photos (1024x768) and 10 % full phone photos (4032x3024), "photo mixed <size>".
- `BadInputUser`: one user, one request a second, cycling through an empty body, text, a
  truncated JPEG and a PNG whose header claims 400 million pixels, "bad: <kind>". Each must be
  answered with its 4xx status and the handler's JSON error; that counts as a success.

Every photo answer must be a 200 with `label`, `probability`, `probabilities` and
`model_version`. The photos are the real ones in ../shared/data/kaggle-smoking (or `--photos`),
or synthetic scenes when those are absent; the larger sizes are the same photos upscaled and
padded to a phone's 4:3 frame. All payloads and the inference key are read once per process,
at Locust's `init`, not per request. The key file is read once, so a run longer than the
server's token_expiration_min (60 min) needs a renewed key.

At exit, the process exit code is 1 when the failure ratio of all requests exceeds
`--max-fail-ratio` or the 95th percentile of the photo requests (Locust's own figure, in ms)
exceeds `--max-p95-ms`, 0 otherwise. Bad-input requests are left out of that percentile, as
they are refused before the model runs. Every profile needs a user of its own: run with at
least 4 users. Importing this file registers Locust event listeners, as any locustfile does.
"""

from __future__ import annotations

import functools
import io
import itertools
import json
import logging
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from locust import FastHttpUser, between, constant_pacing, events, task
from locust.argument_parser import LocustArgumentParser
from locust.contrib.fasthttp import ResponseContextManager
from locust.env import Environment
from locust.stats import StatsEntry
from PIL import Image, ImageOps
from urllib3 import encode_multipart_formdata

from loadtest import encode_jpeg, load_photos

logger = logging.getLogger(__name__)

ANSWER_FIELDS = ("label", "probability", "probabilities", "model_version")
PHOTO_PREFIX = "photo "  # requests named so carry a real photo and count towards the p95 limit
THUMBNAILS = 32
WEB_SIZE, WEB_PHOTOS = (1024, 768), 4
FULL_SIZE, FULL_PHOTOS = (4032, 3024), 2  # a 12-megapixel phone photo
# Sizes of the mixed profile, in the order sent: 6 thumbnails, 3 web and 1 full photo per cycle.
MIX = ("250px", "1024px", "250px", "4000px", "250px", "1024px", "250px", "250px", "1024px", "250px")


@dataclass(frozen=True)
class BadInput:
    """A request body the server must refuse, with the error type it must name."""

    name: str
    body: bytes
    reason: str


@dataclass(frozen=True)
class Payloads:
    """Everything the users send, built once per process."""

    photos: dict[str, list[bytes]]  # size label -> encoded JPEG photos
    multipart: list[tuple[bytes, str]]  # (body, content type) of the 250 px photos
    bad: list[BadInput]
    source: str


@events.init_command_line_parser.add_listener
def add_arguments(parser: LocustArgumentParser) -> None:
    """Our settings; their defaults for a run live in loadtest/locust.conf."""
    group = parser.add_argument_group("smoke")
    group.add_argument(
        "--key-file",
        default="key_file.json",
        env_var="SMOKE_KEY_FILE",
        help="TorchServe's key_file.json, whose inference key is sent as a Bearer token",
    )
    group.add_argument("--model-name", default="smoke", help="the model to call")
    group.add_argument(
        "--photos",
        default="",
        env_var="SMOKE_PHOTOS",
        help="folder with {val,train}/{smoking,notsmoking}/*.jpg; empty: the shared data set",
    )
    group.add_argument(
        "--max-fail-ratio", type=float, default=0.01, help="highest failure ratio that passes"
    )
    group.add_argument(
        "--max-p95-ms", type=float, default=1000.0, help="highest p95 of photo requests in ms"
    )


@events.init.add_listener
def prepare(environment: Environment, **_kwargs: Any) -> None:
    """Builds the payloads and reads the key before any user starts."""
    options = environment.parsed_options
    if options is None:
        return
    payloads = build_payloads(options.photos)
    read_auth_header(options.key_file)
    logger.info(
        "Payloads from %s: %s",
        payloads.source,
        ", ".join(f"{len(v)} x {k}" for k, v in payloads.photos.items()),
    )


@events.quitting.add_listener
def apply_limits(environment: Environment, **_kwargs: Any) -> None:
    """Sets the exit code from the failure ratio and the p95 of photo requests."""
    options = environment.parsed_options
    if options is None:
        return
    stats = environment.stats
    photos = StatsEntry(stats, "photos", "")
    for entry in stats.entries.values():
        if entry.name.startswith(PHOTO_PREFIX):
            photos.extend(entry)

    problems = []
    if stats.total.fail_ratio > options.max_fail_ratio:
        problems.append(
            f"failure ratio {stats.total.fail_ratio:.4f} > limit {options.max_fail_ratio}"
        )
    if photos.num_requests == 0:
        problems.append("no photo request was sent")
    else:
        p95 = photos.get_response_time_percentile(0.95)
        if p95 > options.max_p95_ms:
            problems.append(f"photo p95 {p95} ms > limit {options.max_p95_ms:g} ms")
    if environment.runner is not None and environment.runner.exceptions:
        problems.append(f"{len(environment.runner.exceptions)} exceptions in the locustfile")

    environment.process_exit_code = 1 if problems else 0
    for problem in problems:
        logger.error("Limit failed: %s", problem)
    if not problems:
        logger.info("Within limits: failure ratio and photo p95")


@functools.cache
def build_payloads(photo_root: str) -> Payloads:
    """Reads the photos and builds every size, form and bad input, once per process."""
    thumbnails, source = load_photos(Path(photo_root) if photo_root else None, THUMBNAILS)
    photos = {
        "250px": thumbnails,
        "1024px": [enlarge(photo, WEB_SIZE) for photo in thumbnails[:WEB_PHOTOS]],
        "4000px": [enlarge(photo, FULL_SIZE) for photo in thumbnails[:FULL_PHOTOS]],
    }
    multipart = [
        encode_multipart_formdata({"data": ("photo.jpg", photo, "image/jpeg")})
        for photo in thumbnails
    ]
    bad = [
        BadInput("bad: empty", b"", "empty_body"),
        BadInput("bad: not an image", b"these bytes are text, not a photo", "not_an_image"),
        BadInput("bad: truncated jpeg", thumbnails[0][: len(thumbnails[0]) // 2], "truncated"),
        BadInput("bad: pixel bomb png", claimed_size_png(20_000, 20_000), "too_many_pixels"),
    ]
    return Payloads(photos, multipart, bad, source)


def enlarge(photo: bytes, size: tuple[int, int]) -> bytes:
    """The photo upscaled into a `size` frame, padded with grey, as a JPEG."""
    with Image.open(io.BytesIO(photo)) as image:
        framed = ImageOps.pad(
            image.convert("RGB"), size, Image.Resampling.BICUBIC, color=(128, 128, 128)
        )
    return encode_jpeg(framed)


def claimed_size_png(width: int, height: int) -> bytes:
    """A 16x16 PNG whose header claims `width x height` pixels, as a decompression bomb does."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 40, 40)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    struct.pack_into(">II", data, 16, width, height)  # the IHDR chunk's width and height
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))  # and its checksum
    return bytes(data)


@functools.cache
def read_auth_header(key_file: str) -> str:
    """`Bearer <inference key>` from TorchServe's key file."""
    path = Path(key_file)
    try:
        keys = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise FileNotFoundError(
            f"{path.resolve()} not found; start the server first (make serve) or pass "
            "--key-file with the key_file.json of the server under test"
        ) from error
    return f"Bearer {keys['inference']['key']}"


def check_answer(response: ResponseContextManager) -> None:
    """A photo must get a 200 with every field of the answer."""
    if response.status_code != 200:
        response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")
        return
    try:
        answer = response.json()
    except ValueError:
        response.failure(f"the answer is not JSON: {(response.text or '')[:200]}")
        return
    missing = [name for name in ANSWER_FIELDS if name not in answer]
    if missing:
        response.failure(f"the answer lacks {missing}: {answer}")
    else:
        response.success()


def check_refusal(response: ResponseContextManager, bad: BadInput) -> None:
    """A bad input must get a 4xx whose JSON names the expected error type."""
    status = response.status_code
    if not 400 <= status < 500:
        response.failure(f"expected a 4xx {bad.reason} refusal, got HTTP {status}")
        return
    try:
        error = response.json()
    except ValueError:
        response.failure(f"HTTP {status} without our JSON error body: {response.text!r:.200}")
        return
    if error.get("type") != bad.reason or error.get("code") != status or not error.get("message"):
        response.failure(f"expected a {bad.reason} error with code {status}, got {error}")
    else:
        response.success()


class SmokeUser(FastHttpUser):
    """What every profile shares: the endpoint, the key and the payloads."""

    abstract = True
    wait_time = between(0.05, 0.5)
    network_timeout = 60.0
    connection_timeout = 10.0

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.path = f"/predictions/{options.model_name}"
        self.auth = read_auth_header(options.key_file)
        self.payloads = build_payloads(options.photos)
        self.turn = itertools.count()

    def send_raw(self, photo: bytes, name: str) -> None:
        headers = {"Authorization": self.auth, "Content-Type": "image/jpeg"}
        with self.client.put(
            self.path, data=photo, headers=headers, name=name, catch_response=True
        ) as response:
            check_answer(response)

    def pick(self, items: list[Any]) -> Any:
        """The next item in turn: each user walks its payloads in order."""
        return items[next(self.turn) % len(items)]


class RawPhotoUser(SmokeUser):
    """Sends a 250 px photo as the raw request body."""

    @task
    def raw_photo(self) -> None:
        self.send_raw(self.pick(self.payloads.photos["250px"]), "photo raw 250px")


class MultipartPhotoUser(SmokeUser):
    """Sends a 250 px photo as the multipart form field `data`."""

    @task
    def multipart_photo(self) -> None:
        body, content_type = self.pick(self.payloads.multipart)
        headers = {"Authorization": self.auth, "Content-Type": content_type}
        with self.client.post(
            self.path, data=body, headers=headers, name="photo multipart 250px", catch_response=True
        ) as response:
            check_answer(response)


class MixedSizeUser(SmokeUser):
    """Sends thumbnails, web-sized and full phone photos in the proportions of `MIX`."""

    def on_start(self) -> None:
        super().on_start()
        self.sizes: Iterator[str] = itertools.cycle(MIX)

    @task
    def mixed_photo(self) -> None:
        size = next(self.sizes)
        self.send_raw(self.pick(self.payloads.photos[size]), f"photo mixed {size}")


class BadInputUser(SmokeUser):
    """One user that sends a bad input every second, each kind in turn."""

    fixed_count = 1
    wait_time = constant_pacing(1.0)

    @task
    def bad_input(self) -> None:
        bad: BadInput = self.pick(self.payloads.bad)
        headers = {"Authorization": self.auth, "Content-Type": "image/jpeg"}
        with self.client.put(
            self.path, data=bad.body, headers=headers, name=bad.name, catch_response=True
        ) as response:
            check_refusal(response, bad)
