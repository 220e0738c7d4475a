"""Every stage, for real, on a tiny configuration, through the CLI and make in subprocesses.

The data are real: the first 48 renders of the embedded Fluent Emoji 3D set (fetched with
`npm pack` from the npm registry, which this machine reaches). Sizes are tiny (32 px, a narrow
DCGAN, a few hundred images of training, 40 generated PNGs) so the whole file runs in minutes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from PIL import Image
from tiny_project import CLI_ENV, REPO, TINY, checkpoints, cli, summary

from pipeline.core.faults import KILL_ENV, POINTS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A project folder that has run every stage up to the submission once."""
    root = tmp_path_factory.mktemp("project")
    (root / "params.yaml").write_text(TINY)
    first = cli(root, "run", "package")
    lines = summary(first)
    assert list(lines) == ["fetch", "crop", "pad", "augment", "train", "generate", "package"]
    assert not any(v == "cached" for v in lines.values())
    (root / "straight.sha256").write_text(_zip_digest(root))  # before other tests change it
    return root


def test_submission_is_valid(project):
    zip_path = project / "submissions" / "images.zip"
    with zipfile.ZipFile(zip_path) as archive:
        names = archive.namelist()
        assert len(names) == 40 and len(set(names)) == 40
        assert all(n.endswith(".png") and "/" not in n for n in names)
        assert all(i.compress_type == zipfile.ZIP_STORED for i in archive.infolist())
        from PIL import Image

        with archive.open(names[0]) as handle, Image.open(handle) as image:
            assert image.size == (32, 32) and image.mode == "RGB"
    validation = json.loads((project / "submissions" / "validation.json").read_text())
    assert validation["count"] == 40 and validation["problems"] == []


def test_every_stage_left_its_outputs(project):
    assert len(list((project / "data/raw/files").rglob("*.webp"))) == 48
    assert (project / "data/crop/decisions.csv").exists()
    clean = sorted((project / "data/clean").glob("*.png"))
    assert 40 <= len(clean) <= 48
    assert (project / "data/pack/images.npy").exists()
    assert (project / "data/train/generator/generator.pt").exists()
    assert len(list((project / "data/generated").glob("*.png"))) == 40
    logs = sorted((project / "data/logs").glob("*-package.log"))
    log = logs[0].read_text() if logs else ""
    assert "package: images.zip: 40 PNGs" in log
    assert "package: published submissions/images.zip" in log
    for stage_dir in ("raw", "crop", "clean", "pack", "train", "generated", "package"):
        manifest = json.loads((project / "data" / stage_dir / "manifest.json").read_text())
        assert len(manifest["fingerprint"]) == 64


def test_rerun_with_nothing_changed_is_all_cached(project):
    start = time.perf_counter()
    lines = summary(cli(project, "run", "package"))
    assert set(lines.values()) == {"cached"} and len(lines) == 7
    assert time.perf_counter() - start < 60


# A script a notebook would run: torch only. It must never import the pipeline.
LOAD_EXPORT = """
import json, sys
import numpy as np, torch
from PIL import Image
folder, generated = sys.argv[1], sys.argv[2]
info = json.load(open(folder + "/export.json"))
module = torch.jit.load(folder + "/generator.torchscript.pt")
seeds = range(8)
z = torch.stack([torch.randn(info["nz"], generator=torch.Generator().manual_seed(i))
                 for i in seeds])
pixels = module(z).numpy()
pngs = np.stack([np.asarray(Image.open(f"{generated}/{i:05d}.png").convert("RGB"))
                 for i in seeds])
assert pixels.dtype == np.uint8 and pixels.shape == pngs.shape, (pixels.shape, pngs.shape)
assert "pipeline" not in sys.modules
print(int((pixels != pngs).sum()), pixels.size)
"""


