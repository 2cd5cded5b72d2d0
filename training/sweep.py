"""Train one recipe with several seeds and report the mean and spread of its results.

    python -m training.sweep --config real --seeds 0 1 2 [key.sub=value ...]

A single run's validation accuracy on a few hundred photos moves by several points with the
seed alone, so recipes are compared on their mean over seeds, never on their best run. Each
seed is a normal run folder; the sweep writes `runs/sweeps/<UTC time>-<name>.json` with every
run's summary and the aggregate, and prints one line per metric.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

from training import tracking, train
from training.config import ConfigError, load_config

logger = logging.getLogger("training.sweep")

REPORTED = ("val_accuracy", "val_f1", "test_accuracy", "val_ece_before", "val_ece_after", "seconds")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m training.sweep", description="Train one recipe with several seeds."
    )
    parser.add_argument("--config", required=True, help="YAML file or bundled config name")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value")
    return parser.parse_args(argv)


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
    if len(set(args.seeds)) != len(args.seeds) or min(args.seeds) < 0:
        logger.error("--seeds must be distinct non-negative integers, got %s", args.seeds)
        return 2
    runs = []
    try:
        for seed in args.seeds:
            config = load_config(args.config, [*args.overrides, f"seed={seed}"])
            run_dir = train.run(config)
            runs.append(
                {"seed": seed, "run": str(run_dir)} | tracking.read_json(run_dir / "summary.json")
            )
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
