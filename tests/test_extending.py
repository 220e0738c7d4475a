"""The README's "Extending" recipes for a model family and a loss work exactly as written.

A copy of the project (pipeline/, stages/, pyproject.toml, Makefile, params.yaml) gets a toy
family and a toy loss by the recipe's plain text edits, then trains through the copy's own CLI
in a subprocess (cwd and PYTHONPATH point at the copy, so its `pipeline` is the one imported).
A recipe with a step left out must fail with a message that names the key to fix.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
COPIED = ("pipeline", "stages", "pyproject.toml", "Makefile", "params.yaml")
SKIPPED = shutil.ignore_patterns("__pycache__", "*.pyc", ".venv", "data")
IMAGES = 32  # PNGs in the toy dataset
SIDE = 32  # their side in pixels (pad.size)

# Recipe step 1 for a model: the family file, a tiny fully connected G and D.
TOY_FAMILY = '''\
"""A toy family for tests/test_extending.py: one hidden layer in G and in D."""

from __future__ import annotations

import torch
from torch import nn

from pipeline.gan.models.registry import ModelFamily, ModelSpec, register_model

HIDDEN = 32  # hidden units in G and D


class Generator(nn.Module):
    """z (N, nz) -> images (N, C, size, size) in [-1, 1]."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.shape = (spec.channels, spec.size, spec.size)
        self.net = nn.Sequential(nn.Linear(spec.nz, HIDDEN), nn.LeakyReLU(0.2),
                                 nn.Linear(HIDDEN, spec.channels * spec.size**2), nn.Tanh())

    def forward(self, z: torch.Tensor, truncation: float = 1.0) -> torch.Tensor:
        return self.net(z).reshape(-1, *self.shape)  # (N, C, size, size)


class Discriminator(nn.Module):
    """images (N, C, size, size) -> raw logits (N,)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(spec.channels * spec.size**2, HIDDEN),
                                 nn.LeakyReLU(0.2), nn.Linear(HIDDEN, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(torch.flatten(x, 1)).reshape(-1)  # (N,)


@register_model("toy")
class ToyFamily(ModelFamily):
    sizes = ()  # fully connected: any side
    channels_last = False

    def generator(self, spec: ModelSpec) -> nn.Module:
        return Generator(spec)

    def discriminator(self, spec: ModelSpec) -> nn.Module:
        return Discriminator(spec)
'''

# Recipe step 1 for a loss: a registered GANLoss appended to pipeline/gan/losses.py.
TOY_LOSS = '''

@register_loss("toyls")
class ToyLeastSquares(GANLoss):
    """Least squares with fixed targets: D pushes reals to 1 and fakes to 0, G fakes to 1."""

    def d_loss(self, real_logits: Tensor, fake_logits: Tensor, real_label: float = 1.0) -> Tensor:
        return (real_logits - 1).square().mean() + fake_logits.square().mean()

    def g_loss(
        self, real_logits: Tensor | None, fake_logits: Tensor, real_label: float = 1.0
    ) -> Tensor:
        return (fake_logits - 1).square().mean()
'''

TRAIN = [  # a few steps of the toy network on the toy dataset: 32 images, 2 ticks
    "--set", "train.model=toy", "--set", "train.loss=toyls", "--set", "train.kimg=0.032",
    "--set", "train.batch_size=16", "--set", "train.tick_kimg=0.016",
    "--set", "train.checkpoint_kimg=0.032", "--set", "train.snapshot_kimg=0.032",
    "--set", "train.threads=1", "--set", "train.eval_kimg=0",  # no Inception scoring
]


def _extending_section() -> str:
    """The README text between "## Extending" and the next "## " heading."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    return readme.split("\n## Extending\n", 1)[1].split("\n## ", 1)[0]


def _recipe(kind: str) -> str:
    """One recipe of the Extending section: from its "**Add a <kind>**" line to the next."""
    section = _extending_section()
    return section.split(f"**Add a {kind}", 1)[1].split("**Add a ", 1)[0]


