"""Shared test set-up."""
import os

# Tests that call `make` play a user at a shell. When the suite itself runs under `make test`,
# these variables would make every nested make announce "Entering/Leaving directory" on stdout,
# so the child would not print what a user sees.
for name in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS"):
    os.environ.pop(name, None)
