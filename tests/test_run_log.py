"""The run log (data/logs): what stages print and the warnings raised while they run."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from pipeline.cli import log_to_file
from pipeline.core.distributed import Dist, print0


def test_warnings_reach_the_run_log(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with log_to_file(tmp_path / "logs", ["augment"]):
        print("augment: 10 training images")
        warnings.warn("rotations leak the background", UserWarning, stacklevel=1)
    (log,) = (tmp_path / "logs").glob("*-augment.log")
    lines = log.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "augment: 10 training images"
    assert lines[1].startswith("warning: rotations leak the background (UserWarning, ")
    assert capsys.readouterr().out.splitlines() == lines  # the terminal sees the same lines
    # Outside the run, warnings are Python's again (stderr, not our format)
    with pytest.warns(UserWarning, match="later"):
        warnings.warn("later", UserWarning, stacklevel=1)


def test_print0_prints_on_rank_zero_to_stdout(capsys: pytest.CaptureFixture) -> None:
    print0(Dist(rank=0, world_size=2), "warning: samples lost diversity")
    print0(Dist(rank=1, world_size=2), "not from rank 1")
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("warning: samples lost diversity\n", "")


def test_progress_bars_leave_their_final_frame_in_the_log(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    """A real tqdm bar on stderr: the terminal gets every redraw, the log one line (the last
    frame, 100%), and lines written to stderr without redraws are kept whole."""
    from tqdm import tqdm

    with log_to_file(tmp_path / "logs", ["crop"]):
        for _ in tqdm(range(50), desc="crop", mininterval=0, miniters=1):
            pass
        import sys

        print("a plain stderr line", file=sys.stderr)
        with tqdm(total=4, desc="left open", mininterval=0) as bar:  # closed: its final frame
            bar.update(4)
    (log,) = (tmp_path / "logs").glob("*-crop.log")
    lines = log.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3 and "\r" not in log.read_text()
    assert lines[0].startswith("crop: 100%") and "50/50" in lines[0]
    assert lines[1] == "a plain stderr line"
    assert lines[2].startswith("left open: 100%") and "4/4" in lines[2]
    assert capsys.readouterr().err.count("\r") > 50  # the terminal saw every frame
