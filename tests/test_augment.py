"""The training pack: copies in pack order, and rotated corners filled with pad.background."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.ingest.augment import build_pack, fill_value
from pipeline.ingest.pack import open_pack
from stages.augment import STAGE

RED = (200, 40, 40)  # the clean pictures' colour
BLUE = (0, 0, 255)  # pad.background in these tests


def _clean_folder(folder: Path, count: int, size: int) -> list[Path]:
    """`count` solid RED size x size PNGs, as the pad stage writes them."""
    folder.mkdir()
    for i in range(count):
        Image.new("RGB", (size, size), RED).save(folder / f"{i}.png")
    return sorted(folder.glob("*.png"))


def test_fill_value_is_the_background_as_the_pack_stores_it() -> None:
    assert fill_value((10, 200, 30), grey=False) == (10, 200, 30)
    # PIL's L = (299 R + 587 G + 114 B) / 1000 = 123.81, rounded: what the grey bands become
    assert fill_value((10, 200, 30), grey=True) == (124,)
    assert fill_value(BLUE, grey=True) == (29,)  # 114 * 255 / 1000 = 29.07


def test_rotated_corners_take_the_background(tmp_path: Path) -> None:
    files = _clean_folder(tmp_path / "clean", 2, 16)
    info = build_pack(files, tmp_path / "pack", 16, hflip=True, rotations=(45.0,), grey=False,
                      background=BLUE, quiet=True)
    images, _ = open_pack(tmp_path / "pack")
    assert info.transforms == ("identity", "hflip", "rotate+45") and images.shape == (6, 16, 16, 3)
    # Identities and flips of a solid picture are that colour everywhere
    assert np.all(images[:4] == RED)
    for rotated in images[4:]:  # 45 degrees: the corners come from outside the picture
        for y, x in ((0, 0), (0, 15), (15, 0), (15, 15)):
            assert tuple(rotated[y, x]) == BLUE, (y, x)
        assert tuple(rotated[8, 8]) == RED


def test_grey_rotations_take_the_grey_background(tmp_path: Path) -> None:
    files = _clean_folder(tmp_path / "clean", 1, 16)
    build_pack(files, tmp_path / "pack", 16, hflip=False, rotations=(-30.0,), grey=True,
               background=BLUE, quiet=True)
    images, _ = open_pack(tmp_path / "pack")
    assert images.shape == (2, 16, 16, 1)
    # Corners: BLUE's grey, 29; the middle keeps RED's grey, (299*200 + 587*40 + 114*40) / 1000
    # = 87.84, rounded
    assert images[1, 0, 0, 0] == 29 and images[1, 8, 8, 0] == 88


def test_the_stage_fingerprint_covers_the_background() -> None:
    # Changing pad.background must rebuild the pack (rotated corners depend on it).
    assert "pad.background" in STAGE.reads and "pad.size" in STAGE.reads


def test_a_smaller_training_side_averages_pixel_areas(tmp_path: Path) -> None:
    """augment.size below pad.size: each training pixel is the mean of the 2x2 block it covers,
    and the pack records the side the delivered images keep."""
    (tmp_path / "clean").mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "clean/0.png")
    info = build_pack([tmp_path / "clean/0.png"], tmp_path / "pack", 8, hflip=True, rotations=(),
                      grey=False, background=BLUE, quiet=True, train_size=4)
    images, stored = open_pack(tmp_path / "pack")
    assert images.shape == (2, 4, 4, 3) and stored == info
    assert (info.size, info.output_size) == (4, 8)
    blocks = pixels.reshape(4, 2, 4, 2, 3).astype(float).mean(axis=(1, 3))  # (4, 4, 3)
    # PIL works in fixed point: within one level of the exact mean
    assert np.abs(images[0].astype(float) - blocks).max() <= 1.0
    assert np.array_equal(images[1], images[0][:, ::-1])  # the flip of the downscaled image


def test_a_larger_training_side_centres_the_image_on_the_background(tmp_path: Path) -> None:
    """augment.size above pad.size (28-px data for a family that starts at 32): the image,
    unresampled, in the middle of a band of pad.background; grey packs get its grey level."""
    (tmp_path / "clean").mkdir()
    pixels = np.random.default_rng(1).integers(0, 256, (28, 28, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "clean/0.png")
    for grey in (False, True):
        out = tmp_path / f"pack-{grey}"
        info = build_pack([tmp_path / "clean/0.png"], out, 28, hflip=False, rotations=(),
                          grey=grey, background=BLUE, quiet=True, train_size=32)
        images, _ = open_pack(out)
        assert (info.size, info.output_size) == (32, 28) and images.shape[1:3] == (32, 32)
        with Image.open(tmp_path / "clean/0.png") as im:
            source = np.asarray(im.convert("L" if grey else "RGB"))
        inner = images[0, 2:30, 2:30]
        assert np.array_equal(inner[..., 0] if grey else inner, source)
        band = np.ones((32, 32), bool)
        band[2:30, 2:30] = False
        assert (images[0][band] == np.array(fill_value(BLUE, grey))).all()


def test_the_full_side_records_no_output_size(tmp_path: Path) -> None:
    files = _clean_folder(tmp_path / "clean", 1, 8)
    info = build_pack(files, tmp_path / "pack", 8, hflip=False, rotations=(), grey=False,
                      background=BLUE, quiet=True, train_size=8)
    assert (info.size, info.output_size) == (8, 0)
