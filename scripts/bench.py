"""Benchmarks the model, our handler, our TorchServe and TorchServe's stock handler, on one machine.

    python -m scripts.bench [--run runs/latest | --export DIR] [--quick] [--out reports/bench]
                            [--photos DIR]

One command, one model, one set of photos, one case after another on the same machine:

1. model: the TorchScript forward pass alone, batches of 1 to 16, with the handler's threads
   (a batch cut into slices on its forward threads, as the handler does).
2. in_process: `SmokeHandler.handle` in this process (decode, preprocess, forward, answer), one
   photo at a time and in batches of 1 to 16 photos; measured again right after case 3, since
   the same code on the same cores runs up to a third faster or slower from one minute to the
   next here, and the ratios to case 3 use the mean of the two. When the model config asks for
   several workers, as many handler processes also run at once, at the best batch size, before
   and after case 3: that, not one process, is the throughput the server is compared with.
3. served: TorchServe with our handler and model config, closed loop at concurrency 1 to 32.
4. stock: TorchServe's stock image classifier (scripts/bench_stock_handler.py) on the same
   TorchScript file, without our model config, at the same concurrencies.
5. half_peak: our server under a constant arrival rate of half the peak throughput of case 3.

It writes results.json, report.md and latency_vs_concurrency.png into
reports/bench/<UTC time>/, and reports/bench/latest points at the newest. `--quick` runs every
case for a few seconds, at concurrency 1 and 4 only.

The load generator runs in this process: N threads, each with its own keep-alive http.client
connection, sending a pre-read photo as the raw body and waiting for the answer (closed loop);
the half-peak run sends on a fixed schedule instead and times each request from its scheduled
start, so that a late generator counts against the latency (open loop). The generator shares
the cores with the server, so its CPU time is measured and reported, as are the CPU times of
the server's processes and of everything else on the machine during each level. It tunes
nothing: on a shared machine the figures move from run to run, and the report says how busy
the machine was.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.client
import itertools
import json
import logging
import math
import multiprocessing
import os
import platform
import queue
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import psutil
import requests
import torch
import yaml
from prometheus_client.parser import text_string_to_metric_families
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm
from ts.context import Context, RequestProcessor
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

from handler.preprocessing import PreprocessSpec
from handler.smoke_handler import SmokeHandler, read_handler_settings, set_torch_threads
from handler.torchscript import SplitForward, load_torchscript
from handler.worker_process import keep_freed_memory
from loadtest import load_photos, new_report_dir, point_latest
from scripts.archive import MODEL_CONFIG, ArchiveError, build_archive, find_export
from scripts.server import (
    Server,
    ServerError,
    describe,
    find_jvm,
    read_keys,
    read_server_pid,
    serve_archive,
)

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
STOCK_HANDLER = REPO_ROOT / "scripts" / "bench_stock_handler.py"
CASES = ("model", "in_process", "served", "stock", "half_peak")
BATCH_SIZES = (1, 2, 4, 8, 16)
PHOTOS = 64
WARMUP_CONCURRENCY = 4
JIT_THREAD_PREFIXES = ("C1 Compiler", "C2 Compiler")
# name -> (comparison, target); see `judge`.
TARGETS: dict[str, tuple[str, float]] = {
    "served_vs_in_process": (">=", 0.8),
    "served_vs_stock": (">=", 2.0),
    "c1_p50_overhead_ms": ("<=", 5.0),
    "p99_over_p50_at_half_peak": ("<=", 2.0),
}
Check = Callable[[int, bytes], bool]  # (HTTP status, body) -> whether the answer is right


class BenchError(RuntimeError):
    """The benchmark cannot run or a case went wrong; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """What to measure and for how long, resolved once from the command line."""

    export_dir: Path
    out_dir: Path
    photo_root: Path | None
    quick: bool
    concurrencies: tuple[int, ...]
    model_seconds: float  # per batch size, forward pass alone
    handler_seconds: float  # per batch size, in process
    single_calls: int  # single-photo calls in process
    level_seconds: float  # per concurrency level, after the warm-up
    warmup_seconds: float  # unmeasured traffic before each level
    server_warmup_seconds: float  # unmeasured traffic once per server, before its first level
    half_peak_seconds: float


@dataclasses.dataclass
class Snapshot:
    """CPU times and server metrics at one instant of a served level."""

    wall: float
    generator_cpu: float
    server_cpu: dict[str, float]  # "jvm" and "workers", CPU seconds
    machine_busy: float  # busy CPU seconds of the whole machine
    metrics: dict[str, float]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--run", type=Path, default=Path("runs/latest"), help="run folder")
    source.add_argument("--export", type=Path, help="export folder (instead of --run)")
    parser.add_argument("--quick", action="store_true", help="a few seconds per case")
    parser.add_argument("--out", type=Path, default=Path("reports/bench"), help="reports")
    parser.add_argument("--photos", type=Path, help="photo folder; default: the shared data set")
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace) -> BenchConfig:
    """The durations of `--quick` or of a full run, and the checked export folder."""
    try:
        export_dir = args.export or find_export(args.run)
    except ArchiveError as error:
        raise BenchError(str(error)) from error
    missing = [n for n in ("model.pt", "preprocess.json") if not (export_dir / n).is_file()]
    if missing:
        raise BenchError(f"{export_dir} lacks {missing}; name an export folder of a trained run")
    common = {"export_dir": export_dir.resolve(), "out_dir": args.out, "photo_root": args.photos}
    if args.quick:
        return BenchConfig(
            **common,
            quick=True,
            concurrencies=(1, 4),
            model_seconds=0.5,
            handler_seconds=0.5,
            single_calls=40,
            level_seconds=2.5,
            warmup_seconds=0.5,
            server_warmup_seconds=2.0,
            half_peak_seconds=3.0,
        )
    return BenchConfig(
        **common,
        quick=False,
        concurrencies=(1, 2, 4, 8, 16, 32),
        model_seconds=2.0,
        handler_seconds=3.0,
        single_calls=200,
        level_seconds=10.0,
        warmup_seconds=1.5,
        server_warmup_seconds=15.0,
        half_peak_seconds=40.0,
    )


# ---------------------------------------------------------------- settings


