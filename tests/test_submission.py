"""The submission zip: written stored, flat and atomically; validation catches each defect; and
submitting without Kaggle credentials is a UserError, not a traceback."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import textwrap
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.core.errors import UserError
from pipeline.deliver.generate import generate_images
from pipeline.deliver.submission import validate_zip, write_zip
from pipeline.gan.models import ModelSpec, build_generator, save_generator

SIZE = 16  # image side used by the hand-made zips
COUNT = 6
ROOT = Path(__file__).resolve().parents[1]


def _png(size: int = SIZE, mode: str = "RGB", seed: int = 0, fmt: str = "PNG") -> bytes:
    """Encoded random image bytes (PNG unless fmt says otherwise)."""
    rng = np.random.default_rng(seed)
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()


def _good_entries() -> list[tuple[str, bytes]]:
    return [(f"{i:05d}.png", _png(seed=i)) for i in range(COUNT)]


def _zip(path: Path, entries: list[tuple[str, bytes]],
         deflated: tuple[str, ...] = ()) -> Path:
    """Write a zip by hand, deflating the named entries and storing the rest."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate-name case
        with zipfile.ZipFile(path, "w") as archive:
            for name, data in entries:
                method = zipfile.ZIP_DEFLATED if name in deflated else zipfile.ZIP_STORED
                archive.writestr(name, data, compress_type=method)
    return path


def _png_dir(folder: Path, count: int, **image) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (folder / f"{i:05d}.png").write_bytes(_png(seed=i, **image))
    return folder


# ----------------------------------------------------------------------------------------------
# validate_zip


def test_valid_zip_has_no_problems(tmp_path: Path) -> None:
    assert validate_zip(_zip(tmp_path / "ok.zip", _good_entries()), COUNT, SIZE, "RGB") == []


def _defect(name: str) -> tuple[list[tuple[str, bytes]], tuple[str, ...]]:
    """Good entries with one defect applied: (entries, names to deflate)."""
    entries = _good_entries()
    if name == "too few":
        return entries[:-1], ()
    if name == "too many":
        return entries + [("00099.png", _png(seed=99))], ()
    if name == "jpeg renamed":
        entries[2] = (entries[2][0], _png(fmt="JPEG"))
    elif name == "wrong size":
        entries[2] = (entries[2][0], _png(size=SIZE * 2))
    elif name == "grey":
        entries[2] = (entries[2][0], _png(mode="L"))
    elif name == "truncated":
        entries[2] = (entries[2][0], entries[2][1][:60])
    elif name == "folder":
        entries[2] = ("images/" + entries[2][0], entries[2][1])
    elif name == "hidden":
        entries[2] = ("__MACOSX/._00002.png", b"resource fork")
    elif name == "duplicate":
        entries[2] = (entries[1][0], entries[2][1])
    elif name == "not png name":
        entries[2] = ("00002.jpg", entries[2][1])
    elif name == "deflated":
        return entries, (entries[2][0],)
    return entries, ()


@pytest.mark.parametrize("defect, words", [
    ("too few", f"{COUNT - 1} entries, expected exactly {COUNT}"),
    ("too many", f"{COUNT + 1} entries, expected exactly {COUNT}"),
    ("jpeg renamed", "not a PNG"),
    ("wrong size", "wrong size"),
    ("grey", "wrong mode"),
    ("truncated", "does not decode"),
    ("folder", "folder"),
    ("hidden", "hidden or system file"),
    ("duplicate", "duplicate name"),
    ("not png name", "not named .png"),
    ("deflated", "compressed entry"),
])
def test_each_defect_is_reported(tmp_path: Path, defect: str, words: str) -> None:
    entries, deflated = _defect(defect)
    problems = validate_zip(_zip(tmp_path / "bad.zip", entries, deflated), COUNT, SIZE, "RGB")
    assert any(words in p for p in problems), problems


def test_parallel_validation_matches_serial(tmp_path: Path) -> None:
    """Big zips are checked by several processes; the report must not change."""
    count = 600  # above PARALLEL_FROM, so workers=2 really splits the work
    entries = [(f"{i:05d}.png", _png(size=8, seed=i)) for i in range(count)]
    entries[300] = (entries[300][0], _png(size=16))  # wrong size in the middle
    entries[-1] = (entries[0][0], entries[-1][1])  # a duplicate across slices
    path = _zip(tmp_path / "big.zip", entries)
    serial = validate_zip(path, count, 8, "RGB", workers=1)
    assert validate_zip(path, count, 8, "RGB", workers=2) == serial
    assert len(serial) == 2 and "duplicate name" in serial[1]


def test_grey_is_valid_when_grey_is_asked(tmp_path: Path) -> None:
    entries = [(f"{i:05d}.png", _png(mode="L", seed=i)) for i in range(COUNT)]
    assert validate_zip(_zip(tmp_path / "grey.zip", entries), COUNT, SIZE, "L") == []