def test_export_interpolate_runs_submissions_and_the_score_extras(project, tmp_path):
    """What a contestant does after a run: score it, export the generator, make a latent walk,
    list the runs and the kept submissions. Each through the CLI, in subprocesses."""
    cli(project, "run", "score")
    score = json.loads((project / "data/score/score.json").read_text())
    # MiFID's pairs for the report's nearest-neighbour sheet: real files, closest first.
    pairs = score["nearest"]
    assert len(pairs) == 16 and all(Path(p["generated"]).is_file() and Path(p["reference"])
                                    .is_file() for p in pairs)
    assert [p["distance"] for p in pairs] == sorted(p["distance"] for p in pairs)
    # IS needs the classifier, which the converted offline weights do not carry: said plainly.
    if score["weights_source"].startswith("fid-helper"):
        assert score["inception_score"] is None
        assert any("carry no classifier" in w for w in score["warnings"])
    else:
        assert score["inception_score"] >= 1
    # history.csv: the run behind the row and its settings changed from the defaults.
    import pandas as pd

    row = pd.read_csv(project / "data/score/history.csv").iloc[-1]
    run = (project / "data/train/run_dir.txt").read_text().strip()
    assert row["run"] == Path(run).name
    assert row["settings"] == "amp=off; batch_size=16; width=0.125"

    params = ["--root", str(project), "--params", str(project / "params.yaml")]
    exported = cli(project, "export", *params, "--quiet")
    assert "generator.torchscript.pt" in exported.stdout
    # A fresh interpreter that never imports the pipeline draws generate's very images.
    (tmp_path / "load.py").write_text(LOAD_EXPORT)
    loaded = subprocess.run([sys.executable, str(tmp_path / "load.py"),
                             str(project / "data/export"), str(project / "data/generated")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert loaded.returncode == 0, loaded.stderr
    differing, total = map(int, loaded.stdout.split())
    assert differing == 0, f"{differing} of {total} pixel values differ"

    walk = cli(project, "interpolate", *params, "--quiet", "--cells", "4", "--keyframes", "2",
               "--steps", "3")
    assert "6 frames" in walk.stdout
    with Image.open(project / "data/export/interpolation.gif") as gif:
        assert gif.n_frames == 6 and gif.info.get("loop") == 0
        assert gif.size == (2 * 32 + 3 * 2, 2 * 32 + 3 * 2)  # 2x2 tiles of 32 px, 2-px gutters

    runs = cli(project, "runs", *params).stdout
    assert f"* {Path(run).name}" in runs and "0.4 kimg" in runs
    kept = cli(project, "submissions", *params).stdout
    assert "1 kept submission(s)" in kept and f"local FID {score['fid']:.2f}" in kept


def test_rerun_sets(project):
    # train.seed: train, generate and package rerun; nothing upstream.
    lines = summary(cli(project, "run", "package", "--set", "train.seed=1"))
    assert [n for n, v in lines.items() if v != "cached"] == ["train", "generate", "package"]
    # score.batch_size: only score reruns (the first score run is the one after it).
    cli(project, "run", "score", "--set", "train.seed=1")
    lines = summary(cli(project, "run", "score", "--set", "train.seed=1",
                        "--set", "score.batch_size=8"))
    assert [n for n, v in lines.items() if v != "cached"] == ["score"]
    score = json.loads((project / "data/score/score.json").read_text())
    for key in ("fid", "n_generated", "n_reference", "weights_sha256", "weights_path",
                "generated_dir", "reference_dir"):
        assert key in score
    assert score["n_generated"] == 40 and score["fid"] > 0
    # pad.size: pad and everything after it.
    lines = summary(cli(project, "run", "package", "--set", "train.seed=1", "--set", "pad.size=64"))
    assert [n for n, v in lines.items() if v != "cached"] == [
        "pad", "augment", "train", "generate", "package"]
    status = cli(project, "status", "--set", "train.seed=1").stdout
    assert "pad.size 64 -> 32" in status


def test_training_below_the_delivery_size(project):
    """augment.size 32 under pad.size 64: the pack and G are 32 px, the PNGs 64 px, and only
    augment and what follows it rerun."""
    cli(project, "run", "package", "--set", "train.seed=1", "--set", "pad.size=64")
    lines = summary(cli(project, "run", "package", "--set", "train.seed=1", "--set", "pad.size=64",
                        "--set", "augment.size=32"))
    assert [n for n, v in lines.items() if v != "cached"] == [
        "augment", "train", "generate", "package"]
    assert "at 32 px" in lines["augment"]
    assert json.loads((project / "data/pack/pack.json").read_text())["size"] == 32
    spec = json.loads((project / "data/train/generator/generator.json").read_text())
    assert (spec["size"], spec["output_size"]) == (32, 64)
    with zipfile.ZipFile(project / "submissions/images.zip") as archive:
        first = sorted(archive.namelist())[0]
        with archive.open(first) as handle:
            assert Image.open(handle).size == (64, 64)
    bad = cli(project, "run", "augment", "--set", "augment.size=128", "--set", "pad.size=64",
              check=False)
    assert bad.returncode != 0 and "augment.size" in bad.stderr and "pad.size" in bad.stderr


def test_training_on_a_band_above_the_delivery_size(project):
    """pad.size 28 with augment.size 32 (Fashion-MNIST's side; fastgan starts at 32): the pack
    and G are 32 px with the 28-px image centred on the band, and the zip holds 28-px PNGs,
    G's centre crop; a band of twice pad.size or more is refused."""
    settings = ("--set", "train.seed=1", "--set", "pad.size=28", "--set", "augment.size=32",
                "--set", "augment.grey=true", "--set", "train.model=fastgan",
                "--set", "train.loss=hinge", "--set", "package.mode=L")
    lines = summary(cli(project, "run", "package", *settings))
    assert "at 32 px" in lines["augment"]
    assert json.loads((project / "data/pack/pack.json").read_text())["size"] == 32
    spec = json.loads((project / "data/train/generator/generator.json").read_text())
    assert (spec["name"], spec["size"], spec["output_size"]) == ("fastgan", 32, 28)
    with zipfile.ZipFile(project / "submissions/images.zip") as archive:
        first = sorted(archive.namelist())[0]
        with archive.open(first) as handle, Image.open(handle) as image:
            assert (image.size, image.mode) == ((28, 28), "L")
    bad = cli(project, "run", "augment", "--set", "pad.size=28", "--set", "augment.size=64",
              check=False)
    assert bad.returncode != 0 and "augment.size" in bad.stderr and "twice" in bad.stderr


def _mount_tmpfs(folder: Path, size: str) -> str:
    """'' once a tmpfs of `size` is mounted at `folder`, else why it cannot be (a skip reason)."""
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    return "" if done.returncode == 0 else f"cannot mount a tmpfs here: {done.stderr.strip()}"


def test_a_full_disk_is_one_line_and_exit_28(project, tmp_path):
    """The project on a small tmpfs, filled up to the pack's size: augment (whose pack is a
    preallocated memory map, a bus error before) exits 28 with one line, publishes nothing,
    and the same command succeeds once space is freed."""
    mount = tmp_path / "small"
    reason = _mount_tmpfs(mount, "16m")
    if reason:
        pytest.skip(reason)
    try:
        root = mount / "project"
        root.mkdir()
        (root / "params.yaml").write_text(TINY)
        shutil.copytree(project / "data/raw", root / "data/raw")
        cli(root, "run", "pad")
        filler = root / "filler.bin"
        free = shutil.disk_usage(mount).free
        with filler.open("wb") as handle:  # leave 64 KiB: the pack needs ~300 KiB
            handle.truncate(0)
            os.posix_fallocate(handle.fileno(), 0, free - (64 << 10))
        full = cli(root, "run", "augment", check=False)
        assert full.returncode == 28, full.stdout + full.stderr
        errors = [line for line in full.stderr.splitlines() if line.strip()]
        assert len(errors) == 1 and errors[0].startswith("error: no disk space left"), errors
        assert "Traceback" not in full.stderr and "Bus error" not in full.stderr
        assert not (root / "data/pack").exists()  # nothing published as done
        filler.unlink()
        again = summary(cli(root, "run", "augment"))
        assert again["augment"] != "cached" and (root / "data/pack/images.npy").is_file()
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _zip_digest(root: Path) -> str:
    return hashlib.sha256((root / "submissions/images.zip").read_bytes()).hexdigest()


def _run_and_kill_when(root: Path, ready, *settings: str) -> bool:
    """Start `run package`; SIGKILL its whole process group the moment `ready()` holds.
    False when the run ended first (the moment was too short to catch)."""
    command = [sys.executable, "-m", "pipeline", "run", "package", "--root", str(root),
               "--params", str(root / "params.yaml"), "--quiet"]
    for setting in settings:
        command += ["--set", setting]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True,
                               env={**os.environ, **CLI_ENV})
    deadline = time.time() + 600
    while process.poll() is None and time.time() < deadline:
        if ready():
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return True
        time.sleep(0.01)
    process.wait()
    return False


def _partial_files(root: Path, stage_folder: str, pattern: str = "*") -> int:
    """Files matching `pattern` anywhere inside the stage's in-progress folder."""
    partials = (root / "data").glob(f".{stage_folder}.partial-*")
    return sum(1 for p in partials for f in p.rglob(pattern) if f.is_file())


def _killed_at(root: Path, point: str) -> None:
    """`run package` with PIPELINE_KILL_AT=point: the process SIGKILLs itself right there
    (pipeline/core/faults.py), a moment too short to hit by timing from outside."""
    command = [sys.executable, "-m", "pipeline", "run", "package", "--root", str(root),
               "--params", str(root / "params.yaml"), "--quiet"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **CLI_ENV, KILL_ENV: point})
    assert done.returncode == -signal.SIGKILL, (point, done.returncode, done.stderr[-2000:])


