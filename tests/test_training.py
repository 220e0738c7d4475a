"""The training loop on tiny runs (32 px, width 0.125, a 96-image pack) plus its helpers."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.core.config import TrainConfig
from pipeline.core.distributed import Dist
from pipeline.core.errors import UserError
from pipeline.core.pixels import unit_floats
from pipeline.core.schedules import parse_schedule
from pipeline.gan import checkpoint as ckpt
from pipeline.gan.data import BatchReader, BatchSampler, to_device_batch
from pipeline.gan.diffaug import AdaptiveP, diff_augment, parse_policy, translation
from pipeline.gan.loop import train
from pipeline.gan.models import load_generator, spec_from_config
from pipeline.gan.plots import make_grid, pixel_levels, plot_losses, to_uint8_nhwc
from pipeline.gan.precision import Precision
from pipeline.gan.steps import diversity, ema_beta, flip_labels, instance_noise_std, update_ema
from pipeline.ingest import pack

# Every trick on, so that the exact-resume test covers every random draw the loop makes.
TINY = TrainConfig(
    model="dcgan", loss="ralsgan", kimg=0.128, batch_size=16, width=0.125, nz=16,
    tick_kimg=0.032, checkpoint_kimg=0.064, snapshot_kimg=0.064, keep_checkpoints=2,
    ema_kimg=0.02, threads=1, device="cpu", real_label=0.8, label_flip=0.1,
    instance_noise=0.1, instance_noise_kimg=0.2, diffaugment="color,translation,cutout",
    ada_target=0.6, ada_kimg=1.0,
)


@pytest.fixture(scope="module")
def pack_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """96 random RGB 32x32 images with some structure (a bright square per image)."""
    folder = tmp_path_factory.mktemp("pack")
    rng = np.random.default_rng(0)
    images = pack.create(folder, 96, 32, 3)
    images[:] = rng.integers(0, 80, images.shape, dtype=np.uint8)
    for i in range(96):
        y, x = rng.integers(0, 20, 2)
        images[i, y : y + 12, x : x + 12] = rng.integers(150, 256, 3, dtype=np.uint8)
    images.flush()
    pack.write_info(folder, pack.PackInfo(96, 32, 3, 96, ("identity",)))
    return folder


def _latest_state(run: Path) -> dict:
    path = ckpt.latest_checkpoint(run / "checkpoints")
    assert path is not None
    return ckpt.load_checkpoint(path)


def _assert_same_tensors(a: object, b: object, where: str = "") -> None:
    """Recursive exact equality of nested dicts/lists of tensors and plain values."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            _assert_same_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


# ----------------------------------------------------------------------------------------------
# The loop end to end


