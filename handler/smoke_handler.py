"""TorchServe handler that tells from a photo whether a person is smoking.

TorchServe imports this file from `smoke.mar` (built by `python -m scripts.archive`), calls
`initialize` once per worker and then `handle` once per batch of requests. Photos are decoded and
normalised by `handler.preprocessing`, the code the training evaluation uses, with the settings
that travel in the archive as `preprocess.json`, so the served answer is the evaluated one.

A request may carry the photo as the raw body (`curl -T photo.jpg`, or `--data-binary @photo.jpg`
with `-H "Content-Type: image/jpeg"`), as a multipart form field (`-F data=@photo.jpg`), or as
JSON `{"image": "<base64>"}`, where a `data:image/jpeg;base64,` prefix is allowed. Each request
gets its own answer: a request that carries no usable photo is answered with its own 4xx status
and a JSON body saying what was wrong, while the rest of its batch is still classified.

The handler keeps TorchServe's `handle` (describe requests, profiling, the HandlerTime metric).
It offers no Captum explanations, as the TorchScript model has no eager graph to attribute
through: /explanations requests are answered 501.
"""

from __future__ import annotations

import base64
import binascii
import http
import json
import logging
import re
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from ts.context import Context
from ts.metrics.dimension import Dimension
from ts.metrics.metric_type_enum import MetricTypes
from ts.torch_handler.base_handler import BaseHandler

from handler.preprocessing import (
    DEFAULT_MAX_PIXELS,
    ImageRejectedError,
    PreprocessSpec,
    build_eval_transform,
    decode_image,
)
from handler.torchscript import SplitForward, load_torchscript
from handler.worker_process import prepare_worker_process

logger = logging.getLogger(__name__)

# Names under which TorchServe hands over the photo: `body` for a raw or JSON body, the form
# field's own name for multipart uploads (we document `data`).
PAYLOAD_FIELDS = ("data", "body")
JSON_IMAGE_KEY = "image"
DATA_URL_PREFIX = re.compile(r"^data:[\w.+/-]*(?:;[\w.+=-]+)*?;base64,", re.IGNORECASE)
METRIC_LEVEL = "Model"  # the Level dimension TorchServe gives model metrics

Answer = dict[str, Any]  # the JSON answer of one request
# The accepted photos `(K, 3, S, S)` and, per request, its error answer or None once accepted.
Prepared = tuple[torch.Tensor | None, list[Answer | None]]
Probabilities = tuple[torch.Tensor | None, list[Answer | None]]  # `(K, C)` instead of photos

# Defaults for the `handler:` section of the model config; see handler/model_config.yaml.
DEFAULT_SETTINGS: dict[str, int] = {
    "intra_op_threads": 1,
    "inter_op_threads": 1,
    "decode_threads": 2,
    "forward_threads": 1,
    "max_pixels": DEFAULT_MAX_PIXELS,
}


