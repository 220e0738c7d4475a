"""The pad stage end to end: decisions for every file, square RGB outputs, duplicates removed."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.core.config import CropConfig, PadConfig
from pipeline.ingest.crop import crop_images
from pipeline.ingest.decisions import consolidate_decisions, read_decisions, write_decisions
from pipeline.ingest.pad import pad_images

RED = (255, 0, 0)


def photo(seed: int, width: int, height: int) -> np.ndarray:
    """A smooth random picture with some fine noise (stands in for a photo)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    image = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC))
    return np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)


def make_folder(root: Path) -> list[Path]:
    """A crop-like folder with good, bad, odd and duplicated pictures."""
    root.mkdir()
    red = np.zeros((100, 200, 3), np.uint8)
    red[:] = RED
    Image.fromarray(red).save(root / "a red.png")
    Image.fromarray(photo(1, 300, 240)).save(root / "b photo.png")
    Image.fromarray(photo(1, 300, 240)).save(root / "c exact copy.png")
    Image.fromarray(photo(1, 300, 240)).save(root / "d recompressed.jpg", quality=75)
    Image.fromarray(photo(2, 240, 300)).save(root / "xe máy đỏ 01.jpg")
    cutout = np.zeros((64, 64, 4), np.uint8)
    cutout[16:48, 16:48] = (*RED, 255)
    Image.fromarray(cutout).save(root / "e cutout.png")
    Image.fromarray(photo(3, 10, 12)).save(root / "f tiny.png")
    Image.fromarray(photo(4, 710, 100)).save(root / "g banner.png")
    data = (root / "b photo.png").read_bytes()
    (root / "h truncated.png").write_bytes(data[: len(data) // 3])
    (root / "i page.png").write_text("<html><body>Not found</body></html>")
    return sorted(root.iterdir())


@pytest.mark.parametrize("workers", [1, 2])
def test_pad_images_end_to_end(tmp_path, workers):
    files = make_folder(tmp_path / "crops")
    out = tmp_path / "clean"
    cfg = PadConfig(size=64, background=(0, 0, 255), workers=workers)
    rows = pad_images(files, tmp_path / "crops", out, cfg, quiet=True)
    reasons = {r.file: r.reason for r in rows}
    assert [r.file for r in rows] == sorted(f.name for f in files)  # one row per file, sorted
    assert reasons["c exact copy.png"] == "duplicate of b photo.png"
    assert reasons["d recompressed.jpg"] == "duplicate of b photo.png"
    assert reasons["f tiny.png"] == "tiny: 10x12 < 16"
    assert reasons["g banner.png"] == "aspect: 7.1 > 5"
    assert reasons["h truncated.png"].startswith("corrupt")
    assert reasons["i page.png"] == "not an image: HTML page"
    kept = sorted(r.file for r in rows if r.decision == "kept")
    assert kept == ["a red.png", "b photo.png", "e cutout.png", "xe máy đỏ 01.jpg"]
    # Exactly the kept pictures are on disk, as size x size RGB PNGs named after their stem.
    assert sorted(p.name for p in out.iterdir()) == sorted(Path(k).stem + ".png" for k in kept)
    for path in out.iterdir():
        with Image.open(path) as im:
            assert (im.format, im.mode, im.size) == ("PNG", "RGB", (64, 64))
    red = np.asarray(Image.open(out / "a red.png"))
    assert tuple(red[0, 0]) == (0, 0, 255) and tuple(red[32, 32]) == RED  # letterbox on blue
    assert np.flatnonzero(np.all(red == RED, axis=2).all(axis=1)).tolist() == list(range(16, 48))
    cut = np.asarray(Image.open(out / "e cutout.png"))
    assert tuple(cut[2, 2]) == (0, 0, 255) and tuple(cut[32, 32]) == RED  # alpha on background


def test_pad_without_dedupe_and_other_modes(tmp_path):
    files = make_folder(tmp_path / "crops")
    base = PadConfig(size=32, dedupe=False, workers=1)
    for mode in ("resize", "center-crop"):
        out = tmp_path / mode
        rows = pad_images(files, tmp_path / "crops", out, replace(base, mode=mode), quiet=True)
        kept = [r.file for r in rows if r.decision == "kept"]
        assert len(kept) == 6 and len(list(out.iterdir())) == 6  # duplicates stay
        red = np.asarray(Image.open(out / "a red.png"))
        assert red.shape == (32, 32, 3) and np.all(red == RED)  # no background band at all


def test_pad_rejects_bombs_by_config(tmp_path):
    root = tmp_path / "crops"
    root.mkdir()
    Image.fromarray(photo(5, 200, 200)).save(root / "big.png")
    rows = pad_images([root / "big.png"], root, tmp_path / "out", PadConfig(max_pixels=10_000),
                      quiet=True)
    assert rows[0].reason == "bomb: 200x200 = 40,000 px > 10,000"
    assert not list((tmp_path / "out").iterdir())


def test_ingest_record_names_source_files_and_outputs(tmp_path):
    """ingest.csv: one row per source file, by its source path; `output` names its clean PNG."""
    source = tmp_path / "raw"
    (source / "bikes").mkdir(parents=True)
    Image.fromarray(photo(1, 60, 40)).save(source / "bikes" / "red 01.png")
    Image.fromarray(photo(1, 60, 40)).save(source / "bikes" / "red 02.png")  # exact copy
    Image.fromarray(photo(2, 40, 60)).save(source / "blue.jpg", quality=95)
    Image.fromarray(photo(3, 10, 12)).save(source / "tiny.png")
    (source / "page.png").write_text("<html></html>")
    crops, clean = tmp_path / "crops", tmp_path / "clean"
    crop_rows = crop_images(sorted(p for p in source.rglob("*") if p.is_file()), source, crops,
                            CropConfig(method="none"), 10**8, quiet=True, workers=1)
    assert {r.file: r.output for r in crop_rows} == {  # method none: the files themselves
        "bikes/red 01.png": "bikes__red 01.png", "bikes/red 02.png": "bikes__red 02.png",
        "blue.jpg": "blue.jpg", "page.png": "", "tiny.png": "tiny.png"}
    pad_rows = pad_images(sorted(crops.iterdir()), crops, clean, PadConfig(size=32, workers=1),
                          quiet=True)
    # Through the CSV, as the pad stage reads crop's record
    write_decisions(crop_rows, tmp_path / "decisions.csv")
    ingest = consolidate_decisions(read_decisions(tmp_path / "decisions.csv"), pad_rows)
    record = {row.file: (row.stage, row.decision, row.output) for row in ingest.itertuples()}
    assert record == {
        "bikes/red 01.png": ("pad", "kept", "bikes__red 01.png"),
        "bikes/red 02.png": ("pad", "rejected", ""),
        "blue.jpg": ("pad", "kept", "blue.png"),
        "page.png": ("crop", "rejected", ""),
        "tiny.png": ("pad", "rejected", ""),
    }
    assert sorted(p.name for p in clean.iterdir()) == ["bikes__red 01.png", "blue.png"]


def test_method_none_links_checked_files_unchanged(tmp_path):
    """crop.method none re-encodes nothing: a photo reaches pad as its own JPEG bytes (pad then
    decodes it once, at a reduced scale). Files are still checked: a truncated JPEG is rejected
    with its reason, and the box is the picture as pad sees it, EXIF turn applied."""
    source, crops = tmp_path / "raw", tmp_path / "crops"
    source.mkdir()
    Image.fromarray(photo(4, 90, 60)).save(source / "Beach.JPG", quality=90)
    turned = Image.fromarray(photo(5, 80, 50))
    exif = turned.getexif()
    exif[0x0112] = 6  # stored 80x50, shown turned a quarter: 50x80
    turned.save(source / "turned.jpg", quality=90, exif=exif.tobytes())
    whole = (source / "Beach.JPG").read_bytes()
    (source / "cut.jpg").write_bytes(whole[:len(whole) // 2])  # a download that stopped halfway
    rows = crop_images(sorted(source.iterdir()), source, crops, CropConfig(method="none"), 10**8,
                       quiet=True, workers=1)
    by_file = {row.file: row for row in rows}
    assert by_file["Beach.JPG"].output == "Beach.jpg" and by_file["Beach.JPG"].box == "0 0 90 60"
    assert (crops / "Beach.jpg").read_bytes() == whole
    assert by_file["turned.jpg"].box == "0 0 50 80"
    assert by_file["cut.jpg"].decision == "rejected"
    assert by_file["cut.jpg"].reason.startswith("corrupt: ")
    assert sorted(p.name for p in crops.iterdir()) == ["Beach.jpg", "turned.jpg"]
    pad_rows = pad_images(sorted(crops.iterdir()), crops, tmp_path / "clean",
                          PadConfig(size=32, workers=1), quiet=True)
    assert [(row.file, row.output) for row in pad_rows] == [("Beach.jpg", "Beach.png"),
                                                          ("turned.jpg", "turned.png")]
