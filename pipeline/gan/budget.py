"""train.budget_minutes: how long training may run so that generating and zipping still fit.

A Kaggle kernel stops at its limit whatever it is doing; a run that trains until the limit ends
without a zip. With a budget for training plus delivery, training stops early enough for
`generate` and `package` to finish: their time is estimated before training starts, on this
machine, from the run's own generator (untrained: the same cost per image) drawing and encoding
one batch, with a safety factor because a trained generator's PNGs are larger (they compress
worse) and the machine may be busier later.
"""

from __future__ import annotations

import io
import os
import time

import torch
from PIL import Image

from pipeline.gan.models import ModelSpec, build_generator, delivered, fold_batchnorm
from pipeline.gan.plots import pixel_levels

PROBE_IMAGES = 32  # images drawn and encoded to time a batch
SAFETY = 2.0  # multiplier on the measured time (bigger PNGs when trained, a busier machine)
FIXED_SECONDS = 30.0  # loading, validation and publishing of the zip, process start-up
# deliver.generate.PNG_LEVEL, which this floor (gan, below deliver) may not import.
GENERATE_PNG_LEVEL = 1
ZIP_BYTES_PER_SECOND = 200e6  # a stored zip streams PNGs at disk speed; validation re-reads


def delivery_seconds(spec: ModelSpec, count: int, device: torch.device) -> float:
    """Estimated seconds to generate, encode and zip `count` images of this spec here."""
    if count <= 0:
        return 0.0
    with torch.random.fork_rng(devices=[]):  # leave training's random stream as it was
        torch.manual_seed(0)
        generator = fold_batchnorm(delivered(build_generator(spec), spec).eval()).to(device)
        z = torch.randn(PROBE_IMAGES, spec.nz, device=device)
        with torch.inference_mode():
            generator(z[:2])  # warm-up
            start = time.perf_counter()
            images = generator(z)
            forward = time.perf_counter() - start
    pixels = pixel_levels(images).cpu().numpy()  # (N, H, W, C), as generate encodes them
    start = time.perf_counter()
    size = 0
    for image in pixels:
        buffer = io.BytesIO()
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(
            buffer, format="PNG", compress_level=GENERATE_PNG_LEVEL)
        size += buffer.tell()
    encode = time.perf_counter() - start
    workers = max(1, os.cpu_count() or 1)  # generate encodes in one process per core
    per_image = forward / PROBE_IMAGES + encode / PROBE_IMAGES / workers
    zip_seconds = 2 * count * size / PROBE_IMAGES / ZIP_BYTES_PER_SECOND  # write, then validate
    return SAFETY * (count * per_image + zip_seconds) + FIXED_SECONDS
