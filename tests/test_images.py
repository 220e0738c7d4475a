"""Safe decoding, geometry, fitting, hashing and the crop stage on real files made in tmp_path."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from pipeline.core.config import CropConfig
from pipeline.ingest.crop import crop_images, flat_names
from pipeline.ingest.dedupe import content_hash, find_duplicates, mean_colour, perceptual_hash
from pipeline.ingest.images import alpha_bbox, check_geometry, composite, fit, load_image, save_png

BIG = 10**8  # max_pixels that no test image reaches
RED, BLUE = (255, 0, 0), (0, 0, 255)


def solid(width: int, height: int, colour: tuple[int, ...], mode: str = "RGB") -> Image.Image:
    return Image.new(mode, (width, height), colour)


def photo(seed: int, width: int = 96, height: int = 64) -> np.ndarray:
    """A smooth random picture with structure at several scales (stands in for a photo)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    image = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC))
    return np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)


def load_ok(path: Path) -> np.ndarray:
    image, reason = load_image(path, BIG)
    assert image is not None, reason
    assert image.dtype == np.uint8 and image.flags.c_contiguous
    return image


# ----------------------------------------------------------------------------------------------
# Formats and modes that must decode


@pytest.mark.parametrize("draft", [0, 16])
def test_cmyk_and_grey_jpeg_become_rgb(tmp_path, draft):
    solid(80, 64, (0, 255, 255, 0), "CMYK").save(tmp_path / "c.jpg")  # pure red in CMYK
    solid(80, 64, 90, "L").save(tmp_path / "l.jpg")
    image, _ = load_image(tmp_path / "c.jpg", BIG, draft=draft)
    assert image.shape == ((64, 80, 3) if not draft else (16, 20, 3))  # draft: 1/4 scale
    assert np.abs(image[8, 10].astype(int) - RED).max() <= 6
    grey, _ = load_image(tmp_path / "l.jpg", BIG, draft=draft)
    assert grey.shape[2] == 3 and abs(int(grey[8, 10, 1]) - 90) <= 2


def test_palette_with_transparency_becomes_rgba(tmp_path):
    pal = solid(20, 10, 0, "P")
    pal.putpalette([*RED, *BLUE] + [0] * 762)
    pal.paste(1, (0, 0, 5, 10))  # left quarter blue (index 1), rest red (index 0, transparent)
    pal.save(tmp_path / "p.png", transparency=0)
    image = load_ok(tmp_path / "p.png")
    assert image.shape == (10, 20, 4)
    assert tuple(image[5, 2]) == (*BLUE, 255) and image[5, 15, 3] == 0


def test_palette_without_transparency_and_grey_become_rgb(tmp_path):
    solid(8, 8, 0, "P").save(tmp_path / "p.gif")
    solid(8, 8, 77, "L").save(tmp_path / "l.png")
    assert load_ok(tmp_path / "p.gif").shape == (8, 8, 3)
    assert tuple(load_ok(tmp_path / "l.png")[0, 0]) == (77, 77, 77)


def test_16bit_grey_png_is_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 64).astype(np.uint16).reshape(1, 64).repeat(4, axis=0)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    image = load_ok(tmp_path / "g16.png")
    assert image.shape == (4, 64, 3)
    expected = np.rint(ramp[0] / 257).astype(int)
    assert np.abs(image[0, :, 0].astype(int) - expected).max() <= 1
    assert image[0, -1, 0] == 255 and image[0, 32, 0] > 100  # mid-ramp is grey, not white


def test_la_keeps_alpha(tmp_path):
    la = np.dstack([np.full((6, 6), 100, np.uint8), np.full((6, 6), 50, np.uint8)])
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    assert tuple(load_ok(tmp_path / "la.png")[0, 0]) == (100, 100, 100, 50)


def test_opaque_rgba_drops_alpha(tmp_path):
    solid(6, 6, (*RED, 255), "RGBA").save(tmp_path / "o.png")
    assert load_ok(tmp_path / "o.png").shape == (6, 6, 3)


