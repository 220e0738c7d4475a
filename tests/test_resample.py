"""Lanczos-3 resampling (pipeline/gan/resample.py): hand-computed weights, PIL's own LANCZOS on a
real photograph as the reference implementation, and the properties generate relies on."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.gan.resample import lanczos_kernel, lanczos_matrix, resize_lanczos


def test_kernel_values_by_hand() -> None:
    """L(x) = sinc(x) sinc(x/3): 1 at 0, 0 at the other integers and from 3 on;
    L(0.5) = sin(pi/2) / (pi/2) * sin(pi/6) / (pi/6) = (2/pi) * (3/pi) = 6/pi^2 ~ 0.607927."""
    x = np.array([0.0, 1.0, -2.0, 3.0, 3.5, 0.5, -0.5])
    expected = [1.0, 0.0, 0.0, 0.0, 0.0, 6 / np.pi**2, 6 / np.pi**2]
    assert np.allclose(lanczos_kernel(x), expected, atol=1e-12)


def test_doubling_weights_by_hand() -> None:
    """8 -> 16 px: output pixel 8 sits at input coordinate (8 + 0.5) / 2 = 4.25, so input
    pixels 1..6 (centres 1.5..6.5) lie at -2.75, -1.75, -0.75, 0.25, 1.25, 2.25 from it; pixels
    0 and 7 (-3.75, 3.25) are beyond the 3 lobes. L of those six, divided by their sum
    (0.996972), computed with a calculator:"""
    row = lanczos_matrix(8, 16)[8]
    expected = [0.0, 0.007378, -0.067997, 0.271011, 0.892771, -0.133275, 0.030112, 0.0]
    assert torch.allclose(row, torch.tensor(expected), atol=2e-6)
    # At the border the taps beyond the image are dropped and the row renormalised.
    first = lanczos_matrix(8, 16)[0]
    assert first[3:].abs().max() == 0 and abs(float(first.sum()) - 1) < 1e-6


@pytest.mark.parametrize("src, dst", [(64, 128), (32, 128), (28, 64), (128, 64), (96, 128)])
def test_rows_sum_to_one_so_flat_areas_stay_flat(src: int, dst: int) -> None:
    matrix = lanczos_matrix(src, dst)
    assert matrix.shape == (dst, src) and matrix.dtype == torch.float32
    assert torch.allclose(matrix.sum(dim=1), torch.ones(dst), atol=1e-6)
    flat = torch.full((2, 3, src, src), -0.25)
    assert torch.allclose(resize_lanczos(flat, dst), torch.full((2, 3, dst, dst), -0.25),
                          atol=1e-6)


def _real_photo() -> Image.Image:
    """bus.jpg, the real photograph ultralytics ships, 128 px (found without importing it)."""
    package = importlib.util.find_spec("ultralytics").submodule_search_locations[0]
    with Image.open(Path(package) / "assets" / "bus.jpg") as image:
        return image.convert("RGB").resize((128, 128), Image.Resampling.BOX)


@pytest.mark.parametrize("low, high", [(64, 128), (128, 48)])
def test_matches_pils_lanczos_on_a_real_image(low: int, high: int) -> None:
    """PIL's LANCZOS is the reference. PIL rounds to 8 bits (and clips) between its horizontal
    and vertical passes, which we do not, so pixels may differ by a few levels where ringing
    overshoots 0 or 255; on average they agree within a fraction of a level."""
    source = _real_photo().resize((low, low), Image.Resampling.BOX)
    theirs = np.asarray(source.resize((high, high), Image.Resampling.LANCZOS), dtype=np.int16)
    x = torch.from_numpy(np.asarray(source)).permute(2, 0, 1)[None].float()  # (1, 3, low, low)
    ours = resize_lanczos(x, high).round().clamp(0, 255)[0].permute(1, 2, 0).to(torch.int16)
    diff = np.abs(ours.numpy() - theirs)
    assert diff.mean() < 0.25, diff.mean()
    assert np.percentile(diff, 99) <= 1 and diff.max() <= 16


def test_runs_in_float32_under_bf16_autocast() -> None:
    """Under autocast the generator may hand over bf16; the resize still runs in float32."""
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = resize_lanczos(x.bfloat16(), 32)
    assert out.dtype == torch.float32
    assert torch.allclose(out, resize_lanczos(x.bfloat16().float(), 32), atol=1e-6)