class SmokeHandler(BaseHandler):
    """Classifies each photo of a batch as smoking or not, answering bad requests one by one.

    The answer for a photo is `{"label", "probability", "probabilities", "model_version"}`: the
    positive class is chosen when its softmax probability reaches `spec.threshold`, and
    `probability` is that of the chosen label. A refused request is answered with
    `{"code", "type", "message"}` and the same code as its HTTP status.
    """

    def __init__(self) -> None:
        super().__init__()
        self.spec: PreprocessSpec | None = None
        self.transform: Any = None
        self.decode_pool: ThreadPoolExecutor | None = None
        self.forward: SplitForward | None = None
        self.max_pixels = DEFAULT_MAX_PIXELS

    def initialize(self, context: Context) -> None:
        """Loads the TorchScript model and the preprocessing spec, then warms the model up."""
        started = time.perf_counter()
        self.context = context
        self.manifest = context.manifest
        self.model_yaml_config = context.model_yaml_config or {}
        properties = context.system_properties
        model_dir = Path(properties["model_dir"])
        settings = read_handler_settings(self.model_yaml_config)

        self.device = select_device(properties.get("gpu_id"))
        self.map_location = self.device.type
        set_torch_threads(settings["intra_op_threads"], settings["inter_op_threads"])
        self.spec = PreprocessSpec.load(model_dir / "preprocess.json")
        self.mapping = load_index_to_name(model_dir / "index_to_name.json", self.spec)
        serialized_file = self.manifest["model"].get("serializedFile", "model.pt")
        self.model_pt_path = str(model_dir / serialized_file)
        self.model = load_torchscript(self.model_pt_path, self.device)
        self.transform = build_eval_transform(self.spec)
        self.max_pixels = settings["max_pixels"]
        self.decode_pool = ThreadPoolExecutor(
            max_workers=settings["decode_threads"], thread_name_prefix="smoke-decode"
        )
        self.forward = SplitForward(self.model, settings["forward_threads"])
        self._warm_up()
        prepare_worker_process()
        self.initialized = True
        logger.info(
            "Loaded %s version %s from %s on %s in %.2f s: input %dx%d, classes %s, "
            "threshold %.3f on %r; torch threads %d intra-op / %d inter-op, %d decode threads, "
            "batches split over %d forward threads",
            self.spec.model_name,
            self.spec.model_version,
            serialized_file,
            self.device,
            time.perf_counter() - started,
            self.spec.input_size,
            self.spec.input_size,
            list(self.spec.class_names),
            self.spec.threshold,
            self.spec.positive_class,
            torch.get_num_threads(),
            torch.get_num_interop_threads(),
            settings["decode_threads"],
            settings["forward_threads"],
        )

    def preprocess(self, data: Sequence[Mapping[str, Any]]) -> Prepared:
        """Decodes the photo of each request; refuses the requests that carry none.

        Args:
            data: one mapping per request, from parameter name to value, as TorchServe gives it.

        Returns:
            The accepted photos stacked as `(K, 3, S, S)` (None when no request was accepted),
            and one slot per request: the error answer of a refused request, None otherwise.
        """
        started = time.perf_counter()
        if len(data) > 1 and self.decode_pool is not None:
            prepared = list(self.decode_pool.map(self._prepare_request, data))
        else:
            prepared = [self._prepare_request(request) for request in data]

        answers: list[Answer | None] = []
        photos: list[torch.Tensor] = []
        rejected: dict[str, int] = {}
        for idx, outcome in enumerate(prepared):
            if isinstance(outcome, ImageRejectedError):
                answers.append(self._refuse(idx, outcome))
                rejected[outcome.reason] = rejected.get(outcome.reason, 0) + 1
            else:
                answers.append(None)
                photos.append(outcome)
        batch = torch.stack(photos) if photos else None  # (K, 3, S, S)

        for reason, count in rejected.items():
            self._count("smoke_rejected_requests_total", count, "reason", reason)
        self._observe("smoke_batch_size", len(data), "Count")
        self._observe("smoke_preprocess_seconds", time.perf_counter() - started, "Seconds")
        return batch, answers

    def inference(self, data: Prepared) -> Probabilities:
        """Runs the model on the accepted photos and returns their class probabilities `(K, C)`."""
        batch, answers = data
        if batch is None:
            return None, answers
        started = time.perf_counter()
        logits = self.forward(batch.to(self.device))  # (K, C)
        with torch.inference_mode():
            probabilities = torch.softmax(logits.double(), dim=1).cpu()
        self._observe("smoke_inference_seconds", time.perf_counter() - started, "Seconds")
        return probabilities, answers

    def postprocess(self, data: Probabilities) -> list[Answer]:
        """Builds one answer per request, in request order."""
        probabilities, answers = data
        rows = iter(probabilities.tolist() if probabilities is not None else [])
        results: list[Answer] = []
        predicted: dict[str, int] = {}
        for idx, answer in enumerate(answers):
            self.context.set_response_content_type(idx, "application/json")
            if answer is None:
                answer = self._answer(next(rows))
                predicted[answer["label"]] = predicted.get(answer["label"], 0) + 1
            results.append(answer)
        for label, count in predicted.items():
            self._count("smoke_predictions_total", count, "label", label)
        return results

    def explain_handle(
        self, data_preprocess: Prepared, raw_data: Sequence[Mapping[str, Any]]
    ) -> list[Answer]:
        """Answers /explanations requests with 501: a TorchScript model offers Captum no graph."""
        _, answers = data_preprocess
        results = []
        for idx, answer in enumerate(answers):
            if answer is None:
                self.context.set_response_status(501, "Not Implemented", idx)
                model = self.context.model_name
                answer = {
                    "code": 501,
                    "type": "not_implemented",
                    "message": f"{model} offers no explanations; send the photo to "
                    f"/predictions/{model} for its answer.",
                }
            results.append(answer)
        return results

    def close(self) -> None:
        """Stops the decode and forward threads.

        TorchServe never calls it (a worker's threads end with its process); for callers that
        drive the handler in their own process, such as the benchmark.
        """
        if self.decode_pool is not None:
            self.decode_pool.shutdown()
        if self.forward is not None:
            self.forward.close()

    def _prepare_request(self, request: Mapping[str, Any]) -> torch.Tensor | ImageRejectedError:
        """The normalised `(3, S, S)` photo of one request, or the reason it was refused."""
        try:
            data = read_photo_bytes(request)
            image = decode_image(data, max_pixels=self.max_pixels, draft_size=self.spec.draft_size)
            return self.transform(image)
        except ImageRejectedError as error:
            return error
        except (Image.DecompressionBombError, MemoryError) as error:
            return ImageRejectedError(
                "too_many_pixels", f"The photo is too large to decode ({error}).", 413
            )
        except Exception as error:  # Pillow raises many types on crafted files
            logger.warning("Refused a photo Pillow failed to read", exc_info=True)
            return ImageRejectedError(
                "not_an_image",
                f"The photo could not be read ({type(error).__name__}); send a complete JPEG, "
                "PNG, WebP, BMP or GIF file.",
            )

    def _refuse(self, idx: int, error: ImageRejectedError) -> Answer:
        self.context.set_response_status(error.status, http.HTTPStatus(error.status).phrase, idx)
        return {"code": error.status, "type": error.reason, "message": error.message}

    def _answer(self, probabilities: list[float]) -> Answer:
        spec = self.spec
        positive = spec.positive_index
        if probabilities[positive] >= spec.threshold:
            index = positive
        else:
            index = max(
                (i for i in range(len(probabilities)) if i != positive),
                key=probabilities.__getitem__,
            )
        return {
            "label": spec.class_names[index],
            "probability": probabilities[index],
            "probabilities": dict(zip(spec.class_names, probabilities, strict=True)),
            "model_version": spec.model_version,
        }

    def _warm_up(self) -> None:
        """Runs grey photos through the transform and the model, alone and as a batch cut into
        slices, so that the first requests find every thread and kernel ready."""
        side = self.spec.resize_size
        photo = self.transform(Image.new("RGB", (side, side), (128, 128, 128)))
        self.forward(photo.unsqueeze(0).to(self.device))
        self.forward(photo.expand(self.forward.parts, -1, -1, -1).to(self.device))

    def _count(self, name: str, value: int, dimension: str, dimension_value: str) -> None:
        self.context.metrics.add_metric(
            name,
            value,
            "Count",
            dimensions=[*self._model_dimensions(), Dimension(dimension, dimension_value)],
            metric_type=MetricTypes.COUNTER,
        )

    def _observe(self, name: str, value: float, unit: str) -> None:
        self.context.metrics.add_metric(
            name,
            value,
            unit,
            dimensions=self._model_dimensions(),
            metric_type=MetricTypes.HISTOGRAM,
        )

    def _model_dimensions(self) -> list[Dimension]:
        # Given explicitly, in the order metrics.yaml declares them, so that TorchServe adds none.
        return [Dimension("ModelName", self.context.model_name), Dimension("Level", METRIC_LEVEL)]


