"""The container image starts the JVM the way `torchserve --start` does on the host."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import REPO_ROOT, read_vmargs


def read_cmd(dockerfile: Path) -> list[str]:
    """The exec form of the Dockerfile's CMD, continuation lines joined."""
    lines = dockerfile.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("CMD ["))
    text = ""
    for line in lines[start:]:
        text += line.rstrip().removesuffix("\\")
        if line.rstrip().endswith("]"):
            break
    return json.loads(text.removeprefix("CMD"))


def test_image_passes_the_jvm_options_of_config_properties() -> None:
    vmargs = read_vmargs(REPO_ROOT / "config.properties")
    command = read_cmd(REPO_ROOT / "Dockerfile")
    assert vmargs, "config.properties sets no vmargs"
    assert command[0] == "java"
    missing = [arg for arg in vmargs if arg not in command]
    assert not missing, f"the Dockerfile's java command lacks {missing} from config.properties"
