"""Unit tests of `SmokeHandler`, driven in-process without a server.

The handler gets what TorchServe's Python worker would give it. Each batch is written in the
frontend's wire format and read back by TorchServe's own `otf_message_handler` and
`Service.retrieve_data_for_inference`, so JSON bodies arrive parsed and form fields arrive by
name exactly as in the worker; the context is TorchServe's `Context` with its
`RequestProcessor`s; metrics go to TorchServe's `MetricsCacheYamlImpl` loaded from our
metrics.yaml. Faked are only the socket (a byte buffer) and the unpacked archive (the
`fixed_export` folder, which holds the same files as the .mar).
"""

from __future__ import annotations

import base64
import dataclasses
import gc
import io
import json
import logging
import struct
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from PIL import Image
from ts.context import Context
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
from ts.protocol.otf_message_handler import retrieve_msg
from ts.service import Service
from ts.utils.util import list_classes_from_module

import handler.smoke_handler as smoke_handler_module
from handler.preprocessing import PreprocessSpec, build_eval_transform
from handler.smoke_handler import SmokeHandler, read_handler_settings
from tests.conftest import REPO_ROOT, encode_photo, expected_smoking_probability, fixed_spec
from training.data import Sample, eval_decoder

RED = (200, 40, 40)
BLUE = (40, 40, 200)
RED_BASE64 = base64.b64encode(encode_photo(RED)).decode()
Parameter = tuple[str, str, bytes]  # (name, content type, value) as the frontend sends it


class BufferSocket:
    """Stands in for the worker's socket: `recv` reads from a byte buffer."""

    def __init__(self, data: bytes) -> None:
        self.buffer = io.BytesIO(data)

    def recv(self, size: int) -> bytes:
        return self.buffer.read(size)


def encode_batch(
    requests: Sequence[Sequence[Parameter]], headers: Mapping[str, str] | None = None
) -> bytes:
    """A predict message in the frontend's wire format (see otf_message_handler)."""

    def chunk(value: bytes) -> bytes:
        return struct.pack("!i", len(value)) + value

    message = b"I"
    for idx, parameters in enumerate(requests):
        message += chunk(f"request-{idx}".encode())
        for name, header in (headers or {}).items():
            message += chunk(name.encode()) + chunk(header.encode())
        message += struct.pack("!i", -1)
        for name, content_type, value in parameters:
            message += chunk(name.encode()) + chunk(content_type.encode()) + chunk(value)
        message += struct.pack("!i", -1)
    return message + struct.pack("!i", -1)


def raw(data: bytes, content_type: str = "application/octet-stream") -> list[Parameter]:
    return [("body", content_type, data)]


def form(data: bytes, name: str = "data") -> list[Parameter]:
    return [(name, "image/png", data)]


def as_json(value: Any) -> list[Parameter]:
    return [("body", "application/json", json.dumps(value).encode())]


def as_base64(data: bytes, prefix: str = "") -> list[Parameter]:
    return as_json({"image": prefix + base64.b64encode(data).decode()})


@dataclasses.dataclass
class Served:
    handler: SmokeHandler
    context: Context


@pytest.fixture(scope="module")
def served(fixed_export: Path) -> Iterator[Served]:
    """A handler initialised from the fixed-weight export, as a TorchServe worker would."""
    threads = torch.get_num_threads()
    metrics = MetricsCacheYamlImpl(config_file_path=str(REPO_ROOT / "metrics.yaml"))
    metrics.initialize_cache()
    metrics.model_name = "smoke"
    with open(REPO_ROOT / "handler" / "model_config.yaml", encoding="utf-8") as f:
        model_config = yaml.safe_load(f)
    manifest = {
        "model": {
            "modelName": "smoke",
            "serializedFile": "model.pt",
            "handler": "smoke_handler.py",
            "modelVersion": "fixed-colour-1",
            "configFile": "model_config.yaml",
        }
    }
    context = Context(
        "smoke", str(fixed_export), manifest, 8, None, "0.12.0", True, metrics, model_config
    )
    handler = SmokeHandler()
    handler.initialize(context)
    yield Served(handler, context)
    torch.set_num_threads(threads)


