"""The names of the files stages write and other code reads back: one table.

Each name is relative to the writing stage's output folder (the Stage's `output`, shown in the
comments). The stage scripts, the report and the CLI use these constants, so renaming a file
here renames it for every reader. tests/test_layout.py checks that the library's own constants
(runner.MANIFEST, pack.META, the generator's files) agree with this table.
"""

from __future__ import annotations

# Every stage (its output folder): what ran, with which params, fingerprints and counts.
MANIFEST_JSON = "manifest.json"

# fetch (data/raw/)
RAW_FILES_DIR = "files"  # the kept files, the source's layout preserved
FILES_CSV = "files.csv"  # every file met: path, bytes, sha256, kind, why it was ignored

# crop (data/crop/)
CROP_IMAGES_DIR = "images"  # one flat PNG per kept image
DECISIONS_CSV = "decisions.csv"  # one row per image: kept or rejected, and why
CONTACT_SHEET_HTML = "contact_sheet.html"  # thumbnails of the decisions, to review by eye

# pad (data/clean/)
PAD_REPORT_CSV = "report.csv"  # pad's own decisions
INGEST_CSV = "ingest.csv"  # one row per image that entered ingest, with its final decision

# augment (data/pack/)
PACK_JSON = "pack.json"  # size, channels, count and transforms of the training pack

# train (data/train/; the run folder data/runs/<run>/ holds the same stats and options)
GENERATOR_DIR = "generator"  # generator.pt + generator.json of the last step ("last")
BEST_DIR = "best"  # the evaluated snapshot with the lowest KID ("best", generate's default)
EVAL_JSONL = "eval.jsonl"  # one JSON object per snapshot evaluation (kimg, kid, fid)
STATS_JSONL = "stats.jsonl"  # one JSON object per training tick
TRAINING_OPTIONS_JSON = "training_options.json"  # the resolved train config of the run
RUN_DIR_TXT = "run_dir.txt"  # the run folder, relative to the project root

# package (submissions/)
VALIDATION_JSON = "validation.json"  # what the zip holds and the checks it passed

# score (data/score/)
SCORE_JSON = "score.json"  # FID, KID, precision/recall, MiFID, warnings
HISTORY_CSV = "history.csv"  # one row per scored run, carried forward from the previous one

# report (data/report/)
REPORT_HTML = "index.html"  # the page; its pictures sit beside it