def test_run_writes_every_artefact(pack_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    report = train(TINY, pack_dir, run, quiet=True)
    assert report.kimg_done == pytest.approx(0.128) and report.steps == 8
    assert report.resumed_from_kimg == 0 and report.images_per_second > 0
    assert set(report.final_losses) >= {"loss_d", "loss_g", "acc_real", "acc_fake"}
    # Checkpoints: at 0.064 and 0.128 kimg, each with its JSON sidecar holding the config.
    saved = ckpt.list_checkpoints(run / "checkpoints")
    assert len(saved) == 2
    meta = ckpt.read_meta(saved[-1])
    assert meta["images_seen"] == 128 and meta["config"] == dataclasses.asdict(TINY)
    state = ckpt.load_checkpoint(saved[-1])
    assert {"G", "D", "G_ema", "opt_g", "opt_d", "rng"} <= set(state)
    # Observability: options, grids, stats per tick, TensorBoard, curves.
    options = json.loads((run / "training_options.json").read_text())
    assert options["config"]["kimg"] == TINY.kimg and options["device"] == "cpu"
    assert Image.open(run / "reals.png").size == Image.open(run / "fakes000000.png").size
    rows = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert [row["kimg"] for row in rows] == [0.032, 0.064, 0.096, 0.128]
    for key in ("loss_d", "loss_g", "d_real", "d_fake", "acc_real", "acc_fake", "img_per_s",
                "augment_p", "diversity", "collapse_warning"):
        assert key in rows[-1], key
    assert 0 <= rows[-1]["acc_real"] <= 1 and rows[-1]["augment_p"] >= 0
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard")).Reload()
    assert "samples/fixed_noise" in events.Tags()["images"]  # the grids, not only numbers
    grid = events.Images("samples/fixed_noise")[-1]
    assert (grid.width, grid.height) == Image.open(run / "fakes000000.png").size
    assert Image.open(run / "losses.png").size[0] > 100
    # The exported generator is G_ema and loads for the generate stage.
    generator, spec = load_generator(report.generator_dir)
    assert spec.size == 32 and spec.channels == 3 and spec.nz == 16
    _assert_same_tensors(generator.state_dict(), state["G_ema"])
    with torch.no_grad():
        out = generator(torch.randn(4, 16))
    assert out.shape == (4, 3, 32, 32) and out.abs().max() <= 1


def test_resume_is_exact_and_raising_kimg_continues(pack_dir: Path, tmp_path: Path) -> None:
    # One uninterrupted run of 0.128 kimg ...
    train(TINY, pack_dir, tmp_path / "whole", quiet=True)
    # ... against a run stopped half-way (target 0.064), then continued to 0.128.
    half = train(dataclasses.replace(TINY, kimg=0.064), pack_dir, tmp_path / "split", quiet=True)
    assert half.kimg_done == pytest.approx(0.064)
    rest = train(TINY, pack_dir, tmp_path / "split", quiet=True)
    assert rest.resumed_from_kimg == pytest.approx(0.064) and rest.steps == 8
    whole, split = _latest_state(tmp_path / "whole"), _latest_state(tmp_path / "split")
    for key in ("G", "D", "G_ema", "opt_g", "opt_d"):
        _assert_same_tensors(whole[key], split[key], key)
    # EMA: differs from G, yet is an average of its recent past (close to G).
    g, ema = whole["G"], whole["G_ema"]
    assert any(not torch.equal(g[k], ema[k]) for k in g if g[k].is_floating_point())
    # stats.jsonl has each tick once, as if never interrupted.
    kimgs = [json.loads(line)["kimg"] for line in (tmp_path / "split/stats.jsonl").open()]
    assert kimgs == [0.032, 0.064, 0.096, 0.128]
    # A run already at its target only re-exports.
    again = train(TINY, pack_dir, tmp_path / "split", quiet=True)
    assert again.steps == 8 and again.resumed_from_kimg == pytest.approx(0.128)
    assert again.final_losses == rest.final_losses


def test_stylegan2_with_r1_and_path_length_resumes_exactly(pack_dir: Path, tmp_path: Path) -> None:
    # Lazy R1 (every 16 D steps) and path-length regularisation (every 4 G steps) both fire.
    cfg = dataclasses.replace(
        TINY, model="stylegan2", loss="nonsaturating", kimg=0.384, checkpoint_kimg=0.192,
        tick_kimg=0.192, nz=16, w_dim=16, channel_base=128, channel_max=16, r1_gamma=1.0,
        pl_weight=2.0, diffaugment="translation", ada_target=0.0, augment_p=0.5)
    train(cfg, pack_dir, tmp_path / "whole", quiet=True)
    train(dataclasses.replace(cfg, kimg=0.192), pack_dir, tmp_path / "split", quiet=True)
    report = train(cfg, pack_dir, tmp_path / "split", quiet=True)
    assert report.steps == 24 and all(np.isfinite(v) for v in report.final_losses.values())
    whole, split = _latest_state(tmp_path / "whole"), _latest_state(tmp_path / "split")
    for key in ("G", "D", "G_ema", "opt_g", "opt_d", "pl_mean"):
        _assert_same_tensors(whole[key], split[key], key)
    assert whole["pl_mean"].item() > 0  # the path-length regulariser ran


def test_divergence_stops_loudly_and_keeps_the_checkpoint(pack_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(dataclasses.replace(TINY, kimg=0.064), pack_dir, run, quiet=True)
    good = ckpt.latest_checkpoint(run / "checkpoints")
    # An absurd learning rate sends the weights to ~1e30 in one Adam step: logits overflow.
    absurd = dataclasses.replace(TINY, lr_d=1e30, lr_g=1e30)
    with pytest.raises(UserError) as info:
        train(absurd, pack_dir, run, quiet=True)
    message = str(info.value)
    assert "diverged at kimg" in message and "lower lr_d/lr_g" in message
    assert str(good) in message
    assert ckpt.latest_checkpoint(run / "checkpoints") == good  # nothing written after it


def test_bf16_autocast_on_cpu(pack_dir: Path, tmp_path: Path) -> None:
    cfg = dataclasses.replace(TINY, amp="bf16", kimg=0.064, diffaugment="", ada_target=0.0)
    report = train(cfg, pack_dir, tmp_path / "run", quiet=True)
    assert report.steps == 4
    assert all(np.isfinite(v) for v in report.final_losses.values())
    options = json.loads((tmp_path / "run/training_options.json").read_text())
    assert options["amp"] == "torch.bfloat16"
    assert isinstance(options["channels_last"], bool)  # the layout the probe chose, kept


@pytest.mark.parametrize("loss", ["ralsgan", "wgan-gp", "hinge"])
def test_patchgan_head_trains_with_every_kind_of_loss(pack_dir: Path, tmp_path: Path,
                                                      loss: str) -> None:
    """(N, P) patch logits go through relativistic, gradient-penalty and margin losses."""
    cfg = dataclasses.replace(TINY, d_head="patch", loss=loss, kimg=0.064)
    report = train(cfg, pack_dir, tmp_path / "run", quiet=True)
    assert report.steps == 4
    assert all(np.isfinite(v) for v in report.final_losses.values())
    stats = [json.loads(line) for line in (tmp_path / "run/stats.jsonl").read_text().splitlines()]
    assert all(0 <= row["acc_real"] <= 1 for row in stats)


def test_time_budget_stops_with_a_checkpoint_and_the_run_continues(
        pack_dir: Path, tmp_path: Path) -> None:
    cfg = dataclasses.replace(TINY, minutes=1e-6)  # spent before the first step ends
    stopped = train(cfg, pack_dir, tmp_path / "run", quiet=True)
    assert stopped.out_of_time and stopped.steps == 1  # not at a tick: at once
    assert _latest_state(tmp_path / "run") is not None  # resumable from where it stopped
    assert (tmp_path / "run/final/generator.pt").is_file()  # and usable as it is
    finished = train(dataclasses.replace(cfg, minutes=0.0), pack_dir, tmp_path / "run",
                     quiet=True)
    assert not finished.out_of_time
    assert (finished.resumed_from_kimg, finished.kimg_done) == (stopped.kimg_done, TINY.kimg)


def test_a_checkpoint_of_other_layer_shapes_is_a_clear_error(pack_dir: Path, tmp_path: Path,
                                                             monkeypatch) -> None:
    """Same settings, layers of other shapes (a checkpoint from a version whose channel rule
    differed, as DCGAN's before its multiples of 8): a UserError that names the file, not a
    traceback."""
    from pipeline.gan.models import dcgan

    cfg = dataclasses.replace(TINY, kimg=0.032, checkpoint_kimg=0.032)
    with monkeypatch.context() as patch:  # the other version's rule: one more channel a map
        patch.setattr(dcgan, "channels_at", lambda base, r, width: round(base / r * width) + 1)
        train(cfg, pack_dir, tmp_path / "run", quiet=True)
    with pytest.raises(UserError, match="networks of other shapes") as info:
        train(dataclasses.replace(cfg, kimg=0.064), pack_dir, tmp_path / "run", quiet=True)
    assert "checkpoints" in str(info.value) and "size mismatch" in str(info.value)


def test_changed_networks_refuse_to_resume(pack_dir: Path, tmp_path: Path) -> None:
    cfg = dataclasses.replace(TINY, kimg=0.032, checkpoint_kimg=0.032)
    train(cfg, pack_dir, tmp_path / "run", quiet=True)
    with pytest.raises(UserError, match="different networks"):
        train(dataclasses.replace(cfg, kimg=0.064, width=0.25), pack_dir, tmp_path / "run",
              quiet=True)


# ----------------------------------------------------------------------------------------------
# Helpers


def test_sampler_covers_each_epoch_and_restores() -> None:
    sampler = BatchSampler(count=10, batch=4, seed=3)
    first = np.concatenate([sampler.next_indices() for _ in range(5)])  # 20 = two epochs
    assert sorted(first[:10]) == list(range(10)) and sorted(first[10:]) == list(range(10))
    state = sampler.state_dict()
    ahead = [sampler.next_indices() for _ in range(3)]
    restored = BatchSampler(count=10, batch=4, seed=3)
    restored.load_state_dict(state)
    for expected in ahead:
        assert np.array_equal(restored.next_indices(), expected)
    tiny = BatchSampler(count=3, batch=8, seed=0)  # a pack smaller than a batch still works
    assert len(tiny.next_indices()) == 8


def test_ema_moves_toward_the_model_and_copies_buffers() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    ema = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    ema.load_state_dict(model.state_dict())
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].running_mean.fill_(3.0)
    before = (ema[0].weight - model[0].weight).abs().sum().item()
    cfg = dataclasses.replace(TINY, ema_kimg=1.0, ema_rampup=0.0)
    beta = ema_beta(cfg, batch=100, images_seen=10_000)
    assert beta == pytest.approx(0.5 ** 0.1)  # 100 images of a 1000-image half-life
    update_ema(ema, model, beta)
    after = (ema[0].weight - model[0].weight).abs().sum().item()
    assert after == pytest.approx(before * beta, rel=1e-5)
    assert torch.equal(ema[1].running_mean, model[1].running_mean)
    # Ramp-up: at the start the half-life shrinks, so EMA follows G closely.
    ramped = dataclasses.replace(cfg, ema_rampup=0.05)
    assert ema_beta(ramped, 100, 1000) < ema_beta(ramped, 100, 100_000)


def test_label_flipping_and_instance_noise_schedule() -> None:
    real, fake = torch.ones(1000, 1, 2, 2), -torch.ones(1000, 1, 2, 2)
    torch.manual_seed(0)
    new_real, new_fake = flip_labels(real, fake, 0.1)
    swapped = (new_real[:, 0, 0, 0] < 0).float().mean().item()
    assert 0.07 < swapped < 0.13 and torch.equal(new_real + new_fake, torch.zeros_like(real))
    assert flip_labels(real, fake, 0.0)[0] is real
    cfg = dataclasses.replace(TINY, instance_noise=0.2, instance_noise_kimg=2.0)
    assert instance_noise_std(cfg, 0) == pytest.approx(0.2)
    assert instance_noise_std(cfg, 1000) == pytest.approx(0.1)
    assert instance_noise_std(cfg, 5000) == 0.0


def test_diffaugment_ops_and_adaptive_p() -> None:
    torch.manual_seed(0)
    x = (torch.rand(8, 3, 16, 16) * 2 - 1).requires_grad_(True)
    ops = parse_policy("color, translation,cutout")
    assert ops == ("color", "translation", "cutout")
    with pytest.raises(UserError, match="unknown DiffAugment"):
        parse_policy("color,zoom")
    assert diff_augment(x, ops, 0.0) is x  # p = 0: untouched
    y = diff_augment(x, ops, 1.0)
    assert y.shape == x.shape and not torch.equal(y, x)
    y.sum().backward()  # differentiable: G learns through the augmentation
    assert x.grad is not None and x.grad.abs().sum() > 0
    # Translation moves content by whole pixels and fills with zeros (mid-grey).
    image = torch.zeros(200, 1, 16, 16)
    image[:, :, 8, 8] = 1.0
    moved = translation(image, 1.0)
    assert torch.all(moved.sum(dim=(1, 2, 3)) <= 1.0)
    assert (moved[:, 0, 8, 8] == 0).any()  # some samples moved away from the centre
    # ADA: overconfident D on reals (all logits > 0) raises p; an unsure D lowers it.
    ada = AdaptiveP(target=0.6, speed_kimg=1.0, interval=2)
    for _ in range(2):
        ada.accumulate(torch.ones(50))
    ada.maybe_update(batch_images=50)
    assert ada.p == pytest.approx(0.1)  # 2 steps x 50 images / 1000
    for _ in range(2):
        ada.accumulate(-torch.ones(50))
    ada.maybe_update(batch_images=50)
    assert ada.p == pytest.approx(0.0)


def test_checkpoints_are_listed_by_their_content_and_pruned(tmp_path: Path) -> None:
    for images in (300, 100, 200):
        ckpt.save_checkpoint(tmp_path, {"w": torch.tensor([images])}, {"images_seen": images})
    # A half-written checkpoint (no sidecar yet) and a temporary file do not count.
    torch.save({}, tmp_path / "ckpt-000000000999.pt")
    (tmp_path / "ckpt-x.pt.123.tmp").write_bytes(b"partial")
    assert [ckpt.read_meta(p)["images_seen"] for p in ckpt.list_checkpoints(tmp_path)] == [
        100, 200, 300]
    latest = ckpt.latest_checkpoint(tmp_path)
    assert latest is not None and ckpt.load_checkpoint(latest)["w"].item() == 300
    removed = ckpt.prune_checkpoints(tmp_path, keep=2)
    assert len(removed) == 1 and not list(tmp_path.glob("*.tmp"))
    assert len(ckpt.list_checkpoints(tmp_path)) == 2


def test_rng_states_round_trip() -> None:
    import random

    state = ckpt.capture_rng()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    ckpt.restore_rng(state)
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]


