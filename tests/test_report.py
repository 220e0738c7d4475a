"""The report, opened in a real browser: every picture loads and every section is there.

A tiny project runs every stage for real (48 Fluent Emoji renders, two dropped by a reject
list and two by pad's aspect limit, so rejections have pictures too). Headless Chromium then
loads data/report/index.html from disk; the page's own load handler marks each <img> loaded
or not, and the DOM it dumps is what we check. A screenshot goes to the test's folder and to
bench/out/report.png for a person to look at.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.scoring.history import append_history

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("stages", "dataset", "training", "samples", "score", "history")

# Every stage, small: 1.2 kimg in ticks of 0.2 gives six stats lines, two fakes grids and two
# snapshot evaluations.
TINY = """\
fetch:
  source: builtin:fluent-emoji-3d
  limit: 48
crop:
  method: alpha
  reject_list: reject.txt
pad:
  size: 32
  max_aspect: 1.25
train:
  model: dcgan
  width: 0.125
  kimg: 1.2
  tick_kimg: 0.2
  batch_size: 16
  checkpoint_kimg: 0.6
  snapshot_kimg: 0.6
  eval_kimg: 0.6
  eval_n: 20
  threads: 1
generate:
  count: 40
  batch_size: 20
  workers: 1
score:
  n: 40
  batch_size: 20
  workers: 1
"""
REJECT_LIST = "0023-fe0f-20e3.webp\n002a-fe0f-20e3.webp\n"  # the first two renders

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
# Flags that work as root in a container, with nothing reaching the network.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars")


def find_browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def run_browser(binary: str, scratch: Path, *args: str) -> str:
    """Run headless Chromium once, in a fresh profile, and return what it printed."""
    profile = scratch / f"profile-{len(list(scratch.glob('profile-*')))}"
    result = subprocess.run([binary, *FLAGS, f"--user-data-dir={profile}", *args],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


class Tags(HTMLParser):
    """The start tags of a document, as (tag, attributes) in order."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def find(self, tag: str) -> list[dict[str, str]]:
        return [attrs for name, attrs in self.tags if name == tag]


def parse(markup: str) -> Tags:
    tags = Tags()
    tags.feed(markup)
    return tags