def describe_settings(
    config: BenchConfig, photo_source: str, photos: list[bytes], torch_defaults: dict[str, int]
) -> dict:
    """The model, threads, server settings, machine and versions the figures belong to."""
    spec = PreprocessSpec.load(config.export_dir / "preprocess.json")
    model_config = read_model_config()
    return {
        "model": {
            "export_dir": str(config.export_dir),
            "name": spec.model_name,
            "version": spec.model_version,
            "input_size": spec.input_size,
            "resize_size": spec.resize_size,
            "size_mb": round((config.export_dir / "model.pt").stat().st_size / 1e6, 2),
        },
        "threads": read_handler_settings(model_config),
        "torch_default_threads": torch_defaults,
        "model_config": {
            key: model_config.get(key)
            for key in ("batchSize", "maxBatchDelay", "minWorkers", "maxWorkers")
        },
        "photos": {
            "source": photo_source,
            "count": len(photos),
            "mean_kb": round(statistics.fmean(len(p) for p in photos) / 1e3, 1),
        },
        "machine": describe_machine(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchserve": read_package_version("torchserve"),
        },
        "git_commit": read_git_commit(),
        "load_generator": (
            "in the benchmark's process: closed loop of N threads, each with one keep-alive "
            "http.client connection sending pre-read photos as raw PUT bodies; half peak: "
            "open loop on a fixed schedule, 32 such threads, latency from the scheduled start"
        ),
        "quick": config.quick,
        "durations_s": {
            "model_per_batch": config.model_seconds,
            "in_process_per_batch": config.handler_seconds,
            "served_per_level": config.level_seconds,
            "warmup_per_level": config.warmup_seconds,
            "warmup_per_server": config.server_warmup_seconds,
            "half_peak": config.half_peak_seconds,
        },
    }