def test_grid_and_curves(tmp_path: Path) -> None:
    grid = make_grid(np.full((5, 4, 4, 3), 200, dtype=np.uint8), pad=1)
    assert grid.shape == (2 * 5 + 1, 3 * 5 + 1, 3)  # 5 images -> 2 rows x 3 columns
    rows = [{"kimg": k, "loss_d": 1.0 / (k + 1), "loss_g": 1.0, "acc_real": 0.5,
             "acc_fake": 0.5} for k in range(5)]
    assert plot_losses(rows, tmp_path / "losses.png").stat().st_size > 1000


def test_pixel_levels_and_unit_floats_are_each_others_inverse() -> None:
    levels = torch.arange(256, dtype=torch.uint8).reshape(1, 16, 16, 1).expand(2, 16, 16, 3)
    floats = unit_floats(levels)  # every level, both ends included
    assert floats.shape == (2, 3, 16, 16) and floats.dtype == torch.float32
    assert floats.min() == -1.0 and floats.max() == 1.0
    assert torch.equal(pixel_levels(floats), levels)
    # G overshoots [-1, 1]: clipped to levels 0 and 255; in between, the nearest level.
    overshoot = torch.tensor([-1.5, 1.5, 2 / 255 - 1]).reshape(1, 3, 1, 1)
    assert to_uint8_nhwc(overshoot).ravel().tolist() == [0, 255, 1]


