"""Generation by seed: names, determinism, batch-size independence, resume and rank splits.

Runs a real tiny DCGAN (32 pixels, width 0.125) saved with save_generator. Its weights are
re-drawn wider than the DCGAN init so the images span [0, 255]: with the default init every pixel
is 127 or 128 and equality tests would prove nothing.
"""

from __future__ import annotations

import dataclasses
import faulthandler
import json
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

from pipeline.core.errors import UserError
from pipeline.deliver.generate import (
    GenerateReport,
    generate_images,
    generate_on_all_ranks,
    image_name,
    png_is_complete,
    seed_latents,
    shard,
    to_uint8,
)
from pipeline.gan.models import ModelSpec, build_generator, save_generator

COUNT = 40  # images per run
NZ = 32


def _save_tiny_generator(folder: Path, channels: int) -> Path:
    """A random DCGAN-32 whose conv weights are N(0, 0.1): varied, full-range images."""
    spec = ModelSpec("dcgan", size=32, channels=channels, nz=NZ, width=0.125)
    torch.manual_seed(0)
    generator = build_generator(spec)
    with torch.no_grad():
        for weight in generator.parameters():
            if weight.dim() == 4:
                weight.normal_(0.0, 0.1)
    save_generator(generator, spec, folder)
    return folder


@pytest.fixture(scope="module")
def rgb_generator(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_tiny_generator(tmp_path_factory.mktemp("g_rgb"), channels=3)


@pytest.fixture(scope="module")
def first_run(rgb_generator: Path,
              tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GenerateReport]:
    """One complete run of COUNT images that the other tests compare against (not modified)."""
    out = tmp_path_factory.mktemp("first") / "images"
    report = generate_images(rgb_generator, out, COUNT, batch_size=16, truncation=1.0,
                             workers=2, device="auto", quiet=True)
    return out, report


def _pixels(folder: Path) -> dict[str, np.ndarray]:
    """Every PNG of a folder decoded: name -> uint8 array."""
    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))}


def _generate(generator: Path, out: Path, count: int = COUNT, **options) -> GenerateReport:
    settings = dict(batch_size=16, truncation=1.0, workers=2, device="auto", quiet=True)
    settings.update(options)
    return generate_images(generator, out, count, **settings)


# ----------------------------------------------------------------------------------------------
# Small parts


def test_names_sort_by_seed() -> None:
    assert image_name(0, 10_000) == "00000.png"
    assert image_name(9_999, 10_000) == "09999.png"
    names = [image_name(i, 200_000) for i in (5, 10, 123_456)]
    assert names == sorted(names)  # more than 100,000 images widen every name


def test_shards_partition_the_indices() -> None:
    parts = [set(shard(10, rank, 3)) for rank in range(3)]
    assert set().union(*parts) == set(range(10))
    assert sum(len(p) for p in parts) == 10
    with pytest.raises(ValueError):
        shard(10, 3, 3)


def test_latent_depends_only_on_its_seed() -> None:
    alone = seed_latents([7], NZ)
    among = seed_latents([3, 7, 11], NZ)
    assert torch.equal(alone[0], among[1])
    assert not torch.equal(among[0], among[1])


def test_to_uint8_rounds_and_clamps() -> None:
    values = torch.tensor([-1.5, -1.0, -0.999, 0.0, 1.0, 1.5]).reshape(1, 1, 1, 6)
    pixels = to_uint8(values)  # grey: (1, 1, 6)
    expected = np.clip(np.round(values.numpy() * 127.5 + 127.5), 0, 255).reshape(1, 1, 6)
    assert pixels.dtype == np.uint8 and pixels.shape == (1, 1, 6)
    assert np.array_equal(pixels, expected.astype(np.uint8))
    assert pixels[0, 0, 0] == 0 and pixels[0, 0, -1] == 255


# ----------------------------------------------------------------------------------------------
# Whole runs


def test_run_writes_named_rgb_pngs(first_run: tuple[Path, GenerateReport]) -> None:
    out, report = first_run
    assert (report.count, report.written, report.skipped_existing) == (COUNT, COUNT, 0)
    assert sorted(p.name for p in out.iterdir()) == [f"{i:05d}.png" for i in range(COUNT)]
    with Image.open(out / "00000.png") as image:
        assert (image.format, image.mode, image.size) == ("PNG", "RGB", (32, 32))
    images = _pixels(out)
    assert len({a.tobytes() for a in images.values()}) == COUNT  # different seeds differ
    assert np.ptp(np.stack(list(images.values()))) > 100  # a real spread of values


def test_rerun_repeats_exactly(first_run, rgb_generator: Path, tmp_path: Path) -> None:
    out, _ = first_run
    _generate(rgb_generator, tmp_path / "again", workers=1)
    for name, pixels in _pixels(out).items():
        assert np.array_equal(pixels, np.asarray(Image.open(tmp_path / "again" / name))), name