@pytest.mark.parametrize("ext", ["gif", "webp"])
def test_animation_gives_first_frame(tmp_path, ext):
    frames = [solid(30, 30, RED), solid(30, 30, BLUE)]
    options = {"lossless": True} if ext == "webp" else {}
    frames[0].save(tmp_path / f"a.{ext}", save_all=True, append_images=frames[1:],
                   duration=100, loop=0, **options)
    assert Image.open(tmp_path / f"a.{ext}").n_frames == 2
    assert tuple(load_ok(tmp_path / f"a.{ext}")[10, 10]) == RED


@pytest.mark.parametrize("ext", ["bmp", "tiff", "webp", "png"])
def test_plain_formats(tmp_path, ext):
    solid(12, 7, BLUE).save(tmp_path / f"b.{ext}", **({"lossless": True} if ext == "webp" else {}))
    image = load_ok(tmp_path / f"b.{ext}")
    assert image.shape == (7, 12, 3) and tuple(image[3, 6]) == BLUE


def test_exif_orientation_6_is_applied(tmp_path):
    im = solid(60, 40, (0, 0, 0))
    im.paste(RED, (0, 0, 10, 10))  # red square at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    im.save(tmp_path / "r.jpg", exif=exif, quality=95)
    image = load_ok(tmp_path / "r.jpg")
    assert image.shape == (60, 40, 3)  # width and height swapped
    assert image[3, -4, 0] > 200 and image[3, 3, 0] < 50  # top-left moved to top-right


def test_vietnamese_name_with_spaces(tmp_path):
    path = tmp_path / "xe máy đỏ 01.jpg"
    solid(20, 20, RED).save(path)
    assert load_ok(path).shape == (20, 20, 3)


def test_jpeg_draft_for_a_letterbox_keeps_only_the_long_side(tmp_path):
    """A letterbox shrinks the long side to `size`: the short side may decode smaller."""
    Image.new("RGB", (1600, 400), (10, 120, 200)).save(tmp_path / "wide.jpg")
    both, _ = load_image(tmp_path / "wide.jpg", BIG, draft=128)
    long_only, _ = load_image(tmp_path / "wide.jpg", BIG, draft=128, draft_short=16)
    assert both.shape == (200, 800, 3)  # 1/2: the short side must stay >= 128
    assert long_only.shape == (50, 200, 3)  # 1/8: the long side stays >= 128
    Image.new("RGB", (400, 1600), (10, 120, 200)).save(tmp_path / "tall.jpg")
    tall, _ = load_image(tmp_path / "tall.jpg", BIG, draft=128, draft_short=16)
    assert tall.shape == (200, 50, 3)


def test_jpeg_draft_keeps_requested_side(tmp_path):
    Image.fromarray(photo(0, 1600, 1200)).save(tmp_path / "big.jpg")
    image, _ = load_image(tmp_path / "big.jpg", BIG, draft=256)
    assert image.shape == (300, 400, 3)  # 1/4 scale is the largest keeping >= 256 a side


