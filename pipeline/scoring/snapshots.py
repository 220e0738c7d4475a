"""Scoring a generator while it trains: KID and FID of a few hundred samples, from memory.

A GAN often gets worse late in training (mode collapse, oscillation), so the loop scores its EMA
generator every `train.eval_kimg` and keeps the best snapshot; generation uses that one. The
score is the submission's own kind of number (pytorch-fid's Inception, the cached statistics of
data/clean), on fewer images: KID is unbiased at small sample sizes and ranks snapshots well,
FID at a few hundred images is biased upwards but still ordered, and is logged beside it.
Samples are rounded to uint8 exactly as the generated PNGs are, so nothing here differs from
scoring files except the sample size and, with train.eval_precision bf16, Inception's precision
(half the time on a CPU with native bf16; references computed the same way, cached apart).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.core.pixels import png_levels
from pipeline.scoring import inception, metrics
from pipeline.scoring.fid import ReferenceStats, fid_against, load_reference

EVAL_BATCH = 50  # images per generator and Inception forward pass
EVAL_SEED = 2**31 - 17  # seed of the fixed evaluation latents (apart from grid and training)
KID_SUBSETS = 50  # KID subsets averaged per evaluation (variance falls as 1/subsets)


@dataclass(frozen=True)
class SnapshotScore:
    """One evaluation: lower is better for both."""

    kid: float  # KID (MMD^2, unbiased) of the samples against the reference
    fid: float  # FID of the samples (biased up at small n; compare runs at the same n only)
    n: int  # samples scored


class SnapshotScorer:
    """Reference statistics and Inception loaded once; `score(G)` per evaluation."""

    def __init__(self, reference: Path, cache_dir: Path, n: int, nz: int,
                 device: torch.device, quiet: bool = True, reference_n: int = 0,
                 dtype: torch.dtype | None = None) -> None:
        weights = inception.resolve_weights(cache_dir)
        self.model: nn.Module = inception.load_inception(weights, device)
        variant = ""
        if dtype is not None:  # train.eval_precision: bf16 Inception, references alike
            self.model = inception.AutocastFeatures(self.model, dtype)
            variant = f"autocast-{dtype}"
        # reference_n > 0: that many reference images spread over the folder (a CPU pays
        # about 0.08 s an image once per run; ranking snapshots needs no more than KID's
        # subsets use).
        self.reference: ReferenceStats = load_reference(
            reference, reference_n, self.model, weights, cache_dir, EVAL_BATCH, device,
            quiet=quiet, spread=True, variant=variant)
        self.device, self.n = device, n
        generator = torch.Generator().manual_seed(EVAL_SEED)
        self.latents = torch.randn(n, nz, generator=generator)  # (n, nz), the same every time

    @torch.no_grad()
    def score(self, generator: nn.Module) -> SnapshotScore:
        """KID and FID of `generator` (eval mode, float32) on the fixed latents."""
        was_training = generator.training
        generator.eval()
        rows = []
        for start in range(0, self.n, EVAL_BATCH):
            z = self.latents[start : start + EVAL_BATCH].to(self.device)
            images = generator(z).float()  # (B, C, H, W) in [-1, 1]
            rows.append(self._features(images))
        generator.train(was_training)
        features = np.concatenate(rows)  # (n, 2048) float64
        fid = fid_against(features, self.reference)
        kid = metrics.kid(features, self.reference.features, subsets=KID_SUBSETS,
                          subset_size=min(self.n, 1000)).mean
        return SnapshotScore(kid=float(kid), fid=float(fid), n=self.n)

    def _features(self, images: torch.Tensor) -> np.ndarray:
        """Inception pool3 features of generator output, through the PNG's uint8 rounding."""
        pixels = png_levels(images)  # (B, C, H, W), the levels generate's PNGs hold
        if pixels.shape[1] == 1:  # grey: PIL's convert("RGB") repeats the channel
            pixels = pixels.expand(-1, 3, -1, -1)
        model_input = (pixels / 255).contiguous(memory_format=torch.channels_last)
        return self.model(model_input).cpu().numpy().astype(np.float64)  # (B, 2048)
