"""Integration tests against a real TorchServe, started once for this module.

The server runs from a temporary working directory holding copies of the files TorchServe
reads (config.properties, metrics.yaml, log4j2.xml) and a model store with smoke.mar built from
`fixed_export`. Its model config batches (up to 4 requests, 200 ms delay) so that concurrent
requests meet in one batch. It
listens on free ports and keeps its pid file, sockets and unpacked archive in its own TMPDIR,
so it collides with no other TorchServe on the machine, and it is always stopped afterwards.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import os
import shutil
import signal
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
import torch
import yaml
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from ts.context import Context, RequestProcessor
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

from handler.smoke_handler import SmokeHandler
from scripts.archive import build_archive
from scripts.server import (
    SERVER_FILES,
    Server,
    ServerError,
    check_startable,
    local_server,
    predict,
    read_keys,
    read_server_pid,
    renew_key,
    report_status,
    start,
    stop,
)
from tests.conftest import REPO_ROOT, encode_photo, expected_smoking_probability, fixed_spec

RED = (200, 40, 40)
BLUE = (40, 40, 200)
BATCH_SIZE = 4
Metrics = dict[tuple[str, frozenset[tuple[str, str]]], float]


def noisy_jpeg(seed: int = 0) -> bytes:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (150, 200, 3), generator=generator, dtype=torch.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels.numpy()).save(buffer, format="JPEG")
    return buffer.getvalue()


def claimed_size_png(width: int, height: int) -> bytes:
    """A small PNG whose header claims `width x height` pixels, as a decompression bomb does."""
    data = bytearray(encode_photo(size=(16, 16)))
    struct.pack_into(">II", data, 16, width, height)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    return bytes(data)


# reason -> (raw body, HTTP status)
BAD_BODIES: dict[str, tuple[bytes, int]] = {
    "empty_body": (b"", 400),
    "not_an_image": (b"just some text, no photo", 400),
    "truncated": (noisy_jpeg()[:2000], 400),
    "unsupported_format": (encode_photo(RED, fmt="TIFF"), 415),
    "too_many_pixels": (claimed_size_png(20_000, 20_000), 413),
    "bad_dimensions": (encode_photo(RED, size=(10, 10)), 422),
}


def configured_workers() -> int:
    """The worker count that handler/model_config.yaml asks for, which the tests keep."""
    with open(REPO_ROOT / "handler" / "model_config.yaml", encoding="utf-8") as f:
        return int(yaml.safe_load(f)["minWorkers"])


@pytest.fixture(scope="module")
def server(fixed_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A running TorchServe serving the fixed-weight model; stopped even when tests fail."""
    root = tmp_path_factory.mktemp("torchserve")
    workdir, tmp_dir = root / "work", root / "tmp"
    workdir.mkdir()
    tmp_dir.mkdir()
    for name in SERVER_FILES:
        shutil.copy(REPO_ROOT / name, workdir / name)
    with open(REPO_ROOT / "handler" / "model_config.yaml", encoding="utf-8") as f:
        model_config = yaml.safe_load(f)
    model_config.update(batchSize=BATCH_SIZE, maxBatchDelay=200)
    config_path = root / "model_config.yaml"
    config_path.write_text(yaml.safe_dump(model_config))
    build_archive(fixed_export, workdir / "model_store", model_config=config_path)

    served = local_server(workdir, tmp_dir)
    try:
        start(served, timeout=240)
        yield served
    finally:
        pid = read_server_pid(served)
        try:
            stop(served)
        finally:
            if pid is not None and read_server_pid(served) == pid:
                os.killpg(os.getpgid(pid), signal.SIGKILL)


@pytest.fixture(scope="module")
def in_process(fixed_export: Path) -> Callable[[bytes], dict[str, Any]]:
    """Answers a photo with the handler in this process, for comparison with the server."""
    metrics = MetricsCacheYamlImpl(config_file_path=str(REPO_ROOT / "metrics.yaml"))
    metrics.initialize_cache()
    manifest = {"model": {"modelName": "smoke", "serializedFile": "model.pt"}}
    context = Context("smoke", str(fixed_export), manifest, 1, None, "0.12.0", True, metrics, {})
    handler = SmokeHandler()
    handler.initialize(context)

    def answer(data: bytes) -> dict[str, Any]:
        context.request_ids = metrics.request_ids = {0: "in-process"}
        context.request_processor = [RequestProcessor({})]
        return handler.handle([{"body": data}], context)[0]

    return answer