def test_kill_sweep_then_the_same_zip_as_a_straight_run(project, tmp_path):
    """SIGKILL inside fetch, crop, pad and augment, between training checkpoints, between the
    two renames of a swap, inside generate and while the zip is validated, and a train.minutes
    stop; after each kill the stage counts as not done and no half output is published, and
    the last rerun gives byte for byte the zip of the uninterrupted run (the `project`
    fixture's)."""
    root = tmp_path
    (root / "params.yaml").write_text(TINY)
    killed = []
    _killed_at(root, "fetch:files-written")
    assert not (root / "data/raw").exists() and _partial_files(root, "raw") > 0  # .webp
    if _run_and_kill_when(root, lambda: _partial_files(root, "crop", "*.png") >= 5):
        killed.append("crop")
        assert not (root / "data/crop/manifest.json").exists()
    for point, folder in (("pad:first-image", "clean"), ("augment:first-image", "pack")):
        _killed_at(root, point)
        assert not (root / "data" / folder).exists(), point
    # A time budget spent after the first step: train is published short ...
    stopped = summary(cli(root, "run", "package", "--set", "train.minutes=0.0001"))
    assert "stopped by train.minutes" in stopped["train"]
    # ... and the next run continues it; killed once it has written a checkpoint of its own.
    before = checkpoints(root)
    if _run_and_kill_when(root, lambda: bool(checkpoints(root) - before)):
        killed.append("train")
        manifest = json.loads((root / "data/train/manifest.json").read_text())
        assert manifest["counts"]["kimg"] < 0.4  # still the short run's: the kill published nothing
    # Training finishes, then dies between moving the short run's folder aside and renaming the
    # new one in: no data/train at all (never a mix); the next swap clears the aside copy.
    _killed_at(root, "swap:between-renames")
    assert not (root / "data/train").exists() and (root / "data/.train.old").is_dir()
    published = (root / "data/generated/manifest.json").read_text()  # the short run's images
    if _run_and_kill_when(root, lambda: _partial_files(root, "generated", "*.png") >= 10):
        killed.append("generate")
        assert (root / "data/generated/manifest.json").read_text() == published
    short_zip = _zip_digest(root)
    _killed_at(root, "package:validating")
    assert _zip_digest(root) == short_zip  # the short run's submission, untouched
    killed_at = ("fetch:files-written", "pad:first-image", "augment:first-image",
                 "swap:between-renames", "package:validating")
    assert set(killed_at) == set(POINTS)  # every kill point the code declares is swept here
    assert {"crop", "train", "generate"} <= set(killed), killed
    summary(cli(root, "run", "package"))
    assert _zip_digest(root) == (project / "straight.sha256").read_text()
    leftovers = [p.name for p in (root / "data").iterdir()
                 if ".partial-" in p.name or p.name.endswith(".old")]
    assert leftovers == []


