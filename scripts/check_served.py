"""Checks that TorchServe answers like the run's own evaluation, photo by photo.

    python -m scripts.check_served [--run runs/latest] [--archive model_store/smoke.mar]
    make check-served RUN=runs/<run>

Starts a private TorchServe (free ports, its own temporary folder) on the archive, sends it
every val and test photo the run evaluated (`predictions.csv`, written by training), and compares
the served smoking probability and label with the run's. Writes `served_check.json` into the run
and exits 1 when a probability differs by more than the tolerance, a label differs, or the
archive holds another run's model.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

from handler.preprocessing import PreprocessSpec
from scripts.archive import ArchiveError, find_export
from scripts.server import ServerError, predict, serve_archive

logger = logging.getLogger("scripts.check_served")

REPO_ROOT = Path(__file__).resolve().parent.parent
# The server batches photos differently from the evaluation, which moves float32 sums by ~1e-7.
TOLERANCE = 1e-5


class CheckError(RuntimeError):
    """The check cannot run; the message says what is missing."""


def read_predictions(run_dir: Path) -> list[dict[str, str]]:
    path = run_dir / "predictions.csv"
    if not path.is_file():
        raise CheckError(
            f"{path} not found; it is written by training (python -m training.train), so name a "
            "run trained with this version"
        )
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def compare(run_dir: Path, archive: Path) -> dict:
    """Serves `archive` and compares its answers with the run's predictions; returns the figures."""
    spec = PreprocessSpec.load(find_export(run_dir) / "preprocess.json")
    expected = read_predictions(run_dir)
    missing = [row["file"] for row in expected if not Path(row["file"]).is_file()]
    if missing:
        raise CheckError(f"{len(missing)} evaluated photos are gone, e.g. {missing[0]}")
    differences, mismatched_labels, versions = [], [], set()
    with (
        tempfile.TemporaryDirectory(prefix="smoke-check-") as scratch,
        serve_archive(archive, Path(scratch)) as server,
    ):
        for row in tqdm(expected, desc="served", unit="photo", disable=None):
            status, answer = predict(Path(row["file"]), server)
            if status != 200:
                raise CheckError(f"TorchServe answered {status} for {row['file']}: {answer}")
            versions.add(answer["model_version"])
            expected_probability = float(row["smoking_probability"])
            differences.append(abs(answer["probabilities"]["smoking"] - expected_probability))
            run_label = "smoking" if expected_probability >= spec.threshold else "not_smoking"
            if answer["label"] != run_label:
                mismatched_labels.append(row["file"])
    worst = max(range(len(differences)), key=differences.__getitem__)
    return {
        "run": str(run_dir),
        "archive": str(archive),
        "run_model_version": spec.model_version,
        "served_model_versions": sorted(versions),
        "photos": len(expected),
        "max_abs_difference": differences[worst],
        "worst_photo": expected[worst]["file"],
        "mean_abs_difference": sum(differences) / len(differences),
        "tolerance": TOLERANCE,
        "label_mismatches": mismatched_labels,
    }


def verdict(result: dict) -> list[str]:
    """What is wrong with `result`, one sentence each; empty when the check passed."""
    problems = []
    if result["served_model_versions"] != [result["run_model_version"]]:
        problems.append(
            f"the archive serves {result['served_model_versions']}, not this run's "
            f"{result['run_model_version']}: rebuild it with make archive RUN={result['run']}"
        )
    if result["max_abs_difference"] > result["tolerance"]:
        problems.append(
            f"served probabilities differ by up to {result['max_abs_difference']:.2e} "
            f"(on {result['worst_photo']}), more than {result['tolerance']:g}"
        )
    if result["label_mismatches"]:
        problems.append(f"{len(result['label_mismatches'])} photos get another label when served")
    return problems


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=REPO_ROOT / "runs" / "latest")
    parser.add_argument("--archive", type=Path, default=REPO_ROOT / "model_store" / "smoke.mar")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run_dir = args.run.resolve()
    if not args.archive.is_file():
        logger.error("%s not found; build it with make archive RUN=%s", args.archive, args.run)
        return 1
    try:
        result = compare(run_dir, args.archive.resolve())
    except (CheckError, ArchiveError, ServerError) as error:
        logger.error("%s", error)
        return 1
    problems = verdict(result)
    result["passed"] = not problems
    (run_dir / "served_check.json").write_text(json.dumps(result, indent=2) + "\n")
    for problem in problems:
        logger.error("%s", problem)
    print(
        f"{'PASS' if not problems else 'FAIL'}: {result['photos']} photos served, largest "
        f"probability difference {result['max_abs_difference']:.2e}, "
        f"{len(result['label_mismatches'])} label mismatches ({run_dir / 'served_check.json'})"
    )
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