def auth(server: Server, api: str = "inference") -> dict[str, str]:
    return {"Authorization": f"Bearer {read_keys(server)[api]['key']}"}


def send(server: Server, data: bytes, form: str = "raw") -> requests.Response:
    """Sends a photo as a raw PUT body (curl -T), a multipart field, or base64 JSON."""
    url = server.url("inference", "/predictions/smoke")
    if form == "raw":
        return requests.put(url, data=data, headers=auth(server), timeout=30)
    if form == "typed":
        headers = {**auth(server), "Content-Type": "image/jpeg"}
        return requests.post(url, data=data, headers=headers, timeout=30)
    if form == "multipart":
        files = {"data": ("photo", data, "application/octet-stream")}
        return requests.post(url, files=files, headers=auth(server), timeout=30)
    image = "data:image/png;base64," + base64.b64encode(data).decode()
    return requests.post(url, json={"image": image}, headers=auth(server), timeout=30)


def read_metrics(server: Server) -> Metrics:
    """The /metrics samples by name and labels (without the host name)."""
    text = requests.get(server.url("metrics", "/metrics"), timeout=10).text
    samples: Metrics = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = {k: v for k, v in sample.labels.items() if k.lower() != "hostname"}
            samples[(sample.name, frozenset(labels.items()))] = sample.value
    return samples


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.get((name, frozenset(labels.items())), 0.0)