def section_text(markup: str, anchor: str) -> str:
    """The markup of one <section id=anchor> (sections do not nest)."""
    start = markup.index(f'<section id="{anchor}">')
    return markup[start:markup.index("</section>", start)]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A project that ran every stage, with two runs in its score history."""
    root = tmp_path_factory.mktemp("report-project")
    (root / "params.yaml").write_text(TINY)
    (root / "reject.txt").write_text(REJECT_LIST)
    command = [sys.executable, "-m", "pipeline", "run", "package", "score", "--root", str(root),
               "--quiet"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={"OMP_NUM_THREADS": "2", **os.environ})  # conftest: 1 under xdist
    assert result.returncode == 0, result.stdout + result.stderr
    # A second row in the history, as a later run with a better FID would leave (scoring twice
    # for real would double the Inception time on CPU; the scorer has its own tests).
    history = root / "data/score/history.csv"
    last = pd.read_csv(history).iloc[-1].to_dict()
    assert isinstance(last["settings"], str) and "width=0.125" in last["settings"]
    append_history(history, history, {**last, "fid": last["fid"] * 0.8}, "f" * 64, run="later",
                   settings=last["settings"].replace("width=0.125", "width=0.25"))
    return root


@pytest.mark.slow
def test_report_in_a_browser(project, tmp_path):
    browser = find_browser()
    if browser is None:
        pytest.skip("no headless browser found: apt-get install chromium (.ci/run does)")
    # Through the CLI, as `make report` calls it: the page's path is what it prints.
    result = subprocess.run([sys.executable, "-m", "pipeline", "report", "--root", str(project),
                             "--quiet"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    page = Path(result.stdout.strip().splitlines()[-1])
    assert page == project / "data/report/index.html"

    # Self-contained: every picture a file beside the page, nothing fetched from elsewhere.
    source = page.read_text(encoding="utf-8")
    written = parse(source)
    sources = [attrs["src"] for attrs in written.find("img")]
    assert len(sources) >= 20 and all((page.parent / src).is_file() for src in sources)
    assert "http://" not in source and "https://" not in source and not written.find("link")

    # What the browser saw once the page loaded.
    dom = run_browser(browser, tmp_path, "--window-size=1280,800", "--dump-dom", page.as_uri())
    seen = parse(dom)
    images = seen.find("img")
    assert len(images) == len(sources)
    assert [i["src"] for i in images if i.get("data-loaded") != "yes"] == []
    body = seen.find("body")[0]
    assert body["data-images-loaded"] == f"{len(images)}/{len(images)}"
    assert [s["id"] for s in seen.find("section")] == list(SECTIONS)

    # Each section shows the real outputs, none a "not run yet" note.
    assert "not run yet" not in dom
    stages = section_text(dom, "stages")
    assert stages.count('class="badge cached"') == 8
    dataset = section_text(dom, "dataset")
    assert "crop: in reject list" in dataset and "pad: aspect" in dataset
    assert "rejected (4)" in dataset and "kept (44)" in dataset
    training = section_text(dom, "training")
    assert 'src="training.png"' in training and training.count("<figcaption>fakes at") == 2
    # The snapshot choice: two evaluations (0.6 and 1.2 kimg), the best named and plotted.
    assert 'src="evaluation.png"' in training and "Best snapshot: <b>" in training
    assert 'src="samples.png"' in section_text(dom, "samples")
    score = section_text(dom, "score")
    assert "FID" in score and "Inception Score" in score
    # The nearest-neighbour sheet: generated images beside their closest training images.
    assert "Nearest neighbours" in score and score.count('src="thumbs/nearest') == 32
    history = section_text(dom, "history")
    assert 'src="history.png"' in history and history.count("<tr>") == 3  # header + 2 runs
    assert "width 0.125 -&gt; 0.25" in history  # which change moved the score

    # A screenshot of the whole page, for the record and for a person to look at.
    height = min(int(body["data-height"]), 12000)
    shot = tmp_path / "report.png"
    run_browser(browser, tmp_path, f"--screenshot={shot}", f"--window-size=1280,{height}",
                page.as_uri())
    with Image.open(shot) as image:
        low, high = image.convert("L").getextrema()
        assert image.size == (1280, height) and high - low > 100  # not a blank page
    (REPO / "bench/out").mkdir(parents=True, exist_ok=True)
    shutil.copy2(shot, REPO / "bench/out/report.png")


def test_report_before_anything_ran(tmp_path):
    """A new project: every section says which make target fills it, nothing fails."""
    result = CliRunner().invoke(app, ["report", "--root", str(tmp_path), "--quiet"])
    assert result.exit_code == 0, result.output
    page = tmp_path / "data/report/index.html"
    assert result.output.strip() == str(page)
    markup = page.read_text(encoding="utf-8")
    for anchor, target in zip(SECTIONS[1:], ("fetch", "train", "generate", "fid", "fid")):
        assert f"not run yet: <code>make {target}</code>" in section_text(markup, anchor)
    assert markup.count('class="badge missing"') == 8 and "<img" not in markup


def test_make_report_target(tmp_path):
    """`make report` calls the CLI command with the params and extra arguments it was given
    (ARGS travels in the environment, not through a shell)."""
    (tmp_path / "p.yaml").write_text("fetch:\n  limit: 3\n")
    done = subprocess.run(["make", "report", f"PARAMS={tmp_path / 'p.yaml'}",
                           f"ARGS=--root {tmp_path} --quiet"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == str(tmp_path / "data/report/index.html")
    help_text = subprocess.run(["make", "help"], cwd=REPO, capture_output=True, text=True).stdout
    assert "report" in help_text
