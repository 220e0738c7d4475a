"""Named kill points: with PIPELINE_KILL_AT=<name> the process SIGKILLs itself at that point.

Some moments of a run are too short to hit from outside by timing: between the two renames that
swap a finished stage folder into place, while a zip is being validated, just after fetch has
written its files. The kill-sweep test (tests/test_end_to_end.py) names each in turn and checks
that the rerun ends with the same zip as an uninterrupted run. A SIGKILL is what a power cut or
the OOM killer does: no cleanup, no `finally`. Unset, as in every real run, a point costs one
environment lookup.
"""

from __future__ import annotations

import os
import signal

KILL_ENV = "PIPELINE_KILL_AT"
# Every kill_point call in the code; the kill sweep checks that it tries each one.
POINTS = ("fetch:files-written", "pad:first-image", "augment:first-image",
          "swap:between-renames", "package:validating")


def kill_point(name: str) -> None:
    """Die here, now, when $PIPELINE_KILL_AT is `name` (one of POINTS)."""
    if os.environ.get(KILL_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