# ----------------------------------------------------------------------------------------------
# Files that must be rejected with a reason


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny but well-formed PNG whose header claims width x height pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def test_rejections(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "page.png").write_text("<!DOCTYPE html><html><body>404</body></html>")
    Image.fromarray(photo(1, 300, 200)).save(tmp_path / "full.jpg")
    Image.fromarray(photo(2, 300, 200)).save(tmp_path / "full.png")
    for ext in ("jpg", "png"):
        data = (tmp_path / f"full.{ext}").read_bytes()
        (tmp_path / f"cut.{ext}").write_bytes(data[: len(data) // 2])
    (tmp_path / "bomb.png").write_bytes(_png_claiming(60_000, 60_000))  # 3.6 Gpx, 100 bytes
    reasons = {p.name: load_image(p, 50_000_000)[1] for p in tmp_path.iterdir()}
    assert reasons["empty.jpg"].startswith("empty")
    assert reasons["page.png"] == "not an image: HTML page"
    assert reasons["cut.jpg"].startswith("corrupt") and reasons["cut.png"].startswith("corrupt")
    assert reasons["bomb.png"].startswith("bomb")
    assert reasons["full.jpg"] == reasons["full.png"] == ""
    assert load_image(tmp_path / "full.png", 300 * 200 - 1)[1].startswith("bomb: 300x200")


def test_bomb_check_does_not_touch_pil_globals(tmp_path):
    before = Image.MAX_IMAGE_PIXELS
    (tmp_path / "bomb.png").write_bytes(_png_claiming(20_000, 20_000))  # 400 Mpx
    assert load_image(tmp_path / "bomb.png", 10**12)[1].startswith("bomb")  # PIL's own limit
    assert Image.MAX_IMAGE_PIXELS == before


def test_check_geometry():
    assert check_geometry(np.zeros((12, 10, 3), np.uint8), 16, 5) == "tiny: 10x12 < 16"
    assert check_geometry(np.zeros((20, 142, 3), np.uint8), 16, 5) == "aspect: 7.1 > 5"
    assert check_geometry(np.zeros((20, 100, 3), np.uint8), 16, 5) == ""


# ----------------------------------------------------------------------------------------------
# Array operations


def test_composite_blends_on_background():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (*RED, 255)  # opaque red; (0, 1) fully transparent; (1, 0) half
    rgba[1, 0] = (*RED, 128)
    out = composite(rgba, (0, 255, 0))
    assert tuple(out[0, 0]) == RED and tuple(out[0, 1]) == (0, 255, 0)
    assert tuple(out[1, 0]) == (128, 127, 0)


def test_alpha_bbox_and_margin():
    rgba = np.zeros((100, 200, 4), np.uint8)
    rgba[20:60, 50:90, 3] = 255
    rgba[0, 0, 3] = 5  # faint speck below the threshold
    assert alpha_bbox(rgba, 8, 0.0) == (50, 20, 90, 60)
    assert alpha_bbox(rgba, 8, 0.1) == (46, 16, 94, 64)  # 10% of 40 px on every side
    assert alpha_bbox(rgba, 8, 1.0) == (10, 0, 130, 100)  # clamped to the image
    assert alpha_bbox(np.zeros((5, 5, 4), np.uint8), 8, 0.1) is None
    assert alpha_bbox(np.zeros((5, 7, 3), np.uint8), 8, 0.1) == (0, 0, 7, 5)


def test_letterbox_geometry_and_background():
    red = np.zeros((100, 200, 3), np.uint8)
    red[:] = RED
    out = fit(red, 128, "letterbox", (0, 0, 0))
    assert out.shape == (128, 128, 3)
    band = np.all(out == RED, axis=2).all(axis=1)  # rows that are entirely red
    assert np.flatnonzero(band).tolist() == list(range(32, 96))
    assert not out[:32].any() and not out[96:].any()
    grey = fit(red, 128, "letterbox", (90, 90, 90))
    assert tuple(grey[0, 0]) == (90, 90, 90) and tuple(grey[64, 64]) == RED
    tall = fit(red.transpose(1, 0, 2).copy(), 64, "letterbox", (0, 0, 0))  # 100 x 200 upright
    assert np.all(tall[:, 16:48] == RED) and not tall[:, :16].any()


def test_resize_and_center_crop():
    image = np.zeros((100, 300, 3), np.uint8)
    image[:, :100] = RED  # left third red, middle green, right third blue
    image[:, 100:200] = (0, 255, 0)
    image[:, 200:] = BLUE
    stretched = fit(image, 64, "resize", (0, 0, 0))
    assert stretched.shape == (64, 64, 3) and tuple(stretched[32, 5]) == RED
    cropped = fit(image, 64, "center-crop", (0, 0, 0))
    assert np.all(cropped == (0, 255, 0))  # only the middle square survives
    small = fit(image[:10, :10], 64, "resize", (0, 0, 0))  # enlarging uses bicubic
    assert np.all(small == RED)
    with pytest.raises(ValueError):
        fit(image, 64, "stretch", (0, 0, 0))  # type: ignore[arg-type]


def test_save_png_round_trip(tmp_path):
    for channels in (3, 4):
        image = photo(3)[:, :, :1].repeat(channels, axis=2) if channels == 4 else photo(3)
        save_png(image, tmp_path / f"x{channels}.png", compress_level=1)
        back = np.asarray(Image.open(tmp_path / f"x{channels}.png"))
        assert np.array_equal(back, image)


# ----------------------------------------------------------------------------------------------
# Dedupe


def test_dedupe_exact_near_and_distinct(tmp_path):
    base = photo(10, 128, 128)
    Image.fromarray(base).save(tmp_path / "copy.jpg", quality=70)
    recompressed = load_ok(tmp_path / "copy.jpg")
    assert not np.array_equal(recompressed, base)
    images = {"a": base, "b": base.copy(), "c": recompressed, "d": photo(11, 128, 128)}
    names = list(images)[::-1]  # input order must not matter: the first by name is kept
    exact = [content_hash(images[n]) for n in names]
    codes = [perceptual_hash(images[n]) for n in names]
    assert all(0 <= c < 2**64 for c in codes)
    assert bin(perceptual_hash(base) ^ perceptual_hash(recompressed)).count("1") <= 4
    assert find_duplicates(names, exact, codes, 4) == {"b": "a", "c": "a"}
    assert find_duplicates(names, exact, codes, -1) == {"b": "a"}  # exact only
    colours = [mean_colour(images[n]) for n in names]
    assert find_duplicates(names, exact, codes, 4, colours) == {"b": "a", "c": "a"}


def test_same_shape_in_another_colour_is_not_a_duplicate():
    """pHash sees grey levels only; the mean colour keeps a red and a blue disc apart."""
    discs = []
    for colour in (RED, (0, 200, 255)):
        disc = np.zeros((64, 64, 3), np.uint8)
        cv2.circle(disc, (32, 32), 20, colour, -1)
        discs.append(disc)
    codes = [perceptual_hash(d) for d in discs]
    exact = [content_hash(d) for d in discs]
    assert bin(codes[0] ^ codes[1]).count("1") <= 4  # grey structure alone says "same"
    assert find_duplicates(["r", "b"], exact, codes, 4, [mean_colour(d) for d in discs]) == {}


# ----------------------------------------------------------------------------------------------
# Crop stage end to end


def test_flat_names_are_readable_and_unique():
    names = flat_names(["xe máy/xe máy đỏ 01.jpg", "a/b.jpg", "a/b.png", "a__b.gif", "c.jpg",
                        "C.png"])
    assert names["xe máy/xe máy đỏ 01.jpg"] == "xe máy__xe máy đỏ 01.png"
    assert len(set(n.casefold() for n in names.values())) == len(names)
    assert names["a/b.jpg"].startswith("a__b~") and names["c.jpg"].startswith("c~")


@pytest.mark.parametrize("workers", [1, 2])
def test_crop_images_end_to_end(tmp_path, workers):
    root = tmp_path / "raw"
    (root / "sub dir").mkdir(parents=True)
    cutout = np.zeros((80, 120, 4), np.uint8)
    cutout[10:50, 30:70] = (*RED, 255)
    Image.fromarray(cutout).save(root / "sub dir" / "xe máy đỏ 01.png")
    Image.fromarray(np.zeros((10, 10, 4), np.uint8)).save(root / "ghost.png")  # all transparent
    Image.fromarray(photo(4)).save(root / "photo.jpg")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    out = tmp_path / "crops"
    rows = crop_images(files, root, out, CropConfig(method="alpha", margin=0.0), BIG, True,
                       workers=workers)
    by_file = {r.file: r for r in rows}
    assert [r.file for r in rows] == sorted(by_file) and len(rows) == 4
    assert by_file["sub dir/xe máy đỏ 01.png"].box == "30 10 70 50"
    assert by_file["ghost.png"].reason == "empty: fully transparent"
    assert by_file["broken.jpg"].reason.startswith("corrupt")
    assert by_file["photo.jpg"].decision == "kept" and by_file["photo.jpg"].box == "0 0 96 64"
    written = sorted(p.name for p in out.iterdir())
    assert written == ["photo.png", "sub dir__xe máy đỏ 01.png"]
    crop = np.asarray(Image.open(out / "sub dir__xe máy đỏ 01.png"))
    assert crop.shape == (40, 40, 3) and np.all(crop == RED)  # opaque crop: alpha dropped
    with pytest.raises(ValueError):
        crop_images(files, root, out, CropConfig(method="yolo"), BIG, True)
