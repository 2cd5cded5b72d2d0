"""Runs the Locust load test headless against a running TorchServe and files its reports.

    python -m loadtest.run [--host URL] [--key-file PATH] [--run-time 30s] [--users N]
                           [--spawn-rate R] [--max-fail-ratio R] [--max-p95-ms MS]
                           [--photos DIR] [--out reports/loadtest]

It targets the server of `make serve` unless told otherwise: the inference address of
config.properties (or TS_INFERENCE_ADDRESS) and the key_file.json TorchServe wrote beside it.
Every other setting comes from loadtest/locust.conf unless given here. Locust writes its CSV
files (`locust_stats.csv`, `locust_failures.csv`, ...) and `report.html` into
reports/loadtest/<UTC time>/, and reports/loadtest/latest points at the newest. It prints that
folder and a one-line summary, and exits with Locust's exit code: 1 when a limit of locust.conf
(failure ratio, p95 of photo requests) was passed. It starts no server: `make archive` and
`make serve` do.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import subprocess
import sys
from pathlib import Path

import requests

from loadtest import new_report_dir, point_latest
from scripts.server import KEY_FILE, Server, ServerError

logger = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
LOCUSTFILE = PACKAGE_DIR / "locustfile.py"
LOCUST_CONF = PACKAGE_DIR / "locust.conf"
CSV_PREFIX = "locust"
HTML_REPORT = "report.html"
# Our options passed on to Locust only when given (None leaves locust.conf's value).
PASSED_ON = ("run_time", "users", "spawn_rate", "max_fail_ratio", "max_p95_ms", "photos")


class LoadTestError(RuntimeError):
    """The load test cannot start; the message says what to do first."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", help="inference URL; default: that of `make serve`")
    parser.add_argument("--key-file", type=Path, help="key_file.json of the server under test")
    parser.add_argument("--run-time", help="how long to send, e.g. 30s or 2m")
    parser.add_argument("--users", type=int, help="concurrent users, at least 4")
    parser.add_argument("--spawn-rate", type=float, help="users started per second")
    parser.add_argument("--max-fail-ratio", type=float, help="highest failure ratio that passes")
    parser.add_argument("--max-p95-ms", type=float, help="highest photo p95 in ms that passes")
    parser.add_argument("--photos", type=Path, help="photo folder; default: the shared data set")
    parser.add_argument("--out", type=Path, default=Path("reports/loadtest"), help="reports")
    return parser.parse_args(argv)


def resolve_target(host: str | None, key_file: Path | None) -> tuple[str, Path]:
    """The URL and key file given, or those of the server `make serve` starts."""
    if host is not None and key_file is not None:
        return host.rstrip("/"), key_file.resolve()
    server = Server.load()
    return (
        (host or server.url("inference", "")).rstrip("/"),
        (key_file or server.workdir / KEY_FILE).resolve(),
    )


def check_server(host: str, key_file: Path) -> None:
    """Refuses to start unless the server answers /ping with the key from `key_file`.

    Raises:
        LoadTestError: no key file, no answer, or a refused key; the message says what to run.
    """
    try:
        key = json.loads(key_file.read_text(encoding="utf-8"))["inference"]["key"]
    except FileNotFoundError as error:
        raise LoadTestError(
            f"{key_file} not found: no server seems to run. Start one first: make archive && "
            "make serve (or pass --host and --key-file of the server under test)"
        ) from error
    except (ValueError, KeyError) as error:
        raise LoadTestError(f"{key_file} holds no inference key ({error})") from error
    try:
        response = requests.get(
            f"{host}/ping", headers={"Authorization": f"Bearer {key}"}, timeout=5
        )
    except requests.ConnectionError as error:
        raise LoadTestError(
            f"no server answers at {host}. Start one first: make archive && make serve"
        ) from error
    if response.status_code != 200:
        raise LoadTestError(
            f"{host}/ping answered HTTP {response.status_code}: {response.text.strip()[:200]}. "
            "An expired key (after 60 min) is renewed by `python -m scripts.server status`; "
            "otherwise restart the server: make stop && make serve"
        )


def build_command(args: argparse.Namespace, host: str, key_file: Path, out_dir: Path) -> list[str]:
    """The Locust command line: locust.conf, then our target, reports and given settings."""
    command = [
        sys.executable,
        "-m",
        "locust",
        "--config",
        str(LOCUST_CONF),
        "--locustfile",
        str(LOCUSTFILE),
        "--host",
        host,
        "--key-file",
        str(key_file),
        "--csv",
        str(out_dir / CSV_PREFIX),
        "--html",
        str(out_dir / HTML_REPORT),
    ]
    for name in PASSED_ON:
        value = getattr(args, name)
        if value is not None:
            command += [f"--{name.replace('_', '-')}", str(value)]
    return command


def run_locust(command: list[str]) -> int:
    """Runs Locust from the repository root and returns its exit code."""
    logger.info("Running %s", " ".join(command[2:]))
    try:
        return subprocess.run(command, cwd=REPO_ROOT).returncode
    except KeyboardInterrupt:
        logger.warning("Interrupted; Locust writes what it has and stops")
        return 130


def summarize(stats_csv: Path) -> str:
    """One line from the Aggregated row of Locust's stats CSV."""
    try:
        with open(stats_csv, encoding="utf-8", newline="") as f:
            row = next(r for r in csv.DictReader(f) if r["Name"] == "Aggregated")
    except (FileNotFoundError, StopIteration):
        return f"no statistics in {stats_csv}"
    requests_sent, failures = int(row["Request Count"]), int(row["Failure Count"])
    share = failures / requests_sent if requests_sent else 0.0
    return (
        f"{requests_sent} requests, {failures} failures ({share:.2%}), "
        f"p50 {row['50%']} ms, p95 {row['95%']} ms, {float(row['Requests/s']):.1f} req/s"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        host, key_file = resolve_target(args.host, args.key_file)
        check_server(host, key_file)
    except (LoadTestError, ServerError) as error:
        logger.error("%s", error)
        return 2
    out_dir = new_report_dir(args.out.resolve())
    code = run_locust(build_command(args, host, key_file, out_dir))
    point_latest(out_dir)
    print(f"reports: {out_dir}")
    print(f"summary: {summarize(out_dir / f'{CSV_PREFIX}_stats.csv')}; exit code {code}")
    return code


if __name__ == "__main__":
    sys.exit(main())
