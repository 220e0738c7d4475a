"""Shared test set-up.

`make test` runs the suite on two pytest-xdist workers, a whole file each at a time (`--dist
loadfile`, so a file's module fixtures, such as a tiny project through `make all`, are built
once): about half of a one-process run was one core waiting on the other (interpreters
starting, PNGs encoding, a CLI subprocess importing torch). Each worker's torch uses one thread,
and so do the CLI runs its tests start, so two workers never ask two cores for four threads.
"""
import os

import pytest

# Tests that call `make` play a user at a shell. When the suite itself runs under `make test`,
# these variables would make every nested make announce "Entering/Leaving directory" on stdout,
# so the child would not print what a user sees.
for name in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS"):
    os.environ.pop(name, None)

# Before torch is imported anywhere: one thread for this worker and the processes it starts.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"

# The longest files (minutes each) start first, so the two workers finish close together. The
# Makefile passes --no-loadscope-reorder: xdist would otherwise hand out files by their number of
# tests, and a one-test file of two minutes would start last.
LONG_FILES = ("test_end_to_end.py", "test_bench.py", "test_torchrun_make.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests of LONG_FILES first, in their order; every file keeps its own order."""
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONG_FILES.index(name) if name in LONG_FILES else len(LONG_FILES)

    items.sort(key=rank)  # stable