def wait_for_metrics(
    server: Server, check: Callable[[Metrics], bool], timeout: float = 10.0
) -> Metrics:
    """Reads /metrics until `check` holds: the worker's metric lines reach it asynchronously."""
    deadline = time.monotonic() + timeout
    while True:
        metrics = read_metrics(server)
        if check(metrics) or time.monotonic() > deadline:
            return metrics
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.parametrize("photo", ["red", "blue", "noisy"])
def test_server_answers_like_the_handler_in_process(
    server: Server, in_process: Callable[[bytes], dict[str, Any]], photo: str
) -> None:
    data = {
        "red": encode_photo(RED),
        "blue": encode_photo(BLUE),
        "noisy": noisy_jpeg(seed=3),
    }[photo]
    response = send(server, data)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    answer, expected = response.json(), in_process(data)
    assert answer["label"] == expected["label"]
    assert answer["model_version"] == expected["model_version"] == "fixed-colour-1"
    assert answer["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-5)
    if photo != "noisy":
        smoking = expected_smoking_probability(RED if photo == "red" else BLUE, fixed_spec())
        assert answer["probabilities"]["smoking"] == pytest.approx(smoking, abs=1e-6)
        assert answer["label"] == ("smoking" if photo == "red" else "not_smoking")


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.parametrize("form", ["raw", "typed", "multipart", "json"])
def test_every_input_form_is_answered(server: Server, form: str) -> None:
    response = send(server, encode_photo(RED), form)
    assert response.status_code == 200, response.text
    smoking = expected_smoking_probability(RED, fixed_spec())
    assert response.json()["label"] == "smoking"
    assert response.json()["probability"] == pytest.approx(smoking, abs=1e-6)


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.parametrize("reason", sorted(BAD_BODIES))
def test_bad_photo_gets_its_4xx_and_the_next_request_succeeds(server: Server, reason: str) -> None:
    body, status = BAD_BODIES[reason]
    response = send(server, body)
    assert response.status_code == status
    assert response.json()["code"] == status
    assert response.json()["type"] == reason
    assert response.json()["message"]
    assert send(server, encode_photo(BLUE)).json()["label"] == "not_smoking"


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.parametrize(
    ("payload", "reason"),
    [({"image": "%%% not base64 %%%"}, "bad_base64"), ({"picture": "aGk="}, "missing_field")],
)
def test_bad_json_gets_400_with_its_reason(
    server: Server, payload: dict[str, str], reason: str
) -> None:
    url = server.url("inference", "/predictions/smoke")
    response = requests.post(url, json=payload, headers=auth(server), timeout=30)
    assert response.status_code == 400
    assert response.json()["type"] == reason


@pytest.mark.slow
@pytest.mark.server
def test_explanations_are_refused_with_501(server: Server) -> None:
    url = server.url("inference", "/explanations/smoke")
    response = requests.post(url, data=encode_photo(RED), headers=auth(server), timeout=30)
    assert response.status_code == 501
    assert response.json()["type"] == "not_implemented"


@pytest.mark.slow
@pytest.mark.server
def test_concurrent_mixed_requests_are_batched_and_each_answered(server: Server) -> None:
    bodies = [
        (encode_photo(RED), 200, "smoking"),
        (b"not a photo", 400, "not_an_image"),
        (encode_photo(BLUE), 200, "not_smoking"),
        (b"", 400, "empty_body"),
        (encode_photo(BLUE), 200, "not_smoking"),
        (encode_photo(RED, size=(10, 10)), 422, "bad_dimensions"),
        (encode_photo(RED), 200, "smoking"),
        (encode_photo(RED), 200, "smoking"),
    ]
    before = read_metrics(server)
    with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        responses = list(pool.map(lambda item: send(server, item[0]), bodies))

    for response, (_, status, outcome) in zip(responses, bodies, strict=True):
        assert response.status_code == status
        assert response.json().get("label" if status == 200 else "type") == outcome
    count = "smoke_batch_size_count"
    after = wait_for_metrics(
        server,
        lambda m: (
            value(m, "smoke_batch_size_sum", ModelName="smoke", Level="Model")
            - value(before, "smoke_batch_size_sum", ModelName="smoke", Level="Model")
            >= len(bodies)
        ),
    )
    batches = value(after, count, ModelName="smoke", Level="Model") - value(
        before, count, ModelName="smoke", Level="Model"
    )
    assert 2 <= batches < len(bodies), "concurrent requests should share batches of up to 4"


@pytest.mark.slow
@pytest.mark.server
def test_metrics_count_exactly_the_requests_sent(server: Server) -> None:
    sent = {"smoking": 3, "not_smoking": 2}
    rejected = {"empty_body": 2, "not_an_image": 1}
    model = {"ModelName": "smoke", "Level": "Model"}
    version = {"model_name": "smoke", "model_version": "default"}
    total = sum(sent.values()) + sum(rejected.values())

    before = read_metrics(server)
    for label, count in sent.items():
        for _ in range(count):
            assert send(server, encode_photo(RED if label == "smoking" else BLUE)).ok
    for reason, count in rejected.items():
        for _ in range(count):
            assert send(server, BAD_BODIES[reason][0]).status_code == 400

    def delta(metrics: Metrics, name: str, **labels: str) -> float:
        return value(metrics, name, **labels) - value(before, name, **labels)

    after = wait_for_metrics(
        server,
        lambda m: (
            delta(m, "smoke_batch_size_count", **model) >= total
            and delta(m, "Requests4XX_total", Level="Host") >= sum(rejected.values())
        ),
    )
    for label, count in sent.items():
        assert delta(after, "smoke_predictions_total", **model, label=label) == count, label
    for reason, count in rejected.items():
        assert delta(after, "smoke_rejected_requests_total", **model, reason=reason) == count
    # Sent one at a time, every request is a batch of its own.
    assert delta(after, "smoke_batch_size_count", **model) == total
    assert delta(after, "smoke_batch_size_sum", **model) == total
    assert delta(after, "smoke_preprocess_seconds_count", **model) == total
    assert delta(after, "smoke_inference_seconds_count", **model) == sum(sent.values())
    assert delta(after, "smoke_inference_seconds_bucket", **model, le="+Inf") == sum(sent.values())
    assert delta(after, "smoke_preprocess_seconds_sum", **model) > 0
    assert delta(after, "ts_inference_requests_total", **version) == total
    # Requests2XX counts every API, so also the /metrics reads of this test.
    assert delta(after, "Requests2XX_total", Level="Host") >= sum(sent.values())
    assert delta(after, "Requests4XX_total", Level="Host") == sum(rejected.values())
    assert delta(after, "Requests5XX_total", Level="Host") == 0


@pytest.mark.slow
@pytest.mark.server
def test_management_api_describes_the_model_only_with_its_key(server: Server) -> None:
    url = server.url("management", "/models/smoke")
    response = requests.get(url, headers=auth(server, "management"), timeout=10)
    assert response.status_code == 200
    (description,) = response.json()
    assert description["modelVersion"] == "fixed-colour-1"
    assert description["batchSize"] == BATCH_SIZE
    assert [worker["status"] for worker in description["workers"]] == ["READY"] * (
        configured_workers()
    )

    # TorchServe 0.12 refuses a missing or wrong key with 400 InvalidKeyException.
    for headers in ({}, {"Authorization": "Bearer wrong"}, auth(server, "inference")):
        refused = requests.get(url, headers=headers, timeout=10)
        assert refused.status_code == 400
        assert refused.json()["type"] == "InvalidKeyException"


@pytest.mark.slow
@pytest.mark.server
def test_inference_and_ping_need_the_inference_key(server: Server) -> None:
    ping = server.url("inference", "/ping")
    assert requests.get(ping, timeout=10).status_code == 400
    assert requests.get(ping, headers=auth(server), timeout=10).json() == {"status": "Healthy"}
    url = server.url("inference", "/predictions/smoke")
    refused = requests.put(url, data=encode_photo(RED), timeout=10)
    assert refused.status_code == 400
    assert refused.json()["type"] == "InvalidKeyException"


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.parametrize(
    "url", ["https://example.com/smoke.mar", "http://127.0.0.1:9/smoke.mar", "smoke.mar"]
)
def test_registering_a_model_through_the_api_is_refused(server: Server, url: str) -> None:
    response = requests.post(
        server.url("management", "/models"),
        params={"url": url},
        headers=auth(server, "management"),
        timeout=10,
    )
    assert response.status_code == 405
    models = requests.get(
        server.url("management", "/models"), headers=auth(server, "management"), timeout=10
    )
    assert [m["modelName"] for m in models.json()["models"]] == ["smoke"]


@pytest.mark.slow
@pytest.mark.server
def test_expired_key_is_renewed_with_the_api_key(server: Server) -> None:
    old = auth(server)
    renew_key(server, "inference")
    ping = server.url("inference", "/ping")
    assert requests.get(ping, headers=old, timeout=10).status_code == 400
    assert requests.get(ping, headers=auth(server), timeout=10).status_code == 200

    stale = server.workdir / "key_file.json"
    keys = stale.read_text().replace(read_keys(server)["inference"]["key"], "expired0")
    stale.write_text(keys)
    status, answer = predict(encode_photo(RED), server)  # renews the key by itself
    assert status == 200 and answer["label"] == "smoking"


@pytest.mark.slow
@pytest.mark.server
def test_status_reports_a_healthy_ready_worker(server: Server) -> None:
    healthy, answer = report_status(server)
    assert healthy
    assert [worker["status"] for worker in answer["workers"]] == ["READY"] * configured_workers()


@pytest.mark.slow
@pytest.mark.server
def test_a_server_sharing_the_tmpdir_is_neither_doubled_nor_stopped(
    server: Server, tmp_path: Path
) -> None:
    with pytest.raises(ServerError, match="already runs"):
        check_startable(server)
    shutil.copy(REPO_ROOT / "config.properties", tmp_path / "config.properties")
    other = dataclasses.replace(server, workdir=tmp_path.resolve())
    assert stop(other) is False
    assert read_server_pid(server) is not None
    assert report_status(server)[0]


def test_start_without_archive_says_make_archive(tmp_path: Path) -> None:
    shutil.copy(REPO_ROOT / "config.properties", tmp_path / "config.properties")
    server = local_server(tmp_path, tmp_path)
    with pytest.raises(ServerError, match="make archive"):
        start(server)


def test_stop_without_a_server_reports_nothing_to_stop(tmp_path: Path) -> None:
    shutil.copy(REPO_ROOT / "config.properties", tmp_path / "config.properties")
    assert stop(local_server(tmp_path, tmp_path)) is False


def test_ports_come_from_the_config_and_torchserve_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copy(REPO_ROOT / "config.properties", tmp_path / "config.properties")
    monkeypatch.delenv("TS_INFERENCE_ADDRESS", raising=False)
    assert Server.load(tmp_path).url("inference", "/ping") == "http://127.0.0.1:8080/ping"
    monkeypatch.setenv("TS_INFERENCE_ADDRESS", "http://0.0.0.0:18080")
    loaded = Server.load(tmp_path)
    assert loaded.url("inference", "/ping") == "http://127.0.0.1:18080/ping"
    assert dataclasses.replace(loaded, model_name="x").archive == tmp_path / "model_store/x.mar"