def describe_machine() -> dict:
    """CPU count and model, memory, and the load average when the benchmark started."""
    model_name = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model_name = line.split(":", 1)[1].strip()
                break
    return {
        "cpu_count": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "cpu_model": model_name,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def read_package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def read_git_commit() -> str:
    """The checkout's commit, with `-dirty` when files differ from it."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit


# ---------------------------------------------------------------- timing helpers


def time_calls(call: Callable[[], Any], seconds: float, min_calls: int = 5) -> list[float]:
    """Calls `call` until `seconds` have passed (at least `min_calls` times); seconds per call."""
    durations: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(durations) < min_calls or time.perf_counter() < deadline:
        started = time.perf_counter()
        call()
        durations.append(time.perf_counter() - started)
    return durations


def summarize_ms(durations: Sequence[float], percentiles: Sequence[int] = (50, 90, 99)) -> dict:
    """Percentiles of durations given in seconds, in ms (linear interpolation)."""
    if not durations:
        return {f"p{p}_ms": None for p in percentiles}
    values = np.percentile(np.asarray(durations) * 1e3, percentiles)
    return {f"p{p}_ms": round(float(v), 3) for p, v in zip(percentiles, values, strict=True)}


# ---------------------------------------------------------------- case 1: the model alone


def bench_model(config: BenchConfig, spec: PreprocessSpec) -> dict:
    """The forward pass alone, per batch size: latency per batch and images per second.

    It runs as the handler runs it: with the handler's torch threads, and a batch cut into as
    many slices as the model config has forward threads.
    """
    model = load_torchscript(config.export_dir / "model.pt")
    forward_threads = read_handler_settings(read_model_config())["forward_threads"]
    forward = SplitForward(model, forward_threads)
    rows = []
    for batch_size in BATCH_SIZES:
        batch = torch.randn(batch_size, 3, spec.input_size, spec.input_size)  # (B, 3, S, S)
        for _ in range(3):
            forward(batch)
        durations = time_calls(lambda b=batch: forward(b), config.model_seconds)
        rows.append(
            {
                "batch_size": batch_size,
                "calls": len(durations),
                **summarize_ms(durations, (50, 90)),
                "images_per_s": round(batch_size * len(durations) / sum(durations), 1),
            }
        )
        logger.debug("model batch %d: %s", batch_size, rows[-1])
    forward.close()
    return {
        "torch_threads": {
            "intra_op": torch.get_num_threads(),
            "inter_op": torch.get_num_interop_threads(),
            "forward": forward_threads,
        },
        "batches": rows,
        "best_images_per_s": max(row["images_per_s"] for row in rows),
    }


# ---------------------------------------------------------------- case 2: the handler in process


def start_in_process_handler(export_dir: Path) -> tuple[SmokeHandler, Context]:
    """A SmokeHandler initialised as a TorchServe worker would, with our model config."""
    metrics = MetricsCacheYamlImpl(config_file_path=str(REPO_ROOT / "metrics.yaml"))
    metrics.initialize_cache()
    metrics.model_name = "smoke"
    model_config = read_model_config()
    manifest = {"model": {"modelName": "smoke", "serializedFile": "model.pt"}}
    context = Context(
        "smoke", str(export_dir), manifest, 16, None, "0.12.0", True, metrics, model_config
    )
    handler = SmokeHandler()
    handler.initialize(context)
    return handler, context


def handle_batch(handler: SmokeHandler, context: Context, photos: Sequence[bytes]) -> list[dict]:
    """One `handle` call on raw-body requests, with the per-request state TorchServe sets."""
    context.request_ids = context.metrics.request_ids = {
        idx: f"bench-{idx}" for idx in range(len(photos))
    }
    context.request_processor = [RequestProcessor({}) for _ in photos]
    return handler.handle([{"body": photo} for photo in photos], context)


def bench_in_process(config: BenchConfig, photos: list[bytes]) -> dict:
    """Single-photo latency and throughput per batch size of the handler in this process."""
    # TorchServe's metric objects log every value at INFO; the worker sends those lines to the
    # frontend, here they would only flood the log.
    logging.getLogger("ts.metrics").setLevel(logging.WARNING)
    handler, context = start_in_process_handler(config.export_dir)
    check_in_process_answers(handle_batch(handler, context, photos[:4]))

    turn = itertools.count()
    single = time_calls(
        lambda: handle_batch(handler, context, [photos[next(turn) % len(photos)]]),
        seconds=0.0,
        min_calls=config.single_calls,
    )
    rows = []
    for batch_size in BATCH_SIZES:
        batch = [photos[i % len(photos)] for i in range(batch_size)]
        handle_batch(handler, context, batch)
        durations = time_calls(
            lambda b=batch: handle_batch(handler, context, b), config.handler_seconds
        )
        rows.append(
            {
                "batch_size": batch_size,
                "calls": len(durations),
                **summarize_ms(durations, (50, 90)),
                "images_per_s": round(batch_size * len(durations) / sum(durations), 1),
            }
        )
    handler.close()
    return {
        "single": {"calls": len(single), **summarize_ms(single)},
        "single_images_per_s": round(len(single) / sum(single), 1),
        "batches": rows,
        "best_images_per_s": max(row["images_per_s"] for row in rows),
    }


def bench_in_process_parallel(
    config: BenchConfig, photos: list[bytes], processes: int, batch_size: int
) -> float:
    """Images per second of `processes` handler processes running batches at the same time.

    It is what the machine can do without TorchServe when the server runs that many workers:
    each process is a fresh interpreter (spawned, so that no thread of this one is copied), sets
    the handler's threads, warms up, and then all of them handle batches for the same seconds.
    """
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(processes), context.Queue()
    args = (config.export_dir, photos, batch_size, config.handler_seconds * 2, start, results)
    children = [context.Process(target=_handle_batches_after, args=args) for _ in range(processes)]
    for child in children:
        child.start()
    try:
        counts = [results.get(timeout=180) for _ in children]
    except queue.Empty as error:
        raise BenchError(
            "a handler process of the parallel in-process case did not answer"
        ) from error
    finally:
        for child in children:
            child.join(timeout=10)
            if child.is_alive():
                child.kill()
    return round(sum(images / seconds for images, seconds in counts), 1)


def _handle_batches_after(
    export_dir: Path,
    photos: list[bytes],
    batch_size: int,
    seconds: float,
    start: Any,
    results: Any,
) -> None:
    """One process of `bench_in_process_parallel`; puts (images handled, seconds taken)."""
    logging.getLogger("ts.metrics").setLevel(logging.WARNING)
    set_handler_threads()
    handler, context = start_in_process_handler(export_dir)
    batch = [photos[i % len(photos)] for i in range(batch_size)]
    time_calls(lambda: handle_batch(handler, context, batch), seconds=0.5)
    start.wait(timeout=120)
    durations = time_calls(lambda: handle_batch(handler, context, batch), seconds)
    handler.close()
    results.put((batch_size * len(durations), sum(durations)))


def add_parallel(
    in_process: dict, processes: int, batch_size: int, first: float, repeat: float
) -> None:
    """Records the several-process throughput and makes it the figure the ratios use."""
    in_process["parallel"] = {
        "processes": processes,
        "batch_size": batch_size,
        "images_per_s": first,
        "repeat_images_per_s": repeat,
        "mean_images_per_s": round((first + repeat) / 2, 1),
    }


def in_process_throughput(in_process: dict) -> float:
    """The in-process throughput the served one is compared with: as many processes as workers."""
    parallel = in_process.get("parallel")
    return parallel["mean_images_per_s"] if parallel else in_process["mean_best_images_per_s"]


def add_repeat(first: dict, repeat: dict) -> None:
    """Records a second in-process measurement beside the first, and the mean the ratios use."""
    first["repeat"] = {
        "single_p50_ms": repeat["single"]["p50_ms"],
        "best_images_per_s": repeat["best_images_per_s"],
    }
    first["mean_single_p50_ms"] = round(
        (first["single"]["p50_ms"] + repeat["single"]["p50_ms"]) / 2, 3
    )
    first["mean_best_images_per_s"] = round(
        (first["best_images_per_s"] + repeat["best_images_per_s"]) / 2, 1
    )


def check_in_process_answers(answers: list[dict]) -> None:
    bad = [a for a in answers if "label" not in a]
    if bad:
        raise BenchError(f"the handler refused the benchmark photos in process: {bad[0]}")


# ---------------------------------------------------------------- serving


def build_stock_archive(export_dir: Path, out_dir: Path, name: str = "stock") -> Path:
    """Packages the export with the stock handler and no model config into `out_dir/<name>.mar`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    extra = [str(export_dir / n) for n in ("index_to_name.json", "preprocess.json")]
    command = [
        sys.executable,
        "-m",
        "model_archiver.model_packaging",
        "--model-name",
        name,
        "--version",
        "1.0",
        "--serialized-file",
        str(export_dir / "model.pt"),
        "--handler",
        str(STOCK_HANDLER),
        "--extra-files",
        ",".join(extra),
        "--export-path",
        str(out_dir),
        "--force",
    ]
    with tempfile.TemporaryDirectory(prefix="smoke-stock-") as scratch:
        result = subprocess.run(
            command, env={**os.environ, "TMPDIR": scratch}, capture_output=True, text=True
        )
    if result.returncode != 0:
        raise BenchError(f"torch-model-archiver failed for the stock handler:\n{result.stderr}")
    return out_dir / f"{name}.mar"


def stock_config_properties(model_name: str) -> str:
    """Our config.properties without the worker count and the logging configuration, so that
    TorchServe's defaults apply to both."""
    lines = []
    for line in (REPO_ROOT / "config.properties").read_text(encoding="utf-8").splitlines():
        key = line.split("=", 1)[0].strip()
        if key in ("default_workers_per_model", "vmargs"):
            continue
        lines.append(f"load_models={model_name}.mar" if key == "load_models" else line)
    return "\n".join(lines) + "\n"


def wait_for_all_workers(server: Server, timeout: float = 180.0) -> None:
    """Waits until every worker is READY: `start` returns as soon as the first one is."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = describe(server)[0].get("workers", [])
        if workers and all(worker.get("status") == "READY" for worker in workers):
            return
        time.sleep(0.5)
    raise BenchError(f"not every worker of {server.model_name} was READY after {timeout:.0f} s")


def describe_served(server: Server) -> dict:
    """Workers, batch size and delay as the running server reports them."""
    model = describe(server)[0]
    return {
        "workers": len(model.get("workers", [])),
        "batch_size": model.get("batchSize"),
        "max_batch_delay_ms": model.get("maxBatchDelay"),
        "min_workers": model.get("minWorkers"),
        "max_workers": model.get("maxWorkers"),
        "jvm_options": read_jvm_options(server),
    }


def read_jvm_options(server: Server) -> list[str]:
    """The -X options the frontend JVM runs with (config.properties' vmargs); [] for defaults."""
    jvm = find_jvm(server)
    if jvm is None:
        return []
    with contextlib.suppress(psutil.Error):
        return [arg for arg in jvm.cmdline() if arg.startswith("-X")]
    return []


# ---------------------------------------------------------------- load generators


class Client:
    """One keep-alive HTTP connection that sends photos as raw PUT bodies."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        address = urlsplit(url)
        self.host, self.port, self.path = address.hostname, address.port, address.path
        self.headers = headers
        self.connection: http.client.HTTPConnection | None = None

    def send(self, body: bytes) -> tuple[int, bytes]:
        """Sends one photo; status 0 means the connection failed (and is reopened next time)."""
        try:
            if self.connection is None:
                self.connection = http.client.HTTPConnection(self.host, self.port, timeout=60)
            self.connection.request("PUT", self.path, body, self.headers)
            response = self.connection.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException):
            self.close()
            return 0, b""

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


@dataclasses.dataclass
class Tally:
    """Outcomes of the requests answered inside the measured window."""

    latencies: list[float]
    errors: int = 0


def run_closed_loop(
    server: Server,
    photos: list[bytes],
    concurrency: int,
    check: Check,
    config: BenchConfig,
) -> dict:
    """`concurrency` clients send back to back; measures the window after the warm-up.

    Throughput and latencies are those of the requests answered inside the window.
    """
    url, headers = predictions_target(server)
    window: dict[str, float] = {"start": math.inf, "end": math.inf}
    tallies = [Tally([]) for _ in range(concurrency)]
    halt = threading.Event()

    def client_loop(idx: int) -> None:
        client, tally, turn = Client(url, headers), tallies[idx], idx
        while not halt.is_set():
            started = time.perf_counter()
            status, body = client.send(photos[turn % len(photos)])
            finished = time.perf_counter()
            turn += concurrency
            if window["start"] <= finished <= window["end"]:
                if check(status, body):
                    tally.latencies.append(finished - started)
                else:
                    tally.errors += 1
        client.close()

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    time.sleep(config.warmup_seconds)
    before = take_snapshot(server)
    window["start"] = before.wall
    time.sleep(config.level_seconds)
    window["end"] = time.perf_counter()
    after = take_snapshot(server)
    halt.set()
    for thread in threads:
        thread.join()
    latencies = [x for tally in tallies for x in tally.latencies]
    errors = sum(tally.errors for tally in tallies)
    final = wait_for_metrics(server, after)
    return {
        "concurrency": concurrency,
        **summarize_level(latencies, errors, window["end"] - window["start"]),
        **summarize_resources(before, after),
        "server_metrics": summarize_metrics(before.metrics, final),
    }


def run_open_loop(
    server: Server, photos: list[bytes], rate: float, check: Check, config: BenchConfig
) -> dict:
    """Sends at a constant `rate` per second; each latency counts from the scheduled start."""
    url, headers = predictions_target(server)
    warmup_sends = int(rate * config.warmup_seconds)
    total_sends = warmup_sends + max(1, int(rate * config.half_peak_seconds))
    schedule: queue.Queue[tuple[int, float] | None] = queue.Queue()
    tally, lock = Tally([]), threading.Lock()
    pool_size = 32

    def worker() -> None:
        client = Client(url, headers)
        while (item := schedule.get()) is not None:
            idx, due = item
            status, body = client.send(photos[idx % len(photos)])
            latency = time.perf_counter() - due
            if idx >= warmup_sends:
                with lock:
                    if check(status, body):
                        tally.latencies.append(latency)
                    else:
                        tally.errors += 1
        client.close()

    threads = [threading.Thread(target=worker) for _ in range(pool_size)]
    for thread in threads:
        thread.start()
    origin = time.perf_counter()
    before: Snapshot | None = None
    for idx in range(total_sends):
        due = origin + idx / rate
        if idx == warmup_sends:
            before = take_snapshot(server, with_metrics=False)
        time.sleep(max(0.0, due - time.perf_counter()))
        schedule.put((idx, due))
    for _ in threads:
        schedule.put(None)
    for thread in threads:
        thread.join()
    after = take_snapshot(server, with_metrics=False)
    measured = total_sends - warmup_sends
    level = summarize_level(tally.latencies, tally.errors, measured / rate)
    return {
        "target_rate_per_s": round(rate, 2),
        "sent": measured,
        **level,
        **(summarize_resources(before, after) if before is not None else {}),
    }


def predictions_target(server: Server) -> tuple[str, dict[str, str]]:
    """The predictions URL and the headers every request carries."""
    key = read_keys(server)["inference"]["key"]
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "image/jpeg"}
    return server.url("inference", f"/predictions/{server.model_name}"), headers


def summarize_level(latencies: list[float], errors: int, seconds: float) -> dict:
    """Throughput and latency percentiles of one level."""
    return {
        "requests": len(latencies),
        "errors": errors,
        "seconds": round(seconds, 2),
        "throughput_per_s": round(len(latencies) / seconds, 2) if seconds > 0 else 0.0,
        **summarize_ms(latencies),
    }


# ---------------------------------------------------------------- resources and server metrics


def take_snapshot(server: Server, with_metrics: bool = True) -> Snapshot:
    """CPU times of this process, of the server's processes and of the machine, and /metrics.

    Reading /metrics takes milliseconds; `with_metrics=False` skips it where that would delay
    the generator.
    """
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = psutil.cpu_times()
    return Snapshot(
        wall=time.perf_counter(),
        generator_cpu=usage.ru_utime + usage.ru_stime,
        server_cpu=read_server_cpu(server),
        machine_busy=sum(cpu) - cpu.idle - getattr(cpu, "iowait", 0.0),
        metrics=read_metric_totals(server) if with_metrics else {},
    )


def read_server_cpu(server: Server) -> dict[str, float]:
    """CPU seconds used so far by the JVM, by its JIT compiler threads, and by its workers."""
    pid = read_server_pid(server)
    if pid is None:
        return {"jvm": 0.0, "jvm_jit": 0.0, "workers": 0.0}
    jvm = psutil.Process(pid)
    times = jvm.cpu_times()
    workers = 0.0
    for child in jvm.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            child_times = child.cpu_times()
            workers += child_times.user + child_times.system
    return {"jvm": times.user + times.system, "jvm_jit": read_jit_cpu(jvm), "workers": workers}


def read_jit_cpu(jvm: psutil.Process) -> float:
    """CPU seconds of the JVM's JIT compiler threads (named "C1/C2 CompilerThread" on Linux)."""
    total = 0.0
    with contextlib.suppress(psutil.Error):
        for thread in jvm.threads():
            with contextlib.suppress(OSError):
                name = Path(f"/proc/{jvm.pid}/task/{thread.id}/comm").read_text()
                if name.startswith(JIT_THREAD_PREFIXES):
                    total += thread.user_time + thread.system_time
    return total


def summarize_resources(before: Snapshot, after: Snapshot) -> dict:
    """Cores used (CPU seconds per second) by the generator, the server and everything else.

    `server_jvm_jit` is the part of `server_jvm` spent compiling Java code: a start-up cost.
    """
    wall = after.wall - before.wall
    generator = (after.generator_cpu - before.generator_cpu) / wall
    jvm = (after.server_cpu["jvm"] - before.server_cpu["jvm"]) / wall
    jit = (after.server_cpu["jvm_jit"] - before.server_cpu["jvm_jit"]) / wall
    workers = (after.server_cpu["workers"] - before.server_cpu["workers"]) / wall
    machine = (after.machine_busy - before.machine_busy) / wall
    return {
        "cores_used": {
            "generator": round(generator, 3),
            "server_jvm": round(jvm, 3),
            "server_jvm_jit": round(jit, 3),
            "server_workers": round(workers, 3),
            "other_processes": round(max(0.0, machine - generator - jvm - workers), 3),
            "machine": round(machine, 3),
        }
    }


# Counters by their base name: the Prometheus parser adds `_total` to counter samples.
METRIC_TOTALS = (
    "ts_inference_requests",
    "ts_inference_latency_microseconds",
    "ts_queue_latency_microseconds",
    "smoke_batch_size_sum",
    "smoke_batch_size_count",
    "smoke_preprocess_seconds_sum",
    "smoke_preprocess_seconds_count",
    "smoke_inference_seconds_sum",
    "smoke_inference_seconds_count",
)


def read_metric_totals(server: Server) -> dict[str, float]:
    """The totals of `METRIC_TOTALS` on /metrics (summed over labels; absent ones are 0)."""
    try:
        text = requests.get(server.url("metrics", "/metrics"), timeout=10).text
    except requests.RequestException:
        logger.warning("Could not read %s", server.url("metrics", "/metrics"))
        return {}
    totals = dict.fromkeys(METRIC_TOTALS, 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name.removesuffix("_total")
            if name in totals:
                totals[name] += sample.value
    return totals


def wait_for_metrics(server: Server, last: Snapshot, timeout: float = 5.0) -> dict[str, float]:
    """Reads /metrics until it stops changing: the worker's values arrive asynchronously."""
    previous, deadline = last.metrics, time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.3)
        current = read_metric_totals(server)
        if current == previous:
            return current
        previous = current
    return previous


def summarize_metrics(before: dict[str, float], after: dict[str, float]) -> dict:
    """Per request and per batch figures from the change of the server's own metrics."""

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    def ratio(numerator: float, denominator: float, scale: float = 1.0) -> float | None:
        return round(numerator / denominator * scale, 3) if denominator > 0 else None

    requests_served = delta("ts_inference_requests")
    batches, images = delta("smoke_batch_size_count"), delta("smoke_batch_size_sum")
    return {
        "requests": requests_served,
        "server_latency_ms_per_request": ratio(
            delta("ts_inference_latency_microseconds"), requests_served, 1e-3
        ),
        "queue_ms_per_request": ratio(
            delta("ts_queue_latency_microseconds"), requests_served, 1e-3
        ),
        "mean_batch_size": ratio(images, batches),
        "preprocess_ms_per_batch": ratio(delta("smoke_preprocess_seconds_sum"), batches, 1e3),
        "preprocess_ms_per_image": ratio(delta("smoke_preprocess_seconds_sum"), images, 1e3),
        "inference_ms_per_batch": ratio(
            delta("smoke_inference_seconds_sum"), delta("smoke_inference_seconds_count"), 1e3
        ),
        "inference_ms_per_image": ratio(delta("smoke_inference_seconds_sum"), images, 1e3),
    }


def read_log_sizes(server: Server) -> dict[str, tuple[int, int]]:
    """Lines and bytes of each of TorchServe's log files so far."""
    sizes = {}
    for path in sorted((server.workdir / "logs").glob("*.log")):
        data = path.read_bytes()
        sizes[path.name] = (data.count(b"\n"), len(data))
    return sizes


def summarize_logs(
    before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]], requests_served: float
) -> dict:
    """What each log file grew by while `requests_served` requests were answered."""
    logs = {}
    for name, (lines, size) in after.items():
        lines_before, size_before = before.get(name, (0, 0))
        logs[name] = {
            "lines": lines - lines_before,
            "kb": round((size - size_before) / 1e3, 1),
            "lines_per_request": (
                round((lines - lines_before) / requests_served, 2) if requests_served else None
            ),
        }
    return logs


