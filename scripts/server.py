"""Starts, probes, queries and stops the local TorchServe that serves `smoke.mar`.

    python -m scripts.server start [--timeout 120]   # in the background; returns once READY
    python -m scripts.server status                  # exit 0 when /ping answers Healthy
    python -m scripts.server predict photo.jpg       # prints the JSON answer
    python -m scripts.server stop

TorchServe runs from a working directory, the repository root unless `--workdir` or
SMOKE_SERVER_DIR says otherwise, which holds config.properties, metrics.yaml and the model store;
TorchServe writes logs/ and key_file.json there. The ports are those of config.properties, or
of TorchServe's own environment variables (TS_INFERENCE_ADDRESS, TS_MANAGEMENT_ADDRESS,
TS_METRICS_ADDRESS, TS_GRPC_INFERENCE_PORT, TS_GRPC_MANAGEMENT_PORT) when they are set. TMPDIR
decides where TorchServe keeps its pid file and worker sockets, so a server started with one
TMPDIR is stopped with the same. The demo and the tests build a `Server` of their own with
`local_server(workdir, tmp_dir)` (free ports, private temp folder) and pass it to `start`,
`wait_until_ready`, `predict` and `stop`. This module does not build the archive: `make archive`
does.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
import requests
from ts.model_server import load_properties

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_FILE = "config.properties"
# What TorchServe reads from its working directory besides the model store.
LOG_CONFIG = "log4j2.xml"
SERVER_FILES = (CONFIG_FILE, "metrics.yaml", LOG_CONFIG)
KEY_FILE = "key_file.json"
PID_FILE = ".model_server.pid"
JVM_MAIN_CLASS = "org.pytorch.serve.ModelServer"
LOG_FILES = ("logs/ts_log.log", "logs/model_log.log")
TOKEN_REFUSED = "InvalidKeyException"  # TorchServe answers a missing or stale key with 400
POLL_SECONDS = 0.25


class ServerError(RuntimeError):
    """TorchServe cannot be started, reached or stopped; the message says what to do."""


@dataclass(frozen=True)
class Server:
    """One TorchServe instance: its working directory, its addresses and its temp folder.

    Attributes:
        workdir: holds config.properties, metrics.yaml and the model store.
        tmp_dir: TMPDIR and TEMP of the server (pid file, worker sockets, unpacked archives);
            None keeps the caller's.
    """

    workdir: Path
    inference_address: str
    management_address: str
    metrics_address: str
    grpc_inference_port: int
    grpc_management_port: int
    model_store: Path
    model_name: str = "smoke"
    tmp_dir: Path | None = None

    @classmethod
    def load(cls, workdir: Path | None = None, **overrides: Any) -> Server:
        """Reads the addresses from `workdir/config.properties`, as TorchServe will.

        Like TorchServe with `enable_envvars_config=true`, TS_* environment variables win over
        the file; keyword arguments win over both.
        """
        workdir = Path(workdir or os.environ.get("SMOKE_SERVER_DIR") or REPO_ROOT).resolve()
        config_path = workdir / CONFIG_FILE
        if not config_path.is_file():
            raise ServerError(f"{config_path} not found; run from the repository root")
        properties = load_properties(str(config_path))
        if properties.get("enable_envvars_config", "false").lower() == "true":
            for key in list(properties):
                properties[key] = os.environ.get(f"TS_{key.upper()}", properties[key])

        values: dict[str, Any] = {
            "workdir": workdir,
            "inference_address": properties.get("inference_address", "http://127.0.0.1:8080"),
            "management_address": properties.get("management_address", "http://127.0.0.1:8081"),
            "metrics_address": properties.get("metrics_address", "http://127.0.0.1:8082"),
            "grpc_inference_port": int(properties.get("grpc_inference_port", 7070)),
            "grpc_management_port": int(properties.get("grpc_management_port", 7071)),
            "model_store": workdir / properties.get("model_store", "model_store"),
        }
        values.update(overrides)
        return cls(**values)

    def url(self, api: str, path: str) -> str:
        """The URL of `path` on the `inference`, `management` or `metrics` API."""
        address = urlsplit(getattr(self, f"{api}_address"))
        host = "127.0.0.1" if address.hostname in ("0.0.0.0", None) else address.hostname
        return f"{address.scheme}://{host}:{address.port}{path}"

    @property
    def archive(self) -> Path:
        return self.model_store / f"{self.model_name}.mar"

    @property
    def ports(self) -> list[int]:
        http_ports = [
            urlsplit(a).port or 80
            for a in (self.inference_address, self.management_address, self.metrics_address)
        ]
        return [*http_ports, self.grpc_inference_port, self.grpc_management_port]

    def environment(self) -> dict[str, str]:
        """The environment TorchServe is launched and stopped with."""
        environment = {
            **os.environ,
            "TS_INFERENCE_ADDRESS": self.inference_address,
            "TS_MANAGEMENT_ADDRESS": self.management_address,
            "TS_METRICS_ADDRESS": self.metrics_address,
            "TS_GRPC_INFERENCE_PORT": str(self.grpc_inference_port),
            "TS_GRPC_MANAGEMENT_PORT": str(self.grpc_management_port),
        }
        if self.tmp_dir is not None:
            environment["TMPDIR"] = environment["TEMP"] = str(self.tmp_dir)
        return environment


def local_server(workdir: Path, tmp_dir: Path, model_name: str = "smoke") -> Server:
    """A server in `workdir` on free local ports, with its own temp folder (for tests, demos)."""
    inference, management, metrics, grpc_inference, grpc_management = pick_free_ports(5)
    return Server.load(
        workdir,
        inference_address=f"http://127.0.0.1:{inference}",
        management_address=f"http://127.0.0.1:{management}",
        metrics_address=f"http://127.0.0.1:{metrics}",
        grpc_inference_port=grpc_inference,
        grpc_management_port=grpc_management,
        model_name=model_name,
        tmp_dir=tmp_dir,
    )


@contextlib.contextmanager
def serve_archive(
    archive: Path,
    root: Path,
    config_properties: str | None = None,
    timeout: float = 240.0,
    our_logging: bool = True,
) -> Iterator[Server]:
    """Runs TorchServe on `archive` from `root/work` on free ports; always stops it.

    For benchmarks and checks that need a server of their own beside any other on the machine.

    Args:
        archive: the .mar file; its stem is the model name.
        root: an empty scratch folder for the working directory and TMPDIR.
        config_properties: the server configuration; None copies ours.
        timeout: seconds to wait for the model to be READY.
        our_logging: False leaves out log4j2.xml, so that TorchServe logs as it ships. The file
            must then be absent, not only unnamed: the JVM's class path starts with the working
            directory, where log4j finds a log4j2.xml by itself.
    """
    workdir, tmp_dir = root / "work", root / "tmp"
    (workdir / "model_store").mkdir(parents=True)
    tmp_dir.mkdir()
    for name in SERVER_FILES:
        if our_logging or name != LOG_CONFIG:
            shutil.copy(REPO_ROOT / name, workdir / name)
    if config_properties is not None:
        (workdir / "config.properties").write_text(config_properties, encoding="utf-8")
    shutil.copy(archive, workdir / "model_store" / archive.name)
    server = local_server(workdir, tmp_dir, model_name=archive.stem)
    try:
        start(server, timeout=timeout)
        yield server
    finally:
        pid = read_server_pid(server)
        try:
            stop(server)
        finally:
            # A server that would not stop must not outlive its scratch folder.
            if pid is not None and read_server_pid(server) == pid:
                os.killpg(os.getpgid(pid), signal.SIGKILL)


def pick_free_ports(count: int) -> list[int]:
    """Ports that are free on 127.0.0.1 right now, all different."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def start(server: Server | None = None, timeout: float = 120.0) -> float:
    """Starts TorchServe in the background and waits until every worker of the model is READY.

    Returns:
        Seconds from the launch to READY.

    Raises:
        ServerError: the archive is missing, a port is taken, or the model did not become
            READY within `timeout`; the server is stopped again and the log tails are logged.
    """
    server = server or Server.load()
    check_startable(server)
    command = [
        sys.executable,
        "-m",
        "ts.model_server",
        "--start",
        "--ncs",
        "--ts-config",
        str(server.workdir / CONFIG_FILE),
        "--models",
        server.archive.name,
    ]
    started = time.monotonic()
    # The launcher starts the JVM and returns. The JVM's console repeats its logs/ files and
    # would grow with every request, so it goes nowhere. Its own session keeps the JVM and its
    # workers out of the caller's terminal signals and gives them one process group.
    launcher = subprocess.run(
        command,
        cwd=server.workdir,
        env=server.environment(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        timeout=60,
    )
    if launcher.returncode != 0:
        raise ServerError(f"torchserve --start failed with exit code {launcher.returncode}")
    try:
        wait_until_ready(server, timeout - (time.monotonic() - started))
    except (ServerError, KeyboardInterrupt):
        logger.error(
            "TorchServe did not become ready; last lines of its logs:\n%s", tail_logs(server)
        )
        stop(server)
        raise
    seconds = time.monotonic() - started
    logger.info(
        "TorchServe ready in %.1f s: %s serves %s, management on %s, metrics on %s",
        seconds,
        server.url("inference", f"/predictions/{server.model_name}"),
        server.archive,
        server.url("management", "/models"),
        server.url("metrics", "/metrics"),
    )
    return seconds


def check_startable(server: Server) -> None:
    """Refuses to start without Java or the archive, or when a server holds a port."""
    java_home = os.environ.get("JAVA_HOME")
    if not (Path(java_home, "bin", "java").is_file() if java_home else shutil.which("java")):
        raise ServerError("TorchServe needs Java 11 or newer on PATH (or JAVA_HOME); make setup")
    if not server.archive.is_file():
        raise ServerError(f"{server.archive} not found; build it first with `make archive`")
    jvm = find_jvm(server)
    if jvm is not None:
        raise ServerError(
            f"a TorchServe started from {process_cwd(jvm)} already runs with the pid file in "
            f"{pid_file(server).parent}; stop it first (make stop) or give this one another TMPDIR"
        )
    taken = [port for port in server.ports if is_port_open("127.0.0.1", port)]
    if taken:
        raise ServerError(
            f"ports {taken} are already in use; stop what listens there (make stop) or move "
            "the server with TS_INFERENCE_ADDRESS and friends"
        )


def wait_until_ready(server: Server, timeout: float = 120.0) -> None:
    """Polls the management API until every worker of the model is READY.

    Raises:
        ServerError: the JVM exited, or the workers were not all READY within `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if read_server_pid(server) is None:
            raise ServerError(f"TorchServe is not running (no live pid in {pid_file(server)})")
        try:
            workers = describe(server)[0].get("workers", [])
        except (ServerError, requests.RequestException, ValueError, IndexError):
            workers = []
        if workers and all(worker.get("status") == "READY" for worker in workers):
            return
        time.sleep(POLL_SECONDS)
    raise ServerError(f"model {server.model_name} was not READY after {timeout:.0f} s")


def stop(server: Server | None = None, timeout: float = 60.0) -> bool:
    """Stops TorchServe and waits until the JVM and its workers are gone.

    Processes still alive after `timeout` seconds are killed. A TorchServe that shares the
    TMPDIR (and so the pid file) but runs from another working directory is left alone.

    Returns:
        False when no TorchServe of `server.workdir` was running.
    """
    server = server or Server.load()
    jvm = find_jvm(server)
    if jvm is None:
        logger.info("TorchServe is not running (no live pid in %s)", pid_file(server))
        return False
    if process_cwd(jvm) != server.workdir:
        logger.warning(
            "Not stopping the TorchServe in %s: it runs from %s, not from %s",
            pid_file(server),
            process_cwd(jvm),
            server.workdir,
        )
        return False
    processes = [jvm, *jvm.children(recursive=True)]
    try:
        subprocess.run(
            [sys.executable, "-m", "ts.model_server", "--stop"],
            cwd=server.workdir,
            env=server.environment(),
            capture_output=True,
            timeout=30,
        )
    except subprocess.TimeoutExpired:
        logger.warning("torchserve --stop did not return in 30 s")
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    if alive:
        logger.warning("Killing %d TorchServe processes that outlived the stop", len(alive))
        for process in alive:
            process.kill()
        psutil.wait_procs(alive, timeout=10)
    (server.workdir / KEY_FILE).unlink(missing_ok=True)
    pid_file(server).unlink(missing_ok=True)
    logger.info("TorchServe stopped")
    return True


def predict(
    photo: Path | bytes, server: Server | None = None, timeout: float = 30.0
) -> tuple[int, dict[str, Any]]:
    """Sends one photo to the model and returns the HTTP status and the JSON answer."""
    server = server or Server.load()
    data = photo if isinstance(photo, bytes) else Path(photo).read_bytes()
    response = call_api(
        server,
        "inference",
        "POST",
        f"/predictions/{server.model_name}",
        data=data,
        headers={"Content-Type": "application/octet-stream"},
        timeout=timeout,
    )
    return response.status_code, response.json()


def ping(server: Server | None = None, timeout: float = 5.0) -> dict[str, Any]:
    """TorchServe's /ping answer, e.g. `{"status": "Healthy"}`."""
    response = call_api(server or Server.load(), "inference", "GET", "/ping", timeout=timeout)
    return response.json()


def describe(server: Server | None = None, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The management API's description of the model, one entry per version."""
    server = server or Server.load()
    response = call_api(
        server, "management", "GET", f"/models/{server.model_name}", timeout=timeout
    )
    response.raise_for_status()
    return response.json()


def call_api(server: Server, api: str, method: str, path: str, **kwargs: Any) -> requests.Response:
    """Sends a request with the `api` key, renewing the key once when it has expired."""
    headers = dict(kwargs.pop("headers", None) or {})
    for attempt in range(2):
        headers["Authorization"] = f"Bearer {read_keys(server)[api]['key']}"
        response = requests.request(method, server.url(api, path), headers=headers, **kwargs)
        if attempt == 0 and is_token_refused(response):
            renew_key(server, api)
            continue
        return response
    return response


def is_token_refused(response: requests.Response) -> bool:
    if response.status_code not in (400, 401, 403):
        return False
    try:
        return response.json().get("type") == TOKEN_REFUSED
    except (ValueError, AttributeError):
        return False


def renew_key(server: Server, api: str) -> None:
    """Asks TorchServe for a fresh `api` key; TorchServe rewrites key_file.json with it."""
    api_key = read_keys(server)["API"]["key"]
    response = requests.get(
        server.url("management", f"/token?type={api}"),
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=5,
    )
    if response.status_code != 200:
        raise ServerError(f"TorchServe refused to renew the {api} key: {response.text.strip()}")
    logger.info("Renewed the expired %s key", api)


def read_keys(server: Server) -> dict[str, Any]:
    """The keys TorchServe wrote into its working directory at start."""
    path = server.workdir / KEY_FILE
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError as error:
        raise ServerError(
            f"{path} not found; is TorchServe running? Start it: make serve"
        ) from error


def pid_file(server: Server) -> Path:
    return Path(server.tmp_dir or tempfile.gettempdir()) / PID_FILE


def find_jvm(server: Server) -> psutil.Process | None:
    """The TorchServe JVM named in the pid file of the server's TMPDIR, if it is alive."""
    try:
        jvm = psutil.Process(int(pid_file(server).read_text().split()[0]))
        if JVM_MAIN_CLASS in jvm.cmdline():
            return jvm
    except (OSError, ValueError, IndexError, psutil.Error):
        pass
    return None


def process_cwd(process: psutil.Process) -> Path | None:
    try:
        return Path(process.cwd()).resolve()
    except psutil.Error:
        return None


def read_server_pid(server: Server) -> int | None:
    """The pid of this server's JVM: the one in the pid file, if it runs from `workdir`."""
    jvm = find_jvm(server)
    return jvm.pid if jvm is not None and process_cwd(jvm) == server.workdir else None


def is_port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def tail_logs(server: Server, lines: int = 40) -> str:
    """The last `lines` lines of TorchServe's frontend and worker logs."""
    parts = []
    for name in LOG_FILES:
        path = server.workdir / name
        if path.is_file():
            text = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"==> {path} <==\n" + "\n".join(text))
    return "\n".join(parts) or f"(no logs under {server.workdir / 'logs'})"


def report_status(server: Server) -> tuple[bool, dict[str, Any]]:
    """Whether the server can answer: /ping Healthy and a worker READY, with what they said.

    /ping turns Healthy as soon as the frontend is up, seconds before the worker has loaded the
    model, so a health check that trusted it alone would send traffic to a server that makes it
    wait.
    """
    try:
        answer: dict[str, Any] = {"ping": ping(server)}
        answer["workers"] = [
            {key: worker.get(key) for key in ("id", "status", "memoryUsage")}
            for worker in describe(server)[0].get("workers", [])
        ]
    except (ServerError, requests.RequestException, ValueError) as error:
        return False, {"error": str(error)}
    ready = any(worker["status"] == "READY" for worker in answer["workers"])
    return answer["ping"].get("status") == "Healthy" and ready, answer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="TorchServe's working directory")
    commands = parser.add_subparsers(dest="command", required=True)
    start_parser = commands.add_parser("start", help="start in the background, wait for READY")
    start_parser.add_argument("--timeout", type=float, default=120.0, help="seconds to READY")
    stop_parser = commands.add_parser("stop", help="stop and wait until the processes are gone")
    stop_parser.add_argument("--timeout", type=float, default=60.0)
    predict_parser = commands.add_parser("predict", help="send one photo, print the answer")
    predict_parser.add_argument("photo", type=Path)
    commands.add_parser("status", help="exit 0 when /ping says Healthy")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        server = Server.load(args.workdir)
        if args.command == "start":
            start(server, args.timeout)
            return 0
        if args.command == "stop":
            stop(server, args.timeout)
            return 0
        if args.command == "predict":
            status, answer = predict(args.photo, server)
            print(json.dumps(answer, indent=2))
            return 0 if status == 200 else 1
        healthy, answer = report_status(server)
        print(json.dumps(answer, indent=2))
        return 0 if healthy else 1
    except ServerError as error:
        logger.error("%s", error)
        return 1
    except requests.ConnectionError as error:
        logger.error("TorchServe is not reachable (%s); start it with `make serve`", error)
        return 1


if __name__ == "__main__":
    sys.exit(main())