def test_not_a_zip_is_reported(tmp_path: Path) -> None:
    (tmp_path / "fake.zip").write_bytes(b"not a zip at all")
    assert "not a readable zip" in validate_zip(tmp_path / "fake.zip", COUNT, SIZE, "RGB")[0]


# ----------------------------------------------------------------------------------------------
# write_zip


def test_write_zip_takes_first_by_name_stored_and_flat(tmp_path: Path) -> None:
    pngs = _png_dir(tmp_path / "pngs", COUNT + 3)
    (pngs / ".hidden.png").write_bytes(_png())  # hidden files never enter the zip
    report = write_zip(pngs, tmp_path / "out" / "images.zip", COUNT, SIZE, quiet=True)
    with zipfile.ZipFile(report.path) as archive:
        entries = archive.infolist()
    assert [e.filename for e in entries] == [f"{i:05d}.png" for i in range(COUNT)]
    assert all(e.compress_type == zipfile.ZIP_STORED for e in entries)
    assert report.count == COUNT and report.problems == ()
    assert report.bytes == report.path.stat().st_size
    assert report.sha256 == hashlib.sha256(report.path.read_bytes()).hexdigest()
    assert sorted(os.listdir(report.path.parent)) == ["images.zip"]  # no temporary left


def test_same_pngs_give_the_same_zip_bytes(tmp_path: Path) -> None:
    pngs = _png_dir(tmp_path / "pngs", COUNT)
    first = write_zip(pngs, tmp_path / "a.zip", COUNT, SIZE, quiet=True)
    os.utime(pngs / "00000.png", (0, 0))  # file times must not leak into the zip
    second = write_zip(pngs, tmp_path / "b.zip", COUNT, SIZE, quiet=True)
    assert first.sha256 == second.sha256


def test_too_few_pngs_is_a_user_error(tmp_path: Path) -> None:
    pngs = _png_dir(tmp_path / "pngs", COUNT - 1)
    with pytest.raises(UserError, match=f"holds {COUNT - 1} PNGs"):
        write_zip(pngs, tmp_path / "images.zip", COUNT, SIZE, quiet=True)
    assert not (tmp_path / "images.zip").exists()


def test_invalid_images_leave_no_zip(tmp_path: Path) -> None:
    pngs = _png_dir(tmp_path / "pngs", COUNT, mode="L")  # grey, but the competition wants RGB
    out = tmp_path / "out"
    with pytest.raises(UserError, match="wrong mode"):
        write_zip(pngs, out / "images.zip", COUNT, SIZE, mode="RGB", quiet=True)
    assert os.listdir(out) == []


def test_generated_images_zip_end_to_end(tmp_path: Path) -> None:
    """The real path: a saved generator -> generate -> write_zip -> a valid RGB zip."""
    spec = ModelSpec("dcgan", size=32, channels=3, nz=16, width=0.125)
    torch.manual_seed(0)
    save_generator(build_generator(spec), spec, tmp_path / "g")
    generate_images(tmp_path / "g", tmp_path / "png", 12, batch_size=8, truncation=1.0,
                    workers=1, device="auto", quiet=True)
    report = write_zip(tmp_path / "png", tmp_path / "images.zip", 12, 32, "RGB", quiet=True)
    assert validate_zip(report.path, 12, 32, "RGB") == []


# ----------------------------------------------------------------------------------------------
# submit_to_kaggle


def _submit_in_fresh_process(tmp_path: Path, extra_env: dict[str, str]) -> str:
    """Call submit_to_kaggle in a new process with an empty home; return what it printed.

    A fresh process because the kaggle package reads its config folder when first imported.
    """
    zip_path = _zip(tmp_path / "images.zip", _good_entries())
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    env.update(HOME=str(tmp_path / "home"), KAGGLE_CONFIG_DIR=str(tmp_path / "kaggle"),
               XDG_CONFIG_HOME=str(tmp_path / "xdg"), PYTHONPATH=str(ROOT), **extra_env)
    script = textwrap.dedent(f"""
        from pathlib import Path
        from pipeline.core.errors import UserError
        from pipeline.deliver.submission import submit_to_kaggle
        try:
            submit_to_kaggle(Path({str(zip_path)!r}), "some-competition-xyz", "test")
        except UserError as error:
            print("USER ERROR:", error)
    """)
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_submit_without_credentials_is_a_user_error(tmp_path: Path) -> None:
    printed = _submit_in_fresh_process(tmp_path, {})
    assert printed.startswith("USER ERROR: no Kaggle credentials found"), printed
    assert printed.count("\n") == 1  # one line: the client's help text is swallowed


def test_submit_with_bad_credentials_is_a_user_error(tmp_path: Path) -> None:
    """Offline the upload cannot connect; online Kaggle refuses the made-up key: both are
    one sentence, never a traceback."""
    printed = _submit_in_fresh_process(tmp_path, {"KAGGLE_USERNAME": "nobody",
                                                  "KAGGLE_KEY": "0" * 32})
    assert printed.startswith("USER ERROR: submission to some-competition-xyz failed"), printed
    assert printed.count("\n") == 1