def test_batch_reader_gives_the_same_batches_from_memory_map_and_device_copy(
    pack_dir: Path,
) -> None:
    images, _ = pack.open_pack(pack_dir)
    device = torch.device("cpu")  # the resident path is for CUDA, but runs anywhere
    readers = [BatchReader(images, BatchSampler(96, 16, seed=5), Dist(), device, resident)
               for resident in (False, True)]
    try:
        for _ in range(8):  # 128 images: across an epoch boundary
            mapped, resident = (reader.next() for reader in readers)
            assert mapped.dtype == torch.uint8 and mapped.shape == (16, 32, 32, 3)
            assert torch.equal(mapped, resident)
        # Both report where the stream stands before any batch that was read ahead.
        assert readers[0].state_dict() == readers[1].state_dict() == {"epoch": 1, "position": 32}
    finally:
        for reader in readers:
            reader.close()
    batch = to_device_batch(torch.full((2, 4, 4, 3), 255, dtype=torch.uint8),
                            Precision(device, None, channels_last=False))
    assert batch.shape == (2, 3, 4, 4) and torch.all(batch == 1.0) and batch.is_contiguous()


def test_diversity_is_zero_for_identical_samples_and_grows_with_spread() -> None:
    same = torch.zeros(8, 3, 4, 4)
    assert diversity(same) == 0.0
    torch.manual_seed(0)
    small, large = torch.randn(8, 3, 4, 4) * 0.1, torch.randn(8, 3, 4, 4)
    assert 0 < diversity(small) < diversity(large)