def start_batch(
    served: Served,
    requests: Sequence[Sequence[Parameter]],
    headers: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Decodes a batch as the worker does and sets the context up for it."""
    _, batch = retrieve_msg(BufferSocket(encode_batch(requests, headers)))
    headers, input_batch, request_ids = Service.retrieve_data_for_inference(batch)
    served.context.request_ids = request_ids
    served.context.request_processor = headers
    served.context.metrics.request_ids = request_ids
    return input_batch


def run_batch(
    served: Served,
    requests: Sequence[Sequence[Parameter]],
    headers: Mapping[str, str] | None = None,
) -> tuple[list[dict[str, Any]], list[int]]:
    """The answers of a batch and the HTTP status of each request."""
    answers = served.handler.handle(start_batch(served, requests, headers), served.context)
    json.dumps(answers)  # TorchServe serialises each answer with json.dumps
    statuses = [served.context.get_response_status(i)[0] for i in range(len(requests))]
    return answers, statuses


def preprocess_one(served: Served, parameters: Sequence[Parameter]) -> torch.Tensor:
    """The `(3, S, S)` tensor the handler feeds the model for one request."""
    served.handler.context = served.context
    batch, answers = served.handler.preprocess(start_batch(served, [parameters]))
    assert answers == [None], answers
    return batch[0]


def reference_tensor(image: Image.Image, spec: PreprocessSpec | None = None) -> torch.Tensor:
    return build_eval_transform(spec or fixed_spec())(image)


def png_claiming_size(width: int, height: int) -> bytes:
    """A small PNG whose header claims `width x height`, as a decompression bomb does."""
    data = bytearray(encode_photo(size=(16, 16)))
    struct.pack_into(">II", data, 16, width, height)  # IHDR width and height
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))  # IHDR checksum
    return bytes(data)


def noisy_photo(size: tuple[int, int] = (200, 150), seed: int = 0) -> Image.Image:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=generator, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def test_module_defines_exactly_one_class_as_torchserve_requires() -> None:
    assert list_classes_from_module(smoke_handler_module) == [SmokeHandler]


def test_initialize_loads_the_export_and_logs_once(
    fixed_export: Path, served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    handler = served.handler
    assert handler.initialized
    assert handler.spec == fixed_spec()
    assert handler.mapping == {"0": "not_smoking", "1": "smoking"}
    assert handler.device == torch.device("cpu")
    configured = served.context.model_yaml_config["handler"]["intra_op_threads"]
    assert torch.get_num_threads() == configured

    with caplog.at_level(logging.DEBUG, logger="handler.smoke_handler"):
        SmokeHandler().initialize(served.context)
        run_batch(served, [raw(encode_photo(RED))] * 3)
    records = [r for r in caplog.records if r.name == "handler.smoke_handler"]
    assert [r.levelno for r in records if r.levelno >= logging.INFO] == [logging.INFO]
    assert "fixed-colour-1" in records[0].getMessage()


def test_initialize_freezes_start_up_objects_and_quietens_the_batch_notice(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    assert gc.get_freeze_count() > 100_000  # torch, TorchServe and the model

    with caplog.at_level(logging.INFO):
        start_batch(served, [raw(encode_photo(RED))])  # TorchServe logs its notice here
        logging.getLogger().info("Another line on the root logger")
    messages = [r.getMessage() for r in caplog.records]
    assert "Another line on the root logger" in messages
    assert not [m for m in messages if m.startswith("Backend received inference")]


@pytest.mark.parametrize(
    "parameters",
    [
        pytest.param(raw(encode_photo(RED)), id="raw-bytes"),
        pytest.param(raw(encode_photo(RED), "image/png"), id="raw-with-image-type"),
        pytest.param(form(encode_photo(RED)), id="form-field-data"),
        pytest.param(form(encode_photo(RED), name="photo"), id="single-other-form-field"),
        pytest.param(as_base64(encode_photo(RED)), id="base64-json"),
        pytest.param(as_base64(encode_photo(RED), "data:image/png;base64,"), id="data-url"),
        pytest.param(
            [("body", "text/plain", base64.b64encode(encode_photo(RED)))], id="base64-text"
        ),
        pytest.param(
            [
                ("body", "application/octet-stream", json.dumps({"image": RED_BASE64}).encode()),
                ("debug", "text/plain", b"a query parameter"),
            ],
            id="json-sent-as-octet-stream",
        ),
    ],
)
def test_each_input_form_gets_the_exact_answer(served: Served, parameters: list[Parameter]) -> None:
    answers, statuses = run_batch(served, [parameters])
    spec = fixed_spec()
    smoking = expected_smoking_probability(RED, spec)
    assert statuses == [200]
    assert answers[0]["label"] == "smoking"
    assert answers[0]["probability"] == pytest.approx(smoking, abs=1e-6)
    assert answers[0]["probabilities"] == pytest.approx(
        {"smoking": smoking, "not_smoking": 1 - smoking}, abs=1e-6
    )
    assert answers[0]["model_version"] == "fixed-colour-1"


BAD_REQUESTS = [
    pytest.param(raw(b""), 400, "empty_body", id="empty-body"),
    pytest.param(raw(b"hello, this is text"), 400, "not_an_image", id="not-an-image"),
    pytest.param(raw(encode(noisy_photo(), "JPEG")[:3000]), 400, "truncated", id="truncated-jpeg"),
    pytest.param(raw(encode(noisy_photo(), "PNG")[:20000]), 400, "truncated", id="truncated-png"),
    pytest.param(
        raw(encode(noisy_photo(), "TIFF")), 415, "unsupported_format", id="unsupported-tiff"
    ),
    pytest.param(
        raw(png_claiming_size(20_000, 20_000)), 413, "too_many_pixels", id="decompression-bomb"
    ),
    pytest.param(
        raw(png_claiming_size(8_000, 8_000)), 413, "too_many_pixels", id="over-pixel-limit"
    ),
    pytest.param(raw(encode_photo(size=(10, 10))), 422, "bad_dimensions", id="too-small"),
    pytest.param(raw(encode_photo(size=(1000, 40))), 422, "bad_dimensions", id="too-narrow"),
    pytest.param(as_json({"image": "not base64 at all!"}), 400, "bad_base64", id="bad-base64"),
    pytest.param(as_json({"image": "data:image/png;base64,"}), 400, "empty_body", id="empty-b64"),
    pytest.param(as_json({"photo": "aGVsbG8="}), 400, "missing_field", id="no-image-key"),
    pytest.param(as_json({"image": 42}), 400, "missing_field", id="image-not-a-string"),
    pytest.param(as_json([1, 2]), 400, "bad_json", id="json-array"),
    pytest.param(raw(b'{"image": ', "application/json"), 400, "bad_json", id="broken-json"),
    pytest.param(
        [("a", "image/png", b"1"), ("b", "image/png", b"2")], 400, "missing_field", id="two-files"
    ),
]


@pytest.mark.parametrize(("parameters", "status", "reason"), BAD_REQUESTS)
def test_bad_input_gets_its_4xx_and_json_body(
    served: Served, parameters: list[Parameter], status: int, reason: str
) -> None:
    answers, statuses = run_batch(served, [parameters])
    assert statuses == [status]
    assert answers[0]["code"] == status
    assert answers[0]["type"] == reason
    assert isinstance(answers[0]["message"], str) and len(answers[0]["message"]) > 20

    answers, statuses = run_batch(served, [raw(encode_photo(BLUE))])
    assert statuses == [200] and answers[0]["label"] == "not_smoking"


def test_mixed_batch_answers_each_request_in_order(served: Served) -> None:
    answers, statuses = run_batch(
        served,
        [raw(encode_photo(RED)), raw(b"garbage"), form(encode_photo(BLUE)), as_json({})],
    )
    assert statuses == [200, 400, 200, 400]
    assert [a.get("label") for a in answers] == ["smoking", None, "not_smoking", None]
    assert [a.get("type") for a in answers] == [None, "not_an_image", None, "missing_field"]
    assert answers[2]["probability"] == pytest.approx(
        1 - expected_smoking_probability(BLUE, fixed_spec()), abs=1e-6
    )


def test_explanations_are_answered_501_per_request(served: Served) -> None:
    answers, statuses = run_batch(
        served, [raw(encode_photo(RED)), raw(b"")], headers={"explain": "True"}
    )
    assert statuses == [501, 400]
    assert [a["type"] for a in answers] == ["not_implemented", "empty_body"]


def test_batch_of_only_bad_requests_skips_the_model(served: Served) -> None:
    answers, statuses = run_batch(served, [raw(b""), raw(b"x")])
    assert statuses == [400, 400]
    assert [a["type"] for a in answers] == ["empty_body", "not_an_image"]


def animated_gif(first: tuple[int, int, int], second: tuple[int, int, int]) -> bytes:
    frames = [Image.new("RGB", (120, 90), first), Image.new("RGB", (120, 90), second)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)


@pytest.mark.parametrize(
    ("data", "reference"),
    [
        pytest.param(encode_photo(RED, fmt="PNG"), Image.new("RGB", (120, 90), RED), id="png"),
        pytest.param(encode_photo(RED, fmt="BMP"), Image.new("RGB", (120, 90), RED), id="bmp"),
        pytest.param(
            encode(Image.new("RGB", (120, 90), RED), "WEBP", lossless=True),
            Image.new("RGB", (120, 90), RED),
            id="webp-lossless",
        ),
        pytest.param(animated_gif(RED, BLUE), Image.new("RGB", (120, 90), RED), id="gif-first"),
        pytest.param(
            encode_photo(RED, mode="L"),
            Image.new("RGB", (120, 90), RED).convert("L").convert("RGB"),
            id="grayscale",
        ),
        pytest.param(encode_photo(RED, mode="RGBA"), Image.new("RGB", (120, 90), RED), id="rgba"),
        pytest.param(
            encode_photo(RED, mode="P"),
            Image.new("RGB", (120, 90), RED).convert("P").convert("RGB"),
            id="palette",
        ),
        pytest.param(
            encode(Image.new("RGBA", (120, 90), (*RED, 0)), "PNG"),
            Image.new("RGB", (120, 90), (255, 255, 255)),
            id="transparent-over-white",
        ),
    ],
)
def test_lossless_formats_give_the_tensor_of_the_rgb_photo(
    served: Served, data: bytes, reference: Image.Image
) -> None:
    assert torch.equal(preprocess_one(served, raw(data)), reference_tensor(reference))


@pytest.mark.parametrize(
    ("data", "tolerance"),
    [
        pytest.param(encode_photo(RED, fmt="JPEG"), 0.01, id="jpeg"),
        pytest.param(encode_photo(RED, fmt="JPEG", mode="CMYK"), 0.03, id="cmyk-jpeg"),
        pytest.param(encode(Image.new("RGB", (120, 90), RED), "WEBP"), 0.01, id="webp-lossy"),
    ],
)
def test_lossy_formats_are_answered_close_to_the_exact_colour(
    served: Served, data: bytes, tolerance: float
) -> None:
    answers, statuses = run_batch(served, [raw(data)])
    assert statuses == [200]
    expected = expected_smoking_probability(RED, fixed_spec())
    assert answers[0]["probabilities"]["smoking"] == pytest.approx(expected, abs=tolerance)


def test_exif_orientation_is_honoured(served: Served) -> None:
    upright = Image.new("RGB", (120, 80), RED)
    upright.paste(Image.new("RGB", (60, 80), BLUE), (60, 0))  # left red, right blue
    # A camera held sideways stores the photo turned and says how to turn it back (6: 90° CW).
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    tagged = encode(stored, "PNG", exif=exif.tobytes())

    tensor = preprocess_one(served, raw(tagged))
    assert torch.equal(tensor, reference_tensor(upright))
    assert not torch.equal(preprocess_one(served, raw(encode(stored, "PNG"))), tensor)


@pytest.mark.parametrize("rgb", [RED, BLUE, (128, 128, 128), (255, 0, 0), (120, 100, 110)])
def test_solid_colours_get_the_exact_colournet_probability(
    served: Served, rgb: tuple[int, int, int]
) -> None:
    answers, statuses = run_batch(served, [raw(encode_photo(rgb))])
    smoking = expected_smoking_probability(rgb, fixed_spec())
    label = "smoking" if smoking >= 0.5 else "not_smoking"
    assert statuses == [200]
    assert answers[0]["label"] == label
    assert answers[0]["probability"] == pytest.approx(max(smoking, 1 - smoking), abs=1e-6)
    assert answers[0]["probabilities"]["smoking"] == pytest.approx(smoking, abs=1e-6)


def test_threshold_decides_the_label(served: Served) -> None:
    rgb = (150, 100, 120)  # smoking probability about 0.75
    smoking = expected_smoking_probability(rgb, fixed_spec())
    assert 0.6 < smoking < 0.9
    spec = served.handler.spec
    try:
        served.handler.spec = dataclasses.replace(spec, threshold=0.9)
        answers, _ = run_batch(served, [raw(encode_photo(rgb))])
    finally:
        served.handler.spec = spec
    assert answers[0]["label"] == "not_smoking"
    assert answers[0]["probability"] == pytest.approx(1 - smoking, abs=1e-6)


def test_generated_jpeg_matches_the_training_evaluation_path(
    served: Served, tmp_path: Path
) -> None:
    path = tmp_path / "photo.jpg"
    noisy_photo((400, 300)).save(path, format="JPEG", quality=90)
    expected = eval_decoder(fixed_spec())(Sample(path, "val", 1))
    assert torch.equal(preprocess_one(served, raw(path.read_bytes())), expected)


@pytest.mark.real_data
def test_real_photos_match_the_training_evaluation_path(
    served: Served, real_data_root: Path
) -> None:
    paths = sorted((real_data_root / "val").glob("*/*.jpg"))[::45]
    assert paths
    decode = eval_decoder(fixed_spec())
    for path in paths:
        expected = decode(Sample(path, "val", 0))
        assert torch.equal(preprocess_one(served, raw(path.read_bytes())), expected), path


def test_metrics_are_emitted_with_the_declared_dimensions(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="ts.metrics"):
        run_batch(
            served,
            [raw(encode_photo(RED)), raw(encode_photo(RED)), raw(b""), raw(encode_photo(BLUE))],
        )
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("ts.metrics")]
    assert not [line for line in lines if "Failed" in line], lines
    emitted = {line.split("|")[0].removeprefix("[METRICS]"): line for line in lines}
    model = "ModelName:smoke,Level:Model"
    assert f"#{model},label:smoking|#type:COUNTER" in emitted["smoke_predictions_total.Count:2"]
    assert f"#{model},label:not_smoking|" in emitted["smoke_predictions_total.Count:1"]
    assert f"#{model},reason:empty_body|" in emitted["smoke_rejected_requests_total.Count:1"]
    assert f"#{model}|#type:HISTOGRAM" in emitted["smoke_batch_size.Count:4"]
    names = {name.split(".")[0] for name in emitted}
    assert {"smoke_preprocess_seconds", "smoke_inference_seconds", "HandlerTime"} <= names


def test_handler_settings_are_validated() -> None:
    assert read_handler_settings({})["intra_op_threads"] == 1
    assert (
        read_handler_settings({"handler": {"profile": True, "decode_threads": 4}})["decode_threads"]
        == 4
    )
    assert read_handler_settings({"handler": {"forward_threads": 2}})["forward_threads"] == 2
    with pytest.raises(ValueError, match="unknown handler settings"):
        read_handler_settings({"handler": {"threads": 2}})
    with pytest.raises(ValueError, match="positive integer"):
        read_handler_settings({"handler": {"intra_op_threads": 0}})


def test_index_to_name_that_disagrees_with_the_spec_is_refused(
    fixed_export: Path, served: Served, tmp_path: Path
) -> None:
    for name in ("model.pt", "preprocess.json"):
        (tmp_path / name).write_bytes((fixed_export / name).read_bytes())
    (tmp_path / "index_to_name.json").write_text('{"0": "smoking", "1": "not_smoking"}')
    broken = Context(
        "smoke", str(tmp_path), served.context.manifest, 8, None, "0.12.0", True, None, {}
    )
    with pytest.raises(ValueError, match="re-export"):
        SmokeHandler().initialize(broken)