# ---------------------------------------------------------------- cases 3 to 5: served


def is_smoke_answer(status: int, body: bytes) -> bool:
    """Our handler's answer: a 200 with the label fields."""
    if status != 200:
        return False
    try:
        answer = json.loads(body)
    except ValueError:
        return False
    return all(k in answer for k in ("label", "probability", "probabilities", "model_version"))


def stock_answer_check(class_names: Sequence[str]) -> Check:
    """The stock handler's answer: a 200 with a probability for every class name."""

    def is_stock_answer(status: int, body: bytes) -> bool:
        if status != 200:
            return False
        try:
            answer = json.loads(body)
        except ValueError:
            return False
        return isinstance(answer, dict) and all(name in answer for name in class_names)

    return is_stock_answer


def bench_levels(
    server: Server, photos: list[bytes], check: Check, config: BenchConfig, name: str
) -> dict:
    """The closed loop at every concurrency, with the server's settings and log volume."""
    wait_for_all_workers(server)
    settings = describe_served(server)
    warm_up_server(server, photos, check, config)
    logs_before = read_log_sizes(server)
    served_before = read_metric_totals(server).get("ts_inference_requests", 0.0)
    logger.info("%s: %s", name, settings)
    levels = []
    for concurrency in config.concurrencies:
        level = run_closed_loop(server, photos, concurrency, check, config)
        logger.info(
            "%s c=%d: %.1f req/s, p50 %s ms, p99 %s ms, %d errors",
            name,
            concurrency,
            level["throughput_per_s"],
            level["p50_ms"],
            level["p99_ms"],
            level["errors"],
        )
        levels.append(level)
    served = read_metric_totals(server).get("ts_inference_requests", 0.0) - served_before
    peak = max(levels, key=lambda level: level["throughput_per_s"])
    return {
        "server": settings,
        "levels": levels,
        "best_throughput_per_s": peak["throughput_per_s"],
        "best_concurrency": peak["concurrency"],
        "logs": summarize_logs(logs_before, read_log_sizes(server), served),
    }


