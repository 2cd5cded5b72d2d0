"""The whole pipeline on the embedded synthetic photos, from nothing to a served answer.

    python -m scripts.demo        # what `make demo` runs, after `make setup`

Generates the synthetic scenes (unless data/synthetic already holds them), trains and exports
`training/configs/default.yaml`, builds model_store/smoke.mar, starts TorchServe in the
background, waits until the model is READY, sends it one held-out photo and prints the answer
with the commands to query, scrape and stop the server. The server keeps running afterwards:
`make stop` stops it. Ports are those of config.properties, or TorchServe's TS_* variables.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
import time
from pathlib import Path

from scripts import archive, server
from training import train
from training.config import ConfigError, load_config
from training.data import DataError
from training.tracking import read_json

logger = logging.getLogger("scripts.demo")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "training" / "configs" / "default.yaml"


def train_default() -> Path:
    """Trains the default config (generating its photos on first use); returns the run."""
    config = load_config(DEFAULT_CONFIG)
    return train.run(config)


def build_archive(run_dir: Path, model_store: Path) -> Path:
    return archive.build_archive(archive.find_export(run_dir), model_store)


def start_server(served: server.Server) -> float:
    """Starts TorchServe, replacing a demo server this checkout left running."""
    if server.find_jvm(served) is not None:
        logger.info("Stopping the TorchServe that is still running from an earlier demo")
        server.stop(served)
    return server.start(served)


def sample_photo(run_dir: Path) -> Path:
    """A smoking photo the model never trained on: the first of the test split."""
    root = Path(load_config(run_dir / "config.yaml").data.root)
    split = "test" if (root / "test").is_dir() else "val"
    return sorted((root / split / "smoking").iterdir())[0]


def curl_line(served: server.Server, photo: Path) -> str:
    key_file = served.workdir / server.KEY_FILE
    read_key = f'import json; print(json.load(open("{key_file}"))["inference"]["key"])'
    url = served.url("inference", f"/predictions/{served.model_name}")
    return (
        f"curl -s {url} -T {shlex.quote(str(photo))} "
        f'-H "Authorization: Bearer $(python3 -c {shlex.quote(read_key)})"'
    )


def main() -> int:
    train.configure_logging("INFO")
    started = time.perf_counter()
    served = server.Server.load(REPO_ROOT)
    try:
        run_dir = train_default()
        mar = build_archive(run_dir, served.model_store)
        ready_seconds = start_server(served)
        photo = sample_photo(run_dir)
        status, answer = server.predict(photo, served)
    except (ConfigError, DataError, archive.ArchiveError, server.ServerError) as error:
        logger.error("%s", error)
        return 1
    if status != 200:
        logger.error("The server answered %d: %s", status, answer)
        return 1
    summary = read_json(run_dir / "summary.json")
    print(
        f"\nDemo finished in {time.perf_counter() - started:.0f} s (server ready in "
        f"{ready_seconds:.1f} s)."
    )
    print(f"Trained {run_dir}: test accuracy {summary.get('test_accuracy', float('nan')):.4f}")
    print(f"Serving {mar} at {served.url('inference', '/predictions/smoke')}")
    print(f"Answer for {photo} (a smoking photo):\n{json.dumps(answer, indent=2)}")
    print(f"Query it yourself:\n  {curl_line(served, photo)}")
    print(f"Prometheus metrics: curl -s {served.url('metrics', '/metrics')}")
    print("Stop the server:    make stop")
    return 0


if __name__ == "__main__":
    sys.exit(main())