def test_progress_bar_survives_a_last_batch_past_the_target(pack_dir: Path, tmp_path: Path,
                                                            capsys) -> None:
    # 0.1 kimg is not a multiple of the batch: the last step overshoots the target, which once
    # crashed tqdm's display (quiet runs never drew the bar, so only real users met it).
    cfg = dataclasses.replace(TINY, kimg=0.1)
    report = train(cfg, pack_dir, tmp_path / "run", quiet=False)
    assert report.kimg_done >= 0.1
    assert "kimg" in capsys.readouterr().err


def test_a_run_that_starts_collapsed_warns(pack_dir: Path, tmp_path: Path, capsys) -> None:
    """A G that never learns draws near-identical samples from the start; the warning compares
    them with the diversity of real images, so it fires (it used to compare with the run's own
    best, which a run collapsed from the start never had)."""
    cfg = dataclasses.replace(TINY, lr_g=1e-12, lr_d=1e-12, ema_kimg=0.0, collapse_ratio=0.5)
    train(cfg, pack_dir, tmp_path / "run", quiet=True)
    rows = [json.loads(line) for line in (tmp_path / "run/stats.jsonl").read_text().splitlines()]
    assert all(row["collapse_warning"] for row in rows)
    assert "less diverse than the real images" in capsys.readouterr().out