def test_image_does_not_depend_on_batch(first_run, rgb_generator: Path, tmp_path: Path) -> None:
    out, _ = first_run
    _generate(rgb_generator, tmp_path / "one", count=16, batch_size=1)
    reference = _pixels(out)
    for name, pixels in _pixels(tmp_path / "one").items():
        difference = np.abs(pixels.astype(int) - reference[name].astype(int))
        assert difference.max() <= 1, name  # float sums may round the other way, no more


def test_resume_redoes_only_missing_and_broken(first_run, rgb_generator: Path,
                                               tmp_path: Path) -> None:
    out, _ = first_run
    work = tmp_path / "images"
    shutil.copytree(out, work)
    for name in ("00003.png", "00017.png", "00039.png"):
        (work / name).unlink()
    broken = work / "00020.png"
    broken.write_bytes(broken.read_bytes()[:100])  # cut short, as by a full disk
    (work / ".00003.png.part").write_bytes(b"left by a killed run")
    report = _generate(rgb_generator, work)
    assert (report.written, report.skipped_existing) == (4, COUNT - 4)
    assert not list(work.glob(".*"))  # the stale temporary file is gone
    for name, pixels in _pixels(out).items():
        assert np.array_equal(pixels, np.asarray(Image.open(work / name))), name


def test_two_ranks_make_the_single_run(first_run, rgb_generator: Path, tmp_path: Path) -> None:
    out, _ = first_run
    shared = tmp_path / "shared"
    reports = [_generate(rgb_generator, shared, rank=r, world_size=2) for r in (0, 1)]
    assert [r.written for r in reports] == [COUNT // 2, COUNT // 2]
    single, split = _pixels(out), _pixels(shared)
    assert single.keys() == split.keys()
    assert all(np.array_equal(single[k], split[k]) for k in single)


def _rank_worker(rank: int, port: int, generator: str, root: str) -> None:
    """One torchrun-like rank of the generate stage; rank 1 is handed a scratch folder."""
    faulthandler.dump_traceback_later(120, exit=True)  # a hung collective fails, not stalls
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"})
    torch.set_num_threads(1)
    out = Path(root) / ("shared" if rank == 0 else "scratch1")
    report = generate_on_all_ranks(Path(generator), out, COUNT, batch_size=8, truncation=1.0,
                                   workers=1, device="cpu", quiet=True)
    # Every rank returns after all wrote: the shared folder is complete on both
    names = sorted(p.name for p in (Path(root) / "shared").glob("*.png"))
    (Path(root) / f"report{rank}.json").write_text(json.dumps(
        {"report": dataclasses.asdict(report) | {"seconds": 0}, "names": len(names)}))
    faulthandler.cancel_dump_traceback_later()


def test_torchrun_ranks_fill_one_folder(first_run, rgb_generator: Path, tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_rank_worker, args=(port, str(rgb_generator), str(tmp_path)), nprocs=2, join=True)
    expected = {"count": COUNT, "written": COUNT, "skipped_existing": 0, "seconds": 0}
    for rank in (0, 1):
        result = json.loads((tmp_path / f"report{rank}.json").read_text())
        assert result == {"report": expected, "names": COUNT}, rank
    single, split = _pixels(first_run[0]), _pixels(tmp_path / "shared")
    assert single.keys() == split.keys()
    assert all(np.array_equal(single[k], split[k]) for k in single)
    assert not (tmp_path / "scratch1").exists() or not any((tmp_path / "scratch1").iterdir())


def test_grey_generator_writes_mode_l(tmp_path: Path) -> None:
    generator = _save_tiny_generator(tmp_path / "g_grey", channels=1)
    _generate(generator, tmp_path / "grey", count=4)
    with Image.open(tmp_path / "grey" / "00000.png") as image:
        assert (image.mode, image.size) == ("L", (32, 32))
    assert png_is_complete(tmp_path / "grey" / "00000.png", 32, 1)
    assert not png_is_complete(tmp_path / "grey" / "00000.png", 32, 3)  # wrong mode
    assert not png_is_complete(tmp_path / "grey" / "00000.png", 64, 1)  # wrong size
    assert not png_is_complete(tmp_path / "grey" / "missing.png", 32, 1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_gpu_is_a_user_error(rgb_generator: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no CUDA GPU"):
        _generate(rgb_generator, tmp_path / "x", count=2, device="cuda")


def test_truncation_needs_a_family_with_a_mapping_network(rgb_generator: Path,
                                                          tmp_path: Path) -> None:
    with pytest.raises(UserError, match="generate.truncation is 0.7 but model dcgan"):
        generate_images(rgb_generator, tmp_path / "out", 4, batch_size=4, truncation=0.7,
                        workers=1, device="cpu", quiet=True)
    assert not list((tmp_path / "out").glob("*.png"))
