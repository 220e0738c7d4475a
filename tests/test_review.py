"""Reject list parsing and application, and the contact sheet's page and thumbnails."""

from __future__ import annotations

import html
import re
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.config import CropConfig
from pipeline.core.errors import UserError
from pipeline.ingest.crop import crop_images
from pipeline.ingest.decisions import kept, rejected
from pipeline.ingest.images import load_image, save_png
from pipeline.ingest.review import (
    apply_reject_list,
    contact_sheet,
    matches,
    read_reject_list,
    unmatched,
)


def test_read_reject_list(tmp_path: Path) -> None:
    path = tmp_path / "reject.txt"
    path.write_text("\ufeff# picked by hand\n\nbikes/red 01.jpg\n  .\\bikes\\blue.png  \n"
                    "busy.jpg   # background too busy\n   # indented comment\nxe ma\u0301y.jpg\n",
                    encoding="utf-8")
    names = read_reject_list(path)
    # Backslashes and './' normalised, trailing comments cut, NFD turned into NFC
    assert names == {"bikes/red 01.jpg", "bikes/blue.png", "busy.jpg", "xe m\u00e1y.jpg"}
    assert read_reject_list(None) == set()
    with pytest.raises(UserError, match="does not exist"):
        read_reject_list(tmp_path / "missing.txt")


def test_apply_reject_list_by_path_or_basename(tmp_path: Path) -> None:
    rels = ["bikes/red 01.jpg", "bikes/blue.png", "cars/blue.png", "a/busy.jpg", "keep.jpg"]
    files = [tmp_path / rel for rel in rels]
    names = {"bikes/red 01.jpg", "busy.jpg", "cars/blue.png", "nothing.jpg"}
    remaining, dropped = apply_reject_list(files, tmp_path, names)
    assert remaining == [tmp_path / "bikes/blue.png", tmp_path / "keep.jpg"]
    assert [d.file for d in dropped] == ["bikes/red 01.jpg", "cars/blue.png", "a/busy.jpg"]
    assert all(d.decision == "rejected" and d.reason == "in reject list" for d in dropped)
    assert unmatched(names, files, tmp_path) == ["nothing.jpg"]
    # An empty list drops nothing; a basename entry matches in every folder
    assert apply_reject_list(files, tmp_path, set()) == (files, [])
    assert matches("x/y/blue.png", {"blue.png"}) and not matches("blue.png", {"x/blue.png"})


def _picture(height: int, width: int, seed: int, alpha: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(height, width, 4 if alpha else 3), dtype=np.uint8)
    if alpha:
        image[:, :, 3] = 255
        image[: height // 2, :, 3] = 0  # half transparent
    return image


def test_contact_sheet(tmp_path: Path) -> None:
    source, crops = tmp_path / "src", tmp_path / "crops"
    (source / "sub").mkdir(parents=True)
    save_png(_picture(60, 80, 1), source / "sub" / "kept <1>.png")
    save_png(_picture(50, 50, 2, alpha=True), source / "cut.png")
    save_png(_picture(40, 120, 3), source / "small.png")
    save_png(_picture(30, 30, 4), source / "dropped.png")
    (source / "broken.jpg").write_bytes(b"not a jpeg")
    # Real crops for the kept rows, named the way the crop stage names them
    rows = crop_images([source / "sub" / "kept <1>.png", source / "cut.png"], source, crops,
                       CropConfig(method="alpha", margin=0.0), 10**8, quiet=True, workers=1)
    rows += [rejected("small.png", "crop", "object too small: 8 px < 0.1 x 40 px",
                      box="10 5 18 13", score=0.61),
             rejected("dropped.png", "crop", "in reject list"),
             rejected("broken.jpg", "crop", "not an image: unknown format")]
    out = tmp_path / "review" / "sheet.html"
    out.parent.mkdir()
    contact_sheet(rows, crops, source, out, thumb=48)
    page = out.read_text(encoding="utf-8")
    for row in rows:
        assert html.escape(row.file) in page and html.escape(row.reason) in page
    # Kept first, then groups by reason family with counts
    headings = re.findall(r"<h2>(.*?)</h2>", page)
    assert headings[0] == "kept (2)" and "object too small (1)" in headings
    assert "score 0.61" in page
    # Every referenced thumbnail exists and fits in 48 px; the broken file has no preview
    sources = re.findall(r'src="(thumbs/[^"]+)"', page)
    assert len(sources) == 4 and page.count("no preview") == 1
    for src in sources:
        image, reason = load_image(out.parent / html.unescape(src), 10**6)
        assert image is not None, reason
        assert max(image.shape[:2]) == 48 and image.shape[2] == 3
    # The kept alpha picture shows its crop (the opaque lower half), not the whole source
    cut = load_image(out.parent / "thumbs" / "cut.jpg", 10**6)[0]
    assert cut is not None and cut.shape[:2] == (24, 48)
    # The detection box is drawn on the rejected picture's thumbnail
    small = load_image(out.parent / "thumbs" / "small.jpg", 10**6)[0]
    assert small is not None and small[2:5, 3:6, 0].mean() > 150


def test_contact_sheet_kept_rows_after_a_reject_list(tmp_path: Path) -> None:
    """Crops are named among the files processed; reject-list rows must not change the names."""
    source, crops = tmp_path / "src", tmp_path / "crops"
    source.mkdir()
    save_png(_picture(20, 20, 5), source / "a.png")
    save_png(_picture(20, 20, 6), source / "a.jpg")
    rows = crop_images([source / "a.png"], source, crops, CropConfig(method="none"), 10**8,
                       quiet=True, workers=1)
    rows.append(rejected("a.jpg", "crop", "in reject list"))
    contact_sheet(rows, crops, source, tmp_path / "sheet.html", thumb=16)
    assert (tmp_path / "sheet.html").read_text(encoding="utf-8").count("no preview") == 0
    assert rows[0] == kept("a.png", "crop", box="0 0 20 20", output="a.png")


def test_contact_sheet_shows_the_crop_a_row_names(tmp_path: Path) -> None:
    """A kept row's thumbnail is the file in its `output`, whatever the source was called."""
    source, crops = tmp_path / "src", tmp_path / "crops"
    (source / "sub").mkdir(parents=True)
    crops.mkdir()
    save_png(np.full((10, 20, 3), (0, 0, 255), np.uint8), source / "sub" / "bike.png")
    save_png(np.full((10, 20, 3), (255, 0, 0), np.uint8), crops / "sub__bike~1.png")  # its crop
    save_png(np.full((10, 20, 3), (0, 255, 0), np.uint8), crops / "sub__bike.png")  # the guess
    rows = [kept("sub/bike.png", "crop", box="0 0 20 10", output="sub__bike~1.png"),
            kept("gone.png", "crop", output="")]  # names no file: no preview, no error
    contact_sheet(rows, crops, source, tmp_path / "sheet.html", thumb=16)
    thumb = load_image(tmp_path / "thumbs" / "sub__bike.jpg", 10**6)[0]
    assert thumb is not None and thumb.shape == (8, 16, 3)
    assert thumb[..., 0].mean() > 200 and thumb[..., 1:].mean() < 40  # red: the named crop
    assert (tmp_path / "sheet.html").read_text(encoding="utf-8").count("no preview") == 1