@pytest.mark.parametrize("family", ["fastgan", "r3gan"])
def test_new_families_train_by_name_and_resume_exactly(pack_dir: Path, tmp_path: Path,
                                                       family: str) -> None:
    """FastGAN (hinge, DiffAugment, D's reconstruction loss) and R3GAN (RpGAN with R1 and R2
    every step, cosine lr and gamma schedules): a split run equals a straight one."""
    common = dict(kimg=0.064, tick_kimg=0.032, checkpoint_kimg=0.032, snapshot_kimg=0.032,
                  width=0.0625, ada_target=0.0, label_flip=0.0, instance_noise=0.0,
                  real_label=1.0)
    recipes = {
        "fastgan": dict(model="fastgan", loss="hinge", diffaugment="color,translation"),
        "r3gan": dict(model="r3gan", loss="rpgan", diffaugment="", r1_gamma=1.0, r2_gamma=1.0,
                      reg_interval=1, lr_decay="cos:1->0.25@0.064",
                      gamma_decay="0.5->0.1@0.064", beta1=0.0, beta2=0.99),
    }
    cfg = dataclasses.replace(TINY, **common, **recipes[family])
    whole = train(cfg, pack_dir, tmp_path / "whole", quiet=True)
    train(dataclasses.replace(cfg, kimg=0.032), pack_dir, tmp_path / "split", quiet=True)
    train(cfg, pack_dir, tmp_path / "split", quiet=True)
    assert whole.steps == 4 and all(np.isfinite(v) for v in whole.final_losses.values())
    a, b = _latest_state(tmp_path / "whole"), _latest_state(tmp_path / "split")
    for key in ("G", "D", "G_ema", "opt_g", "opt_d"):
        _assert_same_tensors(a[key], b[key], key)
    generator, spec = load_generator(whole.generator_dir)
    assert spec.name == family and generator(torch.randn(2, cfg.nz)).shape == (2, 3, 32, 32)
    if family == "r3gan":  # the schedule reached the optimizer: the last step ran at 0.048 kimg
        scale = parse_schedule(cfg.lr_decay, "train.lr_decay").value(0.048)
        assert scale < 0.5 and a["opt_g"]["param_groups"][0]["lr"] == pytest.approx(
            cfg.lr_g * scale)


def test_a_torn_stats_line_is_dropped_and_the_run_resumes(pack_dir: Path, tmp_path: Path,
                                                          capsys) -> None:
    half = dataclasses.replace(TINY, kimg=0.064)
    train(half, pack_dir, tmp_path / "run", quiet=True)
    stats = tmp_path / "run/stats.jsonl"
    stats.write_text(stats.read_text() + '{"kimg": 0.09, "loss_d"')  # killed mid-append
    report = train(TINY, pack_dir, tmp_path / "run", quiet=True)
    assert report.resumed_from_kimg == pytest.approx(0.064)
    assert "stats.jsonl:3 is not a whole JSON line; dropped" in capsys.readouterr().out
    kimgs = [json.loads(line)["kimg"] for line in stats.read_text().splitlines()]
    assert kimgs == [0.032, 0.064, 0.096, 0.128]


def test_checkpoints_land_every_checkpoint_kimg_whatever_the_tick(pack_dir: Path,
                                                                   tmp_path: Path) -> None:
    # Ticks every 0.048 kimg, checkpoints every 0.032: once they had to wait for a tick.
    cfg = dataclasses.replace(TINY, kimg=0.128, tick_kimg=0.048, checkpoint_kimg=0.032,
                              snapshot_kimg=0.032, keep_checkpoints=10)
    train(cfg, pack_dir, tmp_path / "run", quiet=True)
    saved = [ckpt.read_meta(p)["images_seen"]
             for p in ckpt.list_checkpoints(tmp_path / "run/checkpoints")]
    assert saved == [32, 64, 96, 128]


