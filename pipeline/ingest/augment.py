"""Offline, deterministic augmentation into the training pack.

Every clean image is written once as is, then once per transform (horizontal flip, small
rotations). Horizontal flips are the safe case; rotations fill the corners with pad.background
(the letterbox colour, so corners and bands match), which the generator can learn ("leaking"
augmentations in the ADA paper), so they are opt-in and recorded in the pack's info.
Stochastic augmentations that must touch reals and fakes alike (DiffAugment, ADA) belong to
training, not here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from pipeline.core.faults import kill_point
from pipeline.ingest import pack
from pipeline.ingest.opencv import cv2
from pipeline.ingest.pack import PackInfo


def transform_names(hflip: bool, rotations: tuple[float, ...]) -> tuple[str, ...]:
    """Names of the copies made of each image, in pack order."""
    names = ["identity"]
    if hflip:
        names.append("hflip")
    names.extend(f"rotate{angle:+g}" for angle in rotations)
    return tuple(names)


def fill_value(background: tuple[int, int, int], grey: bool) -> tuple[int, ...]:
    """pad.background as pixel values of the pack: RGB, or its PIL 'L' grey level when grey.

    PIL's conversion is the one read_clean_image applies to the letterbox bands, so rotated
    corners get exactly the grey of the bands.
    """
    if not grey:
        return tuple(background)
    return (int(Image.new("RGB", (1, 1), tuple(background)).convert("L").getpixel((0, 0))),)


def apply_transform(image: np.ndarray, name: str,
                    fill: tuple[int, ...] = (0, 0, 0)) -> np.ndarray:
    """One named transform of an (H, W, C) uint8 image; rotations fill corners with `fill`.

    `fill` holds one value per channel (see fill_value).
    """
    if name == "identity":
        return image
    if name == "hflip":
        return image[:, ::-1]
    if name.startswith("rotate"):
        angle = float(name[len("rotate"):])
        height, width = image.shape[:2]
        matrix = cv2.getRotationMatrix2D((width / 2, height / 2), angle, 1.0)
        rotated = cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_CONSTANT,
                                 borderValue=tuple(float(v) for v in fill))
        return rotated.reshape(image.shape)  # cv2 drops a single channel axis
    raise ValueError(f"unknown transform {name!r}")


def read_clean_image(path: Path, size: int, grey: bool, train_size: int = 0,
                     fill: tuple[int, ...] = (0, 0, 0)) -> np.ndarray:
    """A clean PNG (size x size) as (train_size, train_size, 1 or 3) uint8 (0 = size).

    Downscaling averages whole pixel areas (PIL's box filter): the training image is what a
    camera of the lower resolution would record, with no aliasing and no sharpening ring.
    A larger train_size centres the image, unresampled, on a band of `fill` (pixel values as
    fill_value gives them), which generate crops off again.
    """
    with Image.open(path) as im:
        im = im.convert("L" if grey else "RGB")
        if im.size != (size, size):
            raise ValueError(f"{path.name} is {im.size[0]}x{im.size[1]}, expected {size}x{size}")
        if train_size and train_size < size:
            im = im.resize((train_size, train_size), Image.Resampling.BOX)
        elif train_size > size:
            canvas = Image.new(im.mode, (train_size, train_size), fill if not grey else fill[0])
            canvas.paste(im, ((train_size - size) // 2,) * 2)
            im = canvas
        array = np.asarray(im, dtype=np.uint8)
    return array[:, :, None] if grey else array


def build_pack(files: list[Path], out_dir: Path, size: int, hflip: bool,
               rotations: tuple[float, ...], grey: bool, background: tuple[int, int, int],
               quiet: bool = False, train_size: int = 0) -> PackInfo:
    """Write every image (size x size) and its transformed copies into a memory-mapped uint8
    pack, downscaled to train_size when that is set and smaller, centred on a band of
    `background` when it is larger.

    Rotated copies fill their corners with `background` (pad.background, RGB 0..255).
    Streams: one source image in memory at a time, the pack itself lives on disk.
    """
    names = transform_names(hflip, rotations)
    fill = fill_value(background, grey)
    channels = 1 if grey else 3
    side = train_size or size
    images = pack.create(out_dir, len(files) * len(names), side, channels)
    # Layout: all identities first, then all flips, ... so a prefix is a plain dataset.
    for index, path in enumerate(tqdm(files, desc="augment", unit="img", disable=quiet)):
        source = read_clean_image(path, size, grey, side, fill)
        for copy, name in enumerate(names):
            images[copy * len(files) + index] = apply_transform(source, name, fill)
        kill_point("augment:first-image")
    images.flush()
    info = PackInfo(count=len(files) * len(names), size=side, channels=channels,
                    sources=len(files), transforms=names,
                    output_size=size if side != size else 0)
    pack.write_info(out_dir, info)
    return info