def read_handler_settings(model_yaml_config: Mapping[str, Any]) -> dict[str, int]:
    """The `handler:` section of the model config over `DEFAULT_SETTINGS`, validated.

    Raises:
        ValueError: a setting is unknown or not a positive integer.
    """
    given = dict(model_yaml_config.get("handler") or {})
    given.pop("profile", None)  # TorchServe's own switch for its timing decorator
    unknown = sorted(set(given) - set(DEFAULT_SETTINGS))
    if unknown:
        raise ValueError(
            f"unknown handler settings {unknown} in the model config; "
            f"known: {sorted(DEFAULT_SETTINGS)}"
        )
    settings = {**DEFAULT_SETTINGS, **given}
    for key, value in settings.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"handler setting {key}={value!r} must be a positive integer")
    return settings


def select_device(gpu_id: int | None) -> torch.device:
    """`cuda:<gpu_id>` when TorchServe assigned a GPU and CUDA works, else the CPU."""
    if gpu_id is not None and torch.cuda.is_available():
        return torch.device(f"cuda:{gpu_id}")
    return torch.device("cpu")


def set_torch_threads(intra_op_threads: int, inter_op_threads: int) -> None:
    """Sets this process's torch thread pools; the inter-op pool can be sized only once."""
    torch.set_num_threads(intra_op_threads)
    if torch.get_num_interop_threads() == inter_op_threads:
        return
    try:
        torch.set_num_interop_threads(inter_op_threads)
    except RuntimeError:
        logger.warning(
            "Keeping %d inter-op threads instead of %d: torch sizes that pool once per process",
            torch.get_num_interop_threads(),
            inter_op_threads,
        )


