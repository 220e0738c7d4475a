#!/bin/bash
# The default pipeline as a new user runs it, timed: `make all` then `make fid` in a fresh folder
# made from one commit. Usage, from the repository root, on a quiet machine:
#     bash bench/default_run.sh <commit> <folder> [python]
# <python> defaults to .venv/bin/python: its packages are used as installed (ENV=system), so no
# install step is timed. The npm download cache is copied in, so npm is not timed either.
set -euo pipefail
COMMIT=$1; DIR=$2; PY=${3:-$(pwd)/.venv/bin/python}
REPO=$(pwd)
rm -rf "$DIR" && mkdir -p "$DIR" && git archive "$COMMIT" | tar -x -C "$DIR"
mkdir -p "$DIR/data" && { cp -r "$REPO/data/downloads" "$DIR/data/" 2>/dev/null || true; }
cd "$DIR"
lscpu | grep "Model name" > timing.txt
for target in all fid; do
  start=$(date +%s.%N)
  make "$target" ENV=system PYTHON="$PY" > "$target.log" 2>&1
  echo "make $target: $(echo "$(date +%s.%N) - $start" | bc) s" >> timing.txt
done
cat timing.txt