def warm_up_server(server: Server, photos: list[bytes], check: Check, config: BenchConfig) -> None:
    """Sends unmeasured traffic before the first level.

    A fresh JVM spends seconds of CPU compiling its hot paths, which would otherwise be charged
    to the first level's requests.
    """
    warm = dataclasses.replace(
        config, warmup_seconds=0.0, level_seconds=config.server_warmup_seconds
    )
    run_closed_loop(server, photos, WARMUP_CONCURRENCY, check, warm)


def bench_served(
    config: BenchConfig, photos: list[bytes], scratch: Path, progress: tqdm
) -> tuple[dict, dict]:
    """Case 3 and the half-peak run, on one TorchServe with our handler."""
    archive = build_archive(config.export_dir, scratch / "archives")
    with serve_archive(archive, scratch / "served") as server:
        served = bench_levels(server, photos, is_smoke_answer, config, "served")
        progress.update()
        rate = served["best_throughput_per_s"] / 2
        if rate <= 0:
            raise BenchError("the served case answered no request; see the server logs")
        half_peak = run_open_loop(server, photos, rate, is_smoke_answer, config)
        logger.info(
            "half peak at %.1f req/s: p50 %s ms, p99 %s ms",
            rate,
            half_peak["p50_ms"],
            half_peak["p99_ms"],
        )
        progress.update()
    return served, half_peak


