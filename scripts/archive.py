"""Packages a trained run as the TorchServe model archive `model_store/smoke.mar`.

    python -m scripts.archive --run runs/latest [--out model_store] [--name smoke]

The archive holds the run's TorchScript model (`export/model.pt`), `index_to_name.json`,
`preprocess.json`, our handler `handler/smoke_handler.py` with the `handler` package it imports
(`preprocessing.py`, `torchscript.py`, `worker_process.py`), and the model config
`handler/model_config.yaml`. Its version is the `model_version` of `preprocess.json`. An
existing archive of the same name is replaced. It does not train or export: `make train` does that.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from handler.preprocessing import PreprocessSpec

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
HANDLER_DIR = REPO_ROOT / "handler"
HANDLER_FILE = HANDLER_DIR / "smoke_handler.py"
MODEL_CONFIG = HANDLER_DIR / "model_config.yaml"
# The part of the `handler` package that the handler imports inside the worker.
HANDLER_PACKAGE_FILES = ("__init__.py", "preprocessing.py", "torchscript.py", "worker_process.py")
EXPORT_FILES = ("model.pt", "index_to_name.json", "preprocess.json")


class ArchiveError(RuntimeError):
    """The inputs of the archive are missing or the archiver failed; the message says why."""


def find_export(run_dir: Path) -> Path:
    """Returns `run_dir/export` after checking that it holds every exported file.

    Raises:
        ArchiveError: the run, its export folder or one of its files is missing.
    """
    if not run_dir.exists():
        raise ArchiveError(
            f"run folder {run_dir} does not exist; train a model first (make train) or name an "
            "existing run with --run runs/<run>"
        )
    export_dir = run_dir / "export"
    if not export_dir.is_dir():
        raise ArchiveError(
            f"{run_dir} has no export/ folder, so its training did not finish; train again "
            "(make train) or name another run with --run runs/<run>"
        )
    missing = [name for name in EXPORT_FILES if not (export_dir / name).is_file()]
    if missing:
        raise ArchiveError(
            f"{export_dir} lacks {', '.join(missing)}; the export is incomplete, train and "
            "export again (make train)"
        )
    return export_dir


def build_archive(
    export_dir: Path,
    out_dir: Path,
    name: str = "smoke",
    model_config: Path = MODEL_CONFIG,
) -> Path:
    """Builds `out_dir/<name>.mar` from an export folder with torch-model-archiver.

    Args:
        export_dir: holds model.pt, index_to_name.json and preprocess.json.
        out_dir: the model store; created if needed.
        name: the model name, which is also the archive's file name.
        model_config: the TorchServe model config to package.

    Returns:
        The path of the archive.

    Raises:
        ArchiveError: an input is missing or torch-model-archiver failed.
    """
    for path in (HANDLER_FILE, model_config, *(HANDLER_DIR / f for f in HANDLER_PACKAGE_FILES)):
        if not path.is_file():
            raise ArchiveError(f"{path} is missing; the checkout is incomplete")
    try:
        spec = PreprocessSpec.load(export_dir / "preprocess.json")
    except (OSError, ValueError) as error:
        raise ArchiveError(
            f"{export_dir / 'preprocess.json'} is unreadable ({error}); export the run again"
        ) from error
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="smoke-archive-") as scratch:
        package_dir = stage_handler_package(Path(scratch) / "package")
        command = [
            sys.executable,
            "-m",
            "model_archiver.model_packaging",
            "--model-name",
            name,
            "--version",
            spec.model_version,
            "--serialized-file",
            str(export_dir / "model.pt"),
            "--handler",
            str(HANDLER_FILE),
            "--extra-files",
            ",".join(
                [
                    str(export_dir / "index_to_name.json"),
                    str(export_dir / "preprocess.json"),
                    str(package_dir),
                ]
            ),
            "--config-file",
            str(model_config),
            "--export-path",
            str(out_dir),
            "--force",
        ]
        # The archiver stages files in $TMPDIR/<name> and deletes that folder first, so two
        # archives built at once would overwrite each other: give this one a private TMPDIR.
        environment = {**os.environ, "TMPDIR": scratch}
        result = subprocess.run(command, env=environment, capture_output=True, text=True)
    if result.returncode != 0:
        raise ArchiveError(
            f"torch-model-archiver failed with exit code {result.returncode}:\n"
            f"{result.stderr.strip() or result.stdout.strip()}"
        )
    archive = out_dir / f"{name}.mar"
    logger.info(
        "Archived %s version %s from %s (%.1f MB)",
        name,
        spec.model_version,
        export_dir,
        archive.stat().st_size / 1e6,
    )
    return archive


def stage_handler_package(package_dir: Path) -> Path:
    """Copies the handler package into `package_dir/handler/` and returns `package_dir`.

    torch-model-archiver copies the contents of a folder named in --extra-files, so this
    folder's `handler/` lands at the top of the archive, where the worker imports it from.
    """
    target = package_dir / "handler"
    target.mkdir(parents=True)
    for name in HANDLER_PACKAGE_FILES:
        shutil.copy2(HANDLER_DIR / name, target / name)
    return package_dir


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/latest"), help="run folder")
    parser.add_argument("--out", type=Path, default=Path("model_store"), help="model store")
    parser.add_argument("--name", default="smoke", help="model name and archive file name")
    parser.add_argument(
        "--model-config", type=Path, default=MODEL_CONFIG, help="TorchServe model config"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        export_dir = find_export(args.run)
        archive = build_archive(export_dir, args.out, args.name, args.model_config)
    except ArchiveError as error:
        logger.error("%s", error)
        return 1
    print(archive)
    return 0


if __name__ == "__main__":
    sys.exit(main())