def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(pack_dir: Path,
                                                                  tmp_path: Path,
                                                                  capsys) -> None:
    cfg = dataclasses.replace(TINY, checkpoint_kimg=0.032, keep_checkpoints=3)
    train(cfg, pack_dir, tmp_path / "whole", quiet=True)
    train(dataclasses.replace(cfg, kimg=0.064), pack_dir, tmp_path / "split", quiet=True)
    newest = ckpt.latest_checkpoint(tmp_path / "split/checkpoints")
    newest.write_bytes(newest.read_bytes()[:100])  # a bad sector, a disk error
    report = train(cfg, pack_dir, tmp_path / "split", quiet=True)
    assert report.resumed_from_kimg == pytest.approx(0.032)
    assert f"checkpoint {newest.name} cannot be read" in capsys.readouterr().out
    whole, split = _latest_state(tmp_path / "whole"), _latest_state(tmp_path / "split")
    for key in ("G", "D", "opt_g", "opt_d"):
        _assert_same_tensors(whole[key], split[key], key)


def _digests(folder: Path) -> dict[str, str]:
    import hashlib

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_resume_from_a_checkpoint_kept_elsewhere(pack_dir: Path, tmp_path: Path) -> None:
    """train.resume_from: a new run folder continues from another folder's newest checkpoint
    (a Kaggle input, read-only), which is read and never written; it then trains on exactly as
    the original run would have: the same weights as a straight run of the same length."""
    cfg = dataclasses.replace(TINY, amp="off")
    first = train(dataclasses.replace(cfg, kimg=0.064), pack_dir, tmp_path / "kept", quiet=True)
    assert first.kimg_done == 0.064
    before = _digests(tmp_path / "kept")
    resumed = train(dataclasses.replace(cfg, resume_from=str(tmp_path / "kept")), pack_dir,
                    tmp_path / "new", quiet=True)
    assert resumed.resumed_from_kimg == 0.064 and resumed.kimg_done == 0.128
    assert _digests(tmp_path / "kept") == before  # the source is untouched
    straight = train(cfg, pack_dir, tmp_path / "straight", quiet=True)
    _assert_same_tensors(_latest_state(tmp_path / "new")["G"],
                         _latest_state(tmp_path / "straight")["G"], "G")
    assert straight.kimg_done == resumed.kimg_done
    with pytest.raises(UserError, match="holds no readable checkpoint"):
        train(dataclasses.replace(cfg, resume_from=str(tmp_path / "straight/tensorboard")),
              pack_dir, tmp_path / "other", quiet=True)


def test_budget_minutes_keeps_time_for_generating(pack_dir: Path, tmp_path: Path) -> None:
    """A budget that the estimated delivery of 10 million images already exceeds stops
    training at its first check; the estimate grows with the image count."""
    from pipeline.deliver.generate import PNG_LEVEL
    from pipeline.gan.budget import GENERATE_PNG_LEVEL, delivery_seconds

    assert GENERATE_PNG_LEVEL == PNG_LEVEL  # the probe encodes as generate does

    spec = spec_from_config(TINY, 32, 3)
    small, large = (delivery_seconds(spec, n, torch.device("cpu")) for n in (100, 100_000))
    assert 0 < small < large
    cfg = dataclasses.replace(TINY, amp="off", budget_minutes=1.0, kimg=10.0)
    report = train(cfg, pack_dir, tmp_path / "run", quiet=True, deliver_count=10_000_000)
    assert report.out_of_time and report.steps == 1
    assert report.stopped_by.startswith("train.budget_minutes=1, ")
    assert "kept for generating 10,000,000 images" in report.stopped_by


def test_adam_is_fused_on_cpu_and_follows_the_per_tensor_rule() -> None:
    """The training optimizer is torch's fused Adam on CPU (one kernel for all tensors), and
    ten steps of it leave the weights where ten steps of the default per-tensor loop do."""
    from pipeline.gan.state import adam

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8),
                              torch.nn.Conv2d(8, 1, 3))
    twin = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8),
                               torch.nn.Conv2d(8, 1, 3))
    twin.load_state_dict(net.state_dict())
    start = net[0].weight.detach().clone()
    fused = adam(net, 2e-4, (0.5, 0.999), torch.device("cpu"))
    loop = torch.optim.Adam(twin.parameters(), lr=2e-4, betas=(0.5, 0.999), foreach=False)
    assert fused.defaults["fused"] is True
    x = torch.randn(4, 3, 12, 12)
    for _ in range(10):
        for model, optimizer in ((net, fused), (twin, loop)):
            model(x).square().mean().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    for a, b in zip(net.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert (net[0].weight - start).abs().max() > 1e-4  # ten steps of 2e-4 moved the weights