def bench_stock(config: BenchConfig, photos: list[bytes], scratch: Path) -> dict:
    """Case 4: the stock handler with TorchServe's defaults, on the same model."""
    spec = PreprocessSpec.load(config.export_dir / "preprocess.json")
    archive = build_stock_archive(config.export_dir, scratch / "archives")
    properties = stock_config_properties(archive.stem)
    with serve_archive(archive, scratch / "stock", properties, our_logging=False) as server:
        return bench_levels(server, photos, stock_answer_check(spec.class_names), config, "stock")


# ---------------------------------------------------------------- ratios, report, plot


def compute_ratios(cases: dict) -> dict[str, float | None]:
    """The four ratios the targets apply to."""
    served, in_process = cases["served"], cases["in_process"]
    c1 = next((lv for lv in served["levels"] if lv["concurrency"] == 1), None)
    half = cases["half_peak"]

    def divide(a: float | None, b: float | None) -> float | None:
        if a is None or b is None or b == 0:
            return None
        return round(a / b, 3)

    return {
        "served_vs_in_process": divide(
            served["best_throughput_per_s"], in_process_throughput(in_process)
        ),
        "served_vs_stock": divide(
            served["best_throughput_per_s"], cases["stock"]["best_throughput_per_s"]
        ),
        "c1_p50_overhead_ms": (
            round(c1["p50_ms"] - in_process["mean_single_p50_ms"], 3)
            if c1 is not None and c1["p50_ms"] is not None
            else None
        ),
        "p99_over_p50_at_half_peak": divide(half["p99_ms"], half["p50_ms"]),
    }


def judge(ratios: dict[str, float | None]) -> dict:
    """Each ratio's target and whether the measured value meets it."""
    targets = {}
    for name, (comparison, target) in TARGETS.items():
        value = ratios.get(name)
        finite = value is not None and math.isfinite(value)
        met = finite and (value >= target if comparison == ">=" else value <= target)
        targets[name] = {"comparison": comparison, "target": target, "value": value, "met": met}
    return targets


