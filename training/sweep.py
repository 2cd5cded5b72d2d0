"""Train one recipe with several seeds and report the mean and spread of its results.

    python -m training.sweep --config real --seeds 0 1 2 [key.sub=value ...]

A single run's validation accuracy on a few hundred photos moves by several points with the
seed alone, so recipes are compared on their mean over seeds, never on their best run. Each
seed is a normal run folder; the sweep writes `runs/sweeps/<UTC time>-<name>.json` with every
run's summary and the aggregate, and prints one line per metric.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import logging
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

from training import tracking, train
from training.config import ConfigError, load_config

logger = logging.getLogger("training.sweep")

REPORTED = (
    "val_accuracy",
    "last_val_accuracy",
    "val_f1",
    "test_accuracy",
    "val_ece_before",
    "val_ece_after",
    "seconds",
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m training.sweep", description="Train one recipe with several seeds."
    )
    parser.add_argument("--config", required=True, help="YAML file or bundled config name")
    parser.add_argument("--seeds", nargs="+", default=["0", "1", "2"], metavar="SEED")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value")
    args = parser.parse_args(argv)
    # `--seeds 0 1 2 data.root=DIR` is how people write it: argparse hands the overrides that
    # follow the seeds to --seeds, so they are moved back here.
    args.overrides = [*args.overrides, *(token for token in args.seeds if "=" in token)]
    seeds = [token for token in args.seeds if "=" not in token]
    if not seeds or not all(token.isdigit() for token in seeds) or len(set(seeds)) != len(seeds):
        parser.error(f"--seeds must be distinct non-negative integers, got {seeds}")
    args.seeds = [int(token) for token in seeds]
    return args


def last_epoch_accuracy(run_dir: Path) -> float:
    """Validation accuracy of the final epoch (threshold 0.5): no choice made on val."""
    with open(run_dir / "metrics.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return float(rows[-1]["val_accuracy"])


def aggregate(summaries: Sequence[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean, sample standard deviation, minimum and maximum of each reported metric."""
    result = {}
    for key in REPORTED:
        values = [s[key] for s in summaries if key in s]
        if values:
            result[key] = {
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "min": min(values),
                "max": max(values),
            }
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    train.configure_logging("INFO")
    runs = []
    try:
        for seed in args.seeds:
            config = load_config(args.config, [*args.overrides, f"seed={seed}"])
            run_dir = train.run(config)
            summary = tracking.read_json(run_dir / "summary.json")
            summary["last_val_accuracy"] = last_epoch_accuracy(run_dir)
            runs.append({"seed": seed, "run": str(run_dir)} | summary)
    except (ConfigError, train.data.DataError, FileNotFoundError) as error:
        logger.error("%s", error)
        return 2
    result = {"config": args.config, "overrides": args.overrides, "runs": runs}
    result["aggregate"] = aggregate(runs)
    out = Path(config.runs_dir) / "sweeps"
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = out / f"{stamp}-{config.name}.json"
    tracking.write_json(path, result)
    for key, stats in result["aggregate"].items():
        print(
            f"{key}: {stats['mean']:.4f} ± {stats['std']:.4f} (min {stats['min']:.4f}, "
            f"max {stats['max']:.4f}) over seeds {args.seeds}"
        )
    print(f"sweep written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