def load_index_to_name(path: Path, spec: PreprocessSpec) -> dict[str, str]:
    """Reads `index_to_name.json` and checks it names the classes of `preprocess.json`."""
    with open(path, encoding="utf-8") as f:
        mapping = {str(key): str(value) for key, value in json.load(f).items()}
    expected = {str(i): name for i, name in enumerate(spec.class_names)}
    if mapping != expected:
        raise ValueError(
            f"{path.name} says {mapping} but preprocess.json lists classes "
            f"{list(spec.class_names)}; re-export the model so that both come from one run"
        )
    return mapping


def read_photo_bytes(request: Mapping[str, Any]) -> bytes | bytearray:
    """The encoded photo one request carries, in any of the accepted forms.

    Raises:
        ImageRejectedError: no photo field, JSON without the image, or bad base64.
    """
    payload = select_payload(request)
    if isinstance(payload, (bytes, bytearray)):
        if payload.lstrip()[:1] in (b"{", b"["):  # JSON TorchServe left undecoded
            payload = parse_json_body(payload)
        else:
            return payload
    if isinstance(payload, str):
        return decode_base64(payload)
    if isinstance(payload, Mapping):
        image = payload.get(JSON_IMAGE_KEY)
        if isinstance(image, str):
            return decode_base64(image)
        raise ImageRejectedError(
            "missing_field",
            f'The JSON body has no string "{JSON_IMAGE_KEY}" field; send '
            f'{{"{JSON_IMAGE_KEY}": "<base64 of the photo>"}}.',
        )
    raise ImageRejectedError(
        "bad_json",
        f'The JSON body must be an object such as {{"{JSON_IMAGE_KEY}": "<base64>"}}, '
        f"not a {type(payload).__name__}.",
    )


def select_payload(request: Mapping[str, Any]) -> Any:
    """The request parameter that holds the photo: `data`, `body`, or the only file field."""
    for name in PAYLOAD_FIELDS:
        if name in request:
            return request[name]
    files = [value for value in request.values() if isinstance(value, (bytes, bytearray))]
    if len(files) == 1:
        return files[0]
    raise ImageRejectedError(
        "missing_field",
        f"Found no photo among the request fields {sorted(request)}; send the photo as the body "
        "(curl -T photo.jpg) or as the form field `data` (curl -F data=@photo.jpg).",
    )


def parse_json_body(body: bytes | bytearray) -> Any:
    """Parses a JSON body, refusing one that is not valid UTF-8 JSON."""
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ImageRejectedError(
            "bad_json", f"The body looks like JSON but does not parse ({error})."
        ) from error


def decode_base64(text: str) -> bytes:
    """Decodes base64 (standard or URL-safe, padding optional), after any `data:` URL prefix."""
    text = DATA_URL_PREFIX.sub("", text.strip(), count=1)
    compact = "".join(text.split()).replace("-", "+").replace("_", "/")
    compact += "=" * (-len(compact) % 4)
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ImageRejectedError(
            "bad_base64",
            f'The "{JSON_IMAGE_KEY}" field is not valid base64 ({error}); encode the photo file '
            "with base64, e.g. base64 -w0 photo.jpg.",
        ) from error