def write_results(report_dir: Path, results: dict) -> Path:
    path = report_dir / "results.json"
    path.write_text(json.dumps(results, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path


def plot_latency(report_dir: Path, cases: dict) -> Path:
    """p50 and p99 against concurrency for our server and the stock one, throughput beside."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (latency_axes, rate_axes) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, colour in (("served", "tab:blue"), ("stock", "tab:orange")):
        levels = cases[name]["levels"]
        x = [lv["concurrency"] for lv in levels]
        label = "ours" if name == "served" else "stock handler"
        latency_axes.plot(
            x, [lv["p50_ms"] for lv in levels], "o-", color=colour, label=f"{label} p50"
        )
        latency_axes.plot(
            x, [lv["p99_ms"] for lv in levels], "s--", color=colour, label=f"{label} p99"
        )
        rate_axes.plot(
            x, [lv["throughput_per_s"] for lv in levels], "o-", color=colour, label=label
        )
    concurrencies = [lv["concurrency"] for lv in cases["served"]["levels"]]
    for axes in (latency_axes, rate_axes):
        axes.set_xscale("log", base=2)
        axes.set_xticks(concurrencies, [str(c) for c in concurrencies])
        axes.set_xlabel("concurrent clients")
        axes.grid(alpha=0.3)
        axes.legend()
    latency_axes.set_yscale("log")  # the stock handler can be orders of magnitude slower
    latency_axes.set_ylabel("latency (ms, log scale)")
    latency_axes.set_title("Latency")
    rate_axes.set_ylabel("requests per second")
    rate_axes.set_title("Throughput")
    figure.tight_layout()
    path = report_dir / "latency_vs_concurrency.png"
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def format_value(value: Any, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(format_value(v) for v in row) + " |" for row in rows]
    return [*lines, ""]


def served_table(levels: list[dict]) -> list[str]:
    rows = []
    for lv in levels:
        cores, metrics = lv["cores_used"], lv["server_metrics"]
        rows.append(
            [
                lv["concurrency"],
                lv["throughput_per_s"],
                lv["p50_ms"],
                lv["p90_ms"],
                lv["p99_ms"],
                lv["errors"],
                metrics["mean_batch_size"],
                f"{cores['server_jvm']:.2f} ({cores['server_jvm_jit']:.2f})",
                f"{cores['server_workers']:.2f}",
                f"{cores['generator']:.3f}",
                f"{cores['other_processes']:.2f}",
            ]
        )
    header = [
        "clients",
        "req/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "errors",
        "mean batch",
        "JVM cores (JIT)",
        "worker cores",
        "generator cores",
        "other cores",
    ]
    return table(header, rows)


def explain_limit(results: dict) -> list[str]:
    """The paragraph on what limits the served throughput, worked out from the figures."""
    cases, cpu_count = results["cases"], results["settings"]["machine"]["cpu_count"] or 1
    served = cases["served"]
    levels = served["levels"]
    peak = next(lv for lv in levels if lv["concurrency"] == served["best_concurrency"])
    if peak["throughput_per_s"] <= 0:
        return ["The served case answered no request, so nothing can be said about its limit.", ""]
    sentences = [
        describe_cpu_at_peak(peak, cpu_count),
        describe_worker_time(peak, cases["model"]),
        describe_server_time(levels[0], cases["in_process"], served["server"]),
        conclude_limit(levels, peak, cpu_count),
        describe_log_volume(served["logs"]),
    ]
    return [" ".join(s for s in sentences if s), ""]


def cpu_ms_per_request(level: dict) -> dict[str, float]:
    """CPU milliseconds per answered request, by consumer."""
    rate, cores = level["throughput_per_s"], level["cores_used"]
    return {
        "the TorchServe frontend (JVM)": cores["server_jvm"] / rate * 1e3,
        "the Python worker": cores["server_workers"] / rate * 1e3,
        "the load generator": cores["generator"] / rate * 1e3,
    }


def describe_cpu_at_peak(peak: dict, cpu_count: int) -> str:
    cores = peak["cores_used"]
    jit_ms = cores["server_jvm_jit"] / peak["throughput_per_s"] * 1e3
    return (
        f"At the served peak ({peak['throughput_per_s']:.1f} req/s with {peak['concurrency']} "
        f"clients) the machine's {cpu_count} cores were {cores['machine'] / cpu_count:.0%} busy. "
        "CPU time per request: "
        + ", ".join(f"{name} {ms:.2f} ms" for name, ms in cpu_ms_per_request(peak).items())
        + f" (the frontend's includes {jit_ms:.2f} ms of Java JIT compilation, a start-up "
        f"cost); other processes used {cores['other_processes']:.2f} cores meanwhile."
    )


def describe_worker_time(peak: dict, model: dict) -> str:
    metrics = peak["server_metrics"]
    if metrics["preprocess_ms_per_image"] is None or metrics["inference_ms_per_image"] is None:
        return ""
    return (
        f"Inside the worker a photo took {metrics['preprocess_ms_per_image']:.2f} ms to decode "
        f"and preprocess and {metrics['inference_ms_per_image']:.2f} ms of forward pass (wall "
        f"time of a batch over its photos), in batches of {metrics['mean_batch_size']:.1f} on "
        f"average; the forward pass alone (case 1) needs {1e3 / model['best_images_per_s']:.2f} "
        "ms per image at its best batch size."
    )


def describe_server_time(first: dict, in_process: dict, server: dict) -> str:
    """Where the time of a lone request goes: handler, TorchServe around it, the client side."""
    metrics = first["server_metrics"]
    held = metrics["server_latency_ms_per_request"]
    if held is None or first["p50_ms"] is None or metrics["preprocess_ms_per_batch"] is None:
        return ""
    handler = metrics["preprocess_ms_per_batch"] + (metrics["inference_ms_per_batch"] or 0.0)
    queued = metrics["queue_ms_per_request"] or 0.0
    return (
        f"With {first['concurrency']} client(s), TorchServe held a request {held:.1f} ms on "
        f"average: {queued:.1f} ms queued (a batch that does not fill waits up to "
        f"maxBatchDelay, {server['max_batch_delay_ms']} ms, for company), {handler:.1f} ms in "
        f"the handler's preprocess and forward, and {held - queued - handler:.1f} ms in the "
        "frontend and the round trip to the worker. The client's median was "
        f"{first['p50_ms']:.1f} ms against {in_process['mean_single_p50_ms']:.1f} ms for the "
        "whole handler in process."
    )


def conclude_limit(levels: list[dict], peak: dict, cpu_count: int) -> str:
    """Names the limit: saturated CPUs, too few clients, or the single worker."""
    cores = peak["cores_used"]
    busy = cores["machine"] / cpu_count
    per_request = cpu_ms_per_request(peak)
    worker_ms = per_request["the Python worker"]
    server_ms = worker_ms + per_request["the TorchServe frontend (JVM)"]
    previous = levels[-2]["throughput_per_s"] if len(levels) > 1 else 0.0
    rising = peak is levels[-1] and previous > 0 and peak["throughput_per_s"] > 1.1 * previous
    sentences = []
    if busy >= 0.85:
        largest = max(per_request, key=per_request.get)
        sentences.append(
            f"The CPUs were saturated, so throughput here is bounded by CPU: the server got "
            f"{cores['server_jvm'] + cores['server_workers']:.2f} of the {cpu_count} cores "
            f"(other processes {cores['other_processes']:.2f}) and spent {server_ms:.2f} ms of "
            f"CPU per request, most of it in {largest}."
        )
        if rising:
            sentences.append(
                "Throughput still rose between the last two levels, so more clients might "
                "gain a little more."
            )
    elif rising:
        sentences.append(
            f"Throughput was still rising at {peak['concurrency']} clients, the most measured, "
            "and the CPUs had room, so this is not the server's peak: each client waits for "
            "its answer, and more clients would load the server further."
        )
    if worker_ms > 0:
        sentences.append(
            f"The worker processes spent {worker_ms:.2f} ms of CPU per request, so a worker "
            f"can answer at most about {1e3 / worker_ms:.0f} req/s per core it gets; together "
            f"they used {cores['server_workers']:.2f} cores at the peak."
        )
    return " ".join(sentences)


def describe_log_volume(logs: dict) -> str:
    chatty = {name: v for name, v in logs.items() if v["lines_per_request"]}
    if not chatty:
        return ""
    return (
        "TorchServe's logs grew by "
        + ", ".join(f"{v['lines_per_request']:.1f} lines in {n}" for n, v in chatty.items())
        + " per request served, written by the frontend."
    )


def describe_server_settings(settings: dict) -> str:
    return (
        f"{settings['workers']} worker(s), batches of up to {settings['batch_size']} with a "
        f"{settings['max_batch_delay_ms']} ms batch delay; JVM options: "
        f"{' '.join(settings.get('jvm_options') or []) or 'none'}"
    )


def write_report(report_dir: Path, results: dict) -> Path:
    """report.md: settings, every case in tables, ratios against targets, and the limit."""
    settings, cases = results["settings"], results["cases"]
    model, machine = settings["model"], settings["machine"]
    lines = [
        f"# Benchmark {report_dir.name}",
        "",
        f"Model {model['name']} version {model['version']} ({model['input_size']} px input, "
        f"{model['size_mb']} MB) on {machine['cpu_count']} CPUs ({machine['cpu_model']}), "
        f"torch {settings['versions']['torch']}, TorchServe {settings['versions']['torchserve']}, "
        f"commit {settings['git_commit']}. Photos: {settings['photos']['source']} "
        f"({settings['photos']['mean_kb']} kB on average)."
        + (" Quick mode: a few seconds per case." if settings["quick"] else ""),
        "",
        f"Load average when it started: {machine['load_average_at_start']}. The 'other cores' "
        "columns show what the rest of the machine used during each level; figures taken "
        "while that is high are not final.",
        "",
        "## 1. The model alone (TorchScript forward pass)",
        "",
        f"Torch threads: {cases['model']['torch_threads']['intra_op']} intra-op, "
        f"{cases['model']['torch_threads']['inter_op']} inter-op, a batch cut into slices on "
        f"{cases['model']['torch_threads']['forward']} forward thread(s) (as in the handler).",
        "",
        *table(
            ["batch", "median ms", "p90 ms", "images/s"],
            [
                [r["batch_size"], r["p50_ms"], r["p90_ms"], r["images_per_s"]]
                for r in cases["model"]["batches"]
            ],
        ),
        "## 2. Our handler in process (decode, preprocess, forward, answer)",
        "",
        f"One photo per call, {cases['in_process']['single']['calls']} calls: median "
        f"{cases['in_process']['single']['p50_ms']:.2f} ms, p90 "
        f"{cases['in_process']['single']['p90_ms']:.2f} ms, p99 "
        f"{cases['in_process']['single']['p99_ms']:.2f} ms. Measured again right after the "
        f"served case: median {cases['in_process']['repeat']['single_p50_ms']:.2f} ms, best "
        f"{cases['in_process']['repeat']['best_images_per_s']:.1f} images/s against "
        f"{cases['in_process']['best_images_per_s']:.1f} here; the ratios use the means, "
        f"{cases['in_process']['mean_single_p50_ms']:.2f} ms and "
        f"{cases['in_process']['mean_best_images_per_s']:.1f} images/s.",
        "",
        *describe_parallel(cases["in_process"]),
        *table(
            ["photos per call", "median ms", "p90 ms", "images/s"],
            [
                [r["batch_size"], r["p50_ms"], r["p90_ms"], r["images_per_s"]]
                for r in cases["in_process"]["batches"]
            ],
        ),
        "## 3. Served: TorchServe with our handler",
        "",
        f"Server: {describe_server_settings(cases['served']['server'])}; handler threads from "
        f"the model config: {settings['threads']['intra_op_threads']} intra-op, "
        f"{settings['threads']['inter_op_threads']} inter-op, "
        f"{settings['threads']['decode_threads']} decode, "
        f"{settings['threads']['forward_threads']} forward.",
        "",
        *served_table(cases["served"]["levels"]),
        "## 4. Stock: TorchServe's image classifier on the same model",
        "",
        f"Server: {describe_server_settings(cases['stock']['server'])} (TorchServe's defaults); "
        "torch threads per worker: torch's defaults, as the stock handler sets none: "
        f"{settings['torch_default_threads']['intra_op']} intra-op, "
        f"{settings['torch_default_threads']['inter_op']} inter-op.",
        "",
        *served_table(cases["stock"]["levels"]),
        "## 5. Half of the served peak, constant arrival rate",
        "",
        *table(
            ["target req/s", "achieved req/s", "p50 ms", "p90 ms", "p99 ms", "errors"],
            [
                [
                    cases["half_peak"]["target_rate_per_s"],
                    cases["half_peak"]["throughput_per_s"],
                    cases["half_peak"]["p50_ms"],
                    cases["half_peak"]["p90_ms"],
                    cases["half_peak"]["p99_ms"],
                    cases["half_peak"]["errors"],
                ]
            ],
        ),
        "## Ratios against targets",
        "",
        *table(
            ["ratio", "value", "target", "met"],
            [
                [
                    name,
                    format_value(t["value"], 3),
                    f"{t['comparison']} {t['target']:g}",
                    "yes" if t["met"] else "no",
                ]
                for name, t in results["targets"].items()
            ],
        ),
        "## The load generator's share of the CPU",
        "",
        describe_generator(cases),
        "",
        "## What limits the served throughput",
        "",
        *explain_limit(results),
        "![latency and throughput against concurrency](latency_vs_concurrency.png)",
        "",
    ]
    path = report_dir / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def describe_parallel(in_process: dict) -> list[str]:
    """A paragraph on the several-process measurement, when there was one."""
    parallel = in_process.get("parallel")
    if not parallel:
        return []
    return [
        f"{parallel['processes']} handler processes at once (as many as the server's workers), "
        f"batches of {parallel['batch_size']}: {parallel['images_per_s']:.1f} images/s, and "
        f"{parallel['repeat_images_per_s']:.1f} right after the served case. The served "
        f"throughput is compared with their mean, {parallel['mean_images_per_s']:.1f} "
        "images/s, not with one process.",
        "",
    ]


def describe_generator(cases: dict) -> str:
    """One paragraph on the generator's CPU use, which the server could not use."""
    levels = [lv for name in ("served", "stock") for lv in cases[name]["levels"]]
    answered = sum(lv["requests"] for lv in levels)
    if not answered:
        return "No level answered a request, so the generator's share is unknown."
    cpu_seconds = sum(lv["cores_used"]["generator"] * lv["seconds"] for lv in levels)
    busiest = max(levels, key=lambda lv: lv["cores_used"]["generator"])
    return (
        f"The generator runs in the benchmark's own process. It used at most "
        f"{busiest['cores_used']['generator']:.3f} cores (at {busiest['concurrency']} clients) "
        f"and {cpu_seconds / answered * 1e3:.2f} ms of CPU per answered request over all "
        "closed-loop levels: CPU the server could not use on the same cores. The 'generator "
        "cores' columns give it per level."
    )


# ---------------------------------------------------------------- main


def run_cases(config: BenchConfig, photos: list[bytes]) -> dict:
    """Runs the five cases in order, with a progress bar over them."""
    spec = PreprocessSpec.load(config.export_dir / "preprocess.json")
    cases: dict[str, dict] = {}
    with (
        tempfile.TemporaryDirectory(prefix="smoke-bench-") as scratch,
        logging_redirect_tqdm(),
        tqdm(total=len(CASES), desc="bench", unit="case") as progress,
    ):
        progress.set_postfix_str("model")
        cases["model"] = bench_model(config, spec)
        progress.update()
        progress.set_postfix_str("in_process")
        cases["in_process"] = bench_in_process(config, photos)
        workers = int(read_model_config().get("minWorkers") or 1)
        if workers > 1:
            best = max(cases["in_process"]["batches"], key=lambda row: row["images_per_s"])
            parallel = bench_in_process_parallel(config, photos, workers, best["batch_size"])
        progress.update()
        progress.set_postfix_str("served")
        cases["served"], cases["half_peak"] = bench_served(config, photos, Path(scratch), progress)
        add_repeat(cases["in_process"], bench_in_process(config, photos))
        if workers > 1:
            repeat = bench_in_process_parallel(config, photos, workers, best["batch_size"])
            add_parallel(cases["in_process"], workers, best["batch_size"], parallel, repeat)
        progress.set_postfix_str("stock")
        cases["stock"] = bench_stock(config, photos, Path(scratch))
        progress.update()
    return cases


def read_model_config() -> dict:
    """The model config that the archive packages (handler/model_config.yaml)."""
    return yaml.safe_load(MODEL_CONFIG.read_text(encoding="utf-8"))


def set_handler_threads() -> dict[str, int]:
    """Gives this process the torch threads of the handler; returns torch's own defaults.

    The defaults are what a worker that sets no threads (the stock handler's) runs with.
    """
    defaults = {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads()}
    settings = read_handler_settings(read_model_config())
    set_torch_threads(settings["intra_op_threads"], settings["inter_op_threads"])
    return defaults


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = build_config(args)
        torch_defaults = set_handler_threads()
        keep_freed_memory()  # as the handler makes every worker do
        photos, photo_source = load_photos(config.photo_root, PHOTOS)
        settings = describe_settings(config, photo_source, photos, torch_defaults)
        cases = run_cases(config, photos)
    except (BenchError, ArchiveError, ServerError) as error:
        logger.error("%s", error)
        return 1
    ratios = compute_ratios(cases)
    results = {"settings": settings, "cases": cases, "ratios": ratios, "targets": judge(ratios)}
    report_dir = new_report_dir(config.out_dir.resolve())
    write_results(report_dir, results)
    plot_latency(report_dir, cases)
    write_report(report_dir, results)
    point_latest(report_dir)
    print(f"reports: {report_dir}")
    for name, target in results["targets"].items():
        verdict = "met" if target["met"] else "NOT met"
        print(
            f"{name}: {format_value(target['value'], 3)} "
            f"(target {target['comparison']} {target['target']:g}, {verdict})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