def _edit(path: Path, pattern: str, replacement: str) -> None:
    """Replace the one match of `pattern` in `path`; no match means the recipe has drifted."""
    text = path.read_text(encoding="utf-8")
    new, count = re.subn(pattern, replacement, text, count=1)
    assert count == 1, f"{pattern!r} not found in {path}: the README recipe no longer fits"
    path.write_text(new, encoding="utf-8")


def _copy_with_toy_family_and_loss(root: Path) -> None:
    """Copy the project into `root` and apply every recipe step but the ModelName edit."""
    for name in COPIED:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=SKIPPED)
        else:
            shutil.copy2(source, root / name)
    models = root / "pipeline/gan/models"
    (models / "toy.py").write_text(TOY_FAMILY, encoding="utf-8")
    _edit(models / "__init__.py", r"(?m)^(from pipeline\.gan\.models import )", r"\1toy, ")
    losses = root / "pipeline/gan/losses.py"
    losses.write_text(losses.read_text(encoding="utf-8") + TOY_LOSS, encoding="utf-8")
    _edit(root / "pipeline/core/config.py", r"LossName = Literal\[", 'LossName = Literal["toyls", ')
    folder = root / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(IMAGES):  # noise: no two images are near duplicates
        pixels = rng.integers(0, 256, size=(SIDE, SIDE, 3), dtype=np.uint8)  # (H, W, 3)
        Image.fromarray(pixels).save(folder / f"{i:02d}.png")


def _run(root: Path, *args: str) -> subprocess.CompletedProcess:
    """`python ARGS` with the copy first on the import path."""
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=root, env=env, capture_output=True,
                          text=True, timeout=300)


def _train(root: Path) -> subprocess.CompletedProcess:
    data = ["--set", f"fetch.source=dir:{root / 'images'}", "--set", "crop.method=none",
            "--set", f"pad.size={SIDE}", "--set", "augment.size=0", "--set", "pad.dedupe=false"]
    return _run(root, "-m", "pipeline", "run", "train", "--root", str(root),
                "--params", str(root / "params.yaml"), *data, *TRAIN, "--quiet")


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    _copy_with_toy_family_and_loss(tmp_path)
    return tmp_path


def test_the_recipes_name_the_places_this_test_edits() -> None:
    model, loss = _recipe("model"), _recipe("loss")
    for place in ("pipeline/gan/models/<name>.py", "@register_model", "ModelFamily",
                  "pipeline/gan/models/__init__.py", "pipeline/core/config.py", "ModelName"):
        assert place in model, place
    for place in ("pipeline/gan/losses.py", "@register_loss", "GANLoss", "LossName"):
        assert place in loss, place


def test_the_copy_is_what_runs(copy: Path) -> None:
    found = _run(copy, "-c", "import pipeline, stages; print(pipeline.__file__, stages.__file__)")
    assert found.returncode == 0, found.stderr
    assert found.stdout.split() == [str(copy / "pipeline/__init__.py"),
                                    str(copy / "stages/__init__.py")]


def test_a_family_missing_from_model_name_is_refused(copy: Path) -> None:
    result = _train(copy)
    message = result.stdout + result.stderr
    assert result.returncode != 0
    assert "train.model" in message and "toy" in message
    assert not (copy / "data/train").exists()


def test_the_model_and_loss_recipes_train(copy: Path) -> None:
    _edit(copy / "pipeline/core/config.py", r"ModelName = Literal\[", 'ModelName = Literal["toy", ')
    result = _train(copy)
    assert result.returncode == 0, result.stdout + result.stderr
    spec = json.loads((copy / "data/train/generator/generator.json").read_text())
    assert (spec["name"], spec["size"], spec["channels"]) == ("toy", SIDE, 3)
    rows = (copy / "data/train/stats.jsonl").read_text().splitlines()
    assert len(rows) == 2  # 32 images at 16 kimg a tick: 2 ticks
    options = json.loads((copy / "data/train/training_options.json").read_text())
    assert "toyls" in json.dumps(options)
