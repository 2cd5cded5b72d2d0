"""The seed sweep's command line and its aggregate figures."""

from __future__ import annotations

import pytest

from training.sweep import aggregate, parse_args


@pytest.mark.parametrize(
    "argv",
    [
        ["--config", "real", "--seeds", "0", "1", "data.root=photos", "train.epochs=2"],
        ["--config", "real", "data.root=photos", "train.epochs=2", "--seeds", "0", "1"],
    ],
)
def test_overrides_may_follow_or_precede_the_seeds(argv: list[str]) -> None:
    args = parse_args(argv)
    assert args.seeds == [0, 1]
    assert args.overrides == ["data.root=photos", "train.epochs=2"]


@pytest.mark.parametrize("seeds", [["0", "x"], ["1", "1"], ["-1"]])
def test_bad_seeds_stop_with_a_usage_error(seeds: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stopped:
        parse_args(["--config", "real", "--seeds", *seeds])
    assert stopped.value.code == 2
    assert "--seeds must be distinct non-negative integers" in capsys.readouterr().err


def test_aggregate_gives_mean_sample_spread_and_range() -> None:
    runs = [{"val_accuracy": 0.9}, {"val_accuracy": 0.94}, {"val_accuracy": 0.95, "seconds": 3.0}]
    stats = aggregate(runs)
    assert stats["val_accuracy"]["mean"] == pytest.approx(0.93)
    assert stats["val_accuracy"]["std"] == pytest.approx(0.026458, abs=1e-6)
    assert (stats["val_accuracy"]["min"], stats["val_accuracy"]["max"]) == (0.9, 0.95)
    assert stats["seconds"] == {"mean": 3.0, "std": 0.0, "min": 3.0, "max": 3.0}