def test_make_targets_and_help(project):
    """The make targets in kernel mode (ENV=system): the test environment's own interpreter and
    packages, as in a Kaggle or Colab notebook; no .venv is built or used."""
    help_text = subprocess.run(["make", "help"], cwd=REPO, capture_output=True, text=True).stdout
    for target in ("all", "fid", "test", "status", "train", "bench", "clean", "runs",
                   "submissions", "export", "interpolate", "check-env"):
        assert f" {target} " in help_text or f"{target} " in help_text
    command = ["make", "package", "ENV=system", f"PYTHON={sys.executable}",
               "VENV=/nonexistent-venv", f"PARAMS={project / 'params.yaml'}",
               f"ARGS=--root {project} --quiet", "SET=train.seed=2 generate.count=40"]
    first = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "train: " in first.stdout and "train: cached" not in first.stdout  # SET reached it
    second = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert "train: cached" in second.stdout and "package: cached" in second.stdout


@pytest.mark.parametrize("value, shown", [
    ("train.seed=$5", "'train.seed' is '$5'"),
    ("train.seed=1`touch${{IFS}}{marker}`", "'train.seed' is '1`touch${IFS}"),
    ("train.seed=$(touch${{IFS}}{marker})", "'train.seed' is '$(touch${IFS}"),
    ('train.seed="1', """--set 'train.seed="1': value is not valid YAML"""),
])
def test_make_passes_set_without_a_shell(project, tmp_path, value, shown):
    """SET reaches the CLI as typed: nothing in it runs, `$5` does not vanish."""
    marker = tmp_path / "ran"
    command = ["make", "status", f"PARAMS={project / 'params.yaml'}", f"ARGS=--root {project}",
               "SET=" + value.format(marker=marker)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and shown in result.stderr
    assert not marker.exists()


def test_config_errors_are_one_clear_sentence(project):
    result = cli(project, "run", "train", "--set", "train.loss=wasserstein", check=False)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "'train.loss' is 'wasserstein'" in result.stderr and "'ralsgan'" in result.stderr
