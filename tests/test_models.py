"""Networks: the seeds' exact sizes, shapes and ranges for every family, saving and loading."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from pipeline.core.config import TrainConfig
from pipeline.core.errors import UserError
from pipeline.gan.models import (
    MODELS,
    ModelSpec,
    build_discriminator,
    build_generator,
    count_parameters,
    fold_batchnorm,
    get_model,
    load_generator,
    save_generator,
    spec_from_config,
)
from pipeline.gan.models.dcgan import LatentProjection, channels_at
from pipeline.gan.resample import resize_lanczos


def _spec(name: str, size: int, channels: int = 3, **extra: object) -> ModelSpec:
    """A small spec: narrow networks so every shape test runs in well under a second."""
    defaults: dict = {"nz": 16, "width": 1 / 16}
    if name == "stylegan2":
        defaults = {"nz": 16, "w_dim": 16, "channel_base": 256, "channel_max": 16}
    return ModelSpec(name=name, size=size, channels=channels, **{**defaults, **extra})


def test_dcgan_128_matches_seed_004_parameter_counts() -> None:
    spec = ModelSpec("dcgan", size=128, channels=3, nz=128, width=1.0)
    assert count_parameters(build_generator(spec)) == 13_275_939
    assert count_parameters(build_discriminator(spec)) == 2_796_800


def test_mlp_matches_seed_001_parameter_counts() -> None:
    spec = ModelSpec("mlp", size=28, channels=1, nz=100, width=1.0)
    # G: 100-256-512-1024-784 and D: 784-1024-512-256-1, all with biases
    assert count_parameters(build_generator(spec)) == 1_486_352
    assert count_parameters(build_discriminator(spec)) == 1_460_225


CASES = [(name, size, channels) for name in MODELS for size in (32, 64, 128) for channels in (1, 3)]
CASES += [("dcgan", 256, 3), ("dcgan", 28, 1), ("mlp", 28, 1)]


def test_dcgan_28_starts_from_a_7x7_map() -> None:
    """The teaching size: 7 -> 14 -> 28, and D ends with a 7x7 "fully connected" conv."""
    spec = ModelSpec("dcgan", size=28, channels=1, nz=100, width=0.5)
    first = build_generator(spec).model[0]
    last = build_discriminator(spec).model[-1]
    assert (first.kernel_size, last.kernel_size) == ((7, 7), (7, 7))


def test_dcgan_channels_are_multiples_of_8() -> None:
    """4096/r and 2048/r times the width, rounded to a multiple of 8 from 8 up (bf16 kernels):
    at 28 px and width 0.25, G 146.3 -> 144, 73.1 -> 72, 36.6 -> 40 and D 36.6 -> 40, 73.1 -> 72;
    tiny widths keep their few channels."""
    spec = ModelSpec("dcgan", size=28, channels=1, nz=100, width=0.25)
    convs = (torch.nn.Conv2d, torch.nn.ConvTranspose2d)
    g_out = [m.out_channels for m in build_generator(spec).modules() if isinstance(m, convs)]
    d_out = [m.out_channels for m in build_discriminator(spec).modules() if isinstance(m, convs)]
    assert (g_out, d_out) == ([144, 72, 40, 1], [40, 72, 1])
    assert [channels_at(4096, r, 1 / 64) for r in (4, 8, 16, 32)] == [16, 8, 4, 2]


def test_dcgan_latent_projection_is_the_transposed_conv() -> None:
    """G's first layer is z @ W instead of ConvTranspose2d(nz, c, k, 1, 0) on a 1x1 map: a plain
    ConvTranspose2d's state dict loads into it and both give the same map."""
    torch.manual_seed(0)
    plain = torch.nn.ConvTranspose2d(100, 24, 7, 1, 0, bias=False)
    projection = LatentProjection(100, 24, 7)
    projection.load_state_dict(plain.state_dict())
    z = torch.randn(5, 100, 1, 1)
    with torch.no_grad():
        assert torch.allclose(projection(z), plain(z), atol=1e-5)
        assert projection(z).shape == (5, 24, 7, 7)


@pytest.mark.parametrize("name,size,channels", CASES)
def test_shapes_and_ranges(name: str, size: int, channels: int) -> None:
    torch.manual_seed(0)
    spec = _spec(name, size, channels)
    generator, discriminator = build_generator(spec).eval(), build_discriminator(spec)
    with torch.no_grad():
        images = generator(torch.randn(2, spec.nz), truncation=0.7)
        logits = discriminator(images)
    assert images.shape == (2, channels, size, size)
    assert images.min() >= -1 and images.max() <= 1
    assert logits.shape == (2,) and torch.isfinite(logits).all()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_channels_last_inputs(name: str) -> None:
    """Channels-last tensors (the GPU fast path) go through without .view errors."""
    spec = _spec(name, 32)
    generator = build_generator(spec).to(memory_format=torch.channels_last)
    discriminator = build_discriminator(spec).to(memory_format=torch.channels_last)
    images = generator(torch.randn(2, spec.nz)).contiguous(memory_format=torch.channels_last)
    assert discriminator(images).shape == (2,)


@pytest.mark.parametrize("size,grid", [(128, 16), (64, 8), (32, 4), (28, 7)])
def test_patchgan_head_gives_one_logit_per_patch(size: int, grid: int) -> None:
    spec = ModelSpec("dcgan", size=size, channels=3, nz=8, width=0.125, d_head="patch")
    logits = build_discriminator(spec)(torch.randn(2, 3, size, size))
    assert logits.shape == (2, grid * grid)


def test_patchgan_head_is_dcgan_only() -> None:
    with pytest.raises(UserError, match="d_head 'patch' needs model dcgan"):
        build_discriminator(ModelSpec("stylegan2", size=32, channels=3, nz=8, d_head="patch"))
    with pytest.raises(UserError, match="d_head must be one of global, patch"):
        ModelSpec("dcgan", size=32, channels=3, nz=8, d_head="pixel")


def test_fold_batchnorm_keeps_the_function_and_removes_every_bn() -> None:
    """Generation folds BN into the convolutions; conv (D) and transposed conv (G) alike."""
    torch.manual_seed(0)
    spec = ModelSpec("dcgan", size=32, channels=3, nz=16, width=0.25)
    for net, x in ((build_generator(spec), torch.randn(4, 16)),
                   (build_discriminator(spec), torch.rand(4, 3, 32, 32) * 2 - 1)):
        for bn in (m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.5, 0.5)  # as after training, not the identity stats
            bn.running_var.uniform_(0.5, 2.0)
            bn.bias.data.uniform_(-0.2, 0.2)
        net.eval()
        with torch.no_grad():
            before = net(x)
            after = fold_batchnorm(net)(x)
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
        torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-4)


def test_bad_names_and_sizes_raise_user_errors() -> None:
    with pytest.raises(UserError) as info:
        get_model("dcgan128")
    assert all(name in str(info.value) for name in ("mlp", "dcgan", "stylegan2"))
    with pytest.raises(UserError, match="dcgan"):
        build_generator(ModelSpec("dcgan", size=48, channels=3, nz=8))
    with pytest.raises(UserError, match="channels"):
        ModelSpec("dcgan", size=64, channels=2, nz=8)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_save_load_round_trip(name: str, tmp_path: Path) -> None:
    torch.manual_seed(1)
    spec = _spec(name, 32)
    generator = build_generator(spec).eval()
    save_generator(generator, spec, tmp_path)
    assert json.loads((tmp_path / "generator.json").read_text()) == asdict(spec)
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]  # no leftovers
    loaded, loaded_spec = load_generator(tmp_path, "cpu")
    assert loaded_spec == spec and not loaded.training
    z = torch.randn(3, spec.nz)
    with torch.no_grad():
        assert torch.equal(generator(z), loaded(z))


def test_a_generator_trained_below_the_delivery_size_is_loaded_upsampled(tmp_path: Path) -> None:
    """spec.output_size 64 on a 32 px generator: loading gives 64 px images, the Lanczos
    upsample of the 32 px ones clamped to [-1, 1]; the saved weights are the 32 px G's alone."""
    torch.manual_seed(2)
    spec = _spec("fastgan", 32, output_size=64)
    generator = build_generator(spec).eval()
    save_generator(generator, spec, tmp_path)
    loaded, loaded_spec = load_generator(tmp_path, "cpu")
    assert loaded_spec.delivered_size == 64 and loaded_spec.size == 32
    z = torch.randn(4, spec.nz)
    with torch.no_grad():
        small, big = generator(z), loaded(z)
    assert small.shape == (4, 3, 32, 32) and big.shape == (4, 3, 64, 64)
    expected = resize_lanczos(small, 64).clamp(-1, 1)
    assert torch.allclose(big, expected, atol=1e-6)
    assert big.min() >= -1 and big.max() <= 1
    # The upsampled image keeps the small one: downscaling it by 2x2 means comes back close.
    assert (torch.nn.functional.avg_pool2d(big, 2) - small).abs().mean() < 0.02
    for bad in (16, 27):  # half the side; an odd margin has no centre
        with pytest.raises(UserError, match=f"output_size {bad} must be 0, above size 32"):
            _spec("dcgan", 32, output_size=bad)


def test_a_generator_trained_on_a_band_is_loaded_cropped(tmp_path: Path) -> None:
    """spec.output_size 28 on a 32 px generator (28-px data padded to fastgan's smallest side):
    loading gives the centre 28 x 28 of the 32 px images, pixel for pixel."""
    torch.manual_seed(3)
    spec = _spec("fastgan", 32, output_size=28)
    generator = build_generator(spec).eval()
    save_generator(generator, spec, tmp_path)
    loaded, loaded_spec = load_generator(tmp_path, "cpu")
    assert (loaded_spec.size, loaded_spec.delivered_size) == (32, 28)
    z = torch.randn(3, spec.nz)
    with torch.no_grad():
        full, cropped = generator(z), loaded(z)
    assert full.shape == (3, 3, 32, 32) and cropped.shape == (3, 3, 28, 28)
    assert torch.equal(cropped, full[:, :, 2:30, 2:30])


def test_load_errors_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="train"):
        load_generator(tmp_path)
    spec = _spec("dcgan", 32)
    save_generator(build_generator(spec), spec, tmp_path)
    # Weights from a wider network do not fit the spec on disk.
    wider = _spec("dcgan", 32, width=1 / 8)
    torch.save(build_generator(wider).state_dict(), tmp_path / "generator.pt")
    with pytest.raises(UserError, match="does not match"):
        load_generator(tmp_path)


def test_spec_from_config_uses_train_section() -> None:
    config = TrainConfig(model="dcgan", nz=64, width=0.5)
    spec = spec_from_config(config, size=64, channels=3)
    assert (spec.name, spec.size, spec.channels, spec.nz, spec.width) == ("dcgan", 64, 3, 64, 0.5)
    assert spec.channel_base == config.channel_base
    assert spec_from_config(config, 64, 3, output_size=64).output_size == 0  # same side: none
    assert spec_from_config(config, 64, 3, output_size=128).delivered_size == 128


@pytest.mark.parametrize("name", ["mlp", "dcgan", "fastgan", "r3gan"])
def test_d_width_narrows_only_the_discriminator(name: str) -> None:
    same = _spec(name, 32, width=0.25)
    narrow = _spec(name, 32, width=0.25, d_width=0.125)
    assert same.disc_width == 0.25 and narrow.disc_width == 0.125
    # G is the same network; D has about a quarter of the weights (channels halved twice over).
    torch.manual_seed(0)
    g_same = build_generator(same)
    torch.manual_seed(0)
    g_narrow = build_generator(narrow)
    for a, b in zip(g_same.state_dict().values(), g_narrow.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    d_same = count_parameters(build_discriminator(same))
    d_narrow = count_parameters(build_discriminator(narrow))
    assert d_narrow < 0.5 * d_same
    assert build_discriminator(narrow)(torch.rand(2, 3, 32, 32) * 2 - 1).shape[0] == 2
    config = TrainConfig(model=name, width=0.25, d_width=0.125)
    assert spec_from_config(config, 32, 3).disc_width == 0.125
    with pytest.raises(UserError, match="d_width must be >= 0"):
        ModelSpec(name=name, size=32, channels=3, nz=16, d_width=-1)


# ----------------------------------------------------------------------------------------------
# StyleGAN2 properties


def test_stylegan2_truncation_zero_gives_the_average_image() -> None:
    """psi = 0 puts every latent at w_avg, so (with fixed noise) all images are the same."""
    torch.manual_seed(2)
    generator = build_generator(_spec("stylegan2", 32))
    generator(torch.randn(8, 16))  # one training-mode pass moves w_avg off zero
    generator.eval()
    with torch.no_grad():
        images = generator(torch.randn(4, 16), truncation=0.0)
        free = generator(torch.randn(4, 16))
    assert torch.allclose(images, images[:1].expand_as(images), atol=1e-6)
    assert not torch.allclose(free, free[:1].expand_as(free), atol=1e-3)
    assert generator.w_avg.abs().sum() > 0


def test_stylegan2_demodulation_normalises_each_output_channel() -> None:
    from pipeline.gan.models.stylegan2 import ModulatedConv2d

    torch.manual_seed(3)
    conv = ModulatedConv2d(c_in=5, c_out=7, kernel=3, w_dim=6)
    weight = conv.modulated_weight(torch.randn(4, 6) * 3)  # (N, out, in, k, k)
    norms = weight.square().sum(dim=(2, 3, 4)).sqrt()  # (N, out)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-4)


@pytest.mark.parametrize("up", [False, True])
def test_stylegan2_fused_and_unfused_modconv_agree(up: bool) -> None:
    """The grouped-conv form (paper) and the scale-activations form compute the same thing."""
    from pipeline.gan.models.stylegan2 import ModulatedConv2d

    torch.manual_seed(4)
    conv = ModulatedConv2d(c_in=5, c_out=7, kernel=3, w_dim=6, up=up)
    x, w = torch.randn(3, 5, 8, 8), torch.randn(3, 6)
    unfused = conv(x, w)
    conv.fused = True
    assert unfused.shape == (3, 7, 16 if up else 8, 16 if up else 8)
    assert torch.allclose(conv(x, w), unfused, atol=1e-5)


def test_stylegan2_eval_is_reproducible_and_returns_ws() -> None:
    """Eval mode uses the stored noise, so an image depends on its z alone (generate by seed)."""
    torch.manual_seed(5)
    generator = build_generator(_spec("stylegan2", 32)).eval()
    z = torch.randn(3, 16)
    with torch.no_grad():
        batch = generator(z)
        single = generator(z[1:2])
        images, ws = generator(z, return_ws=True)
    assert torch.allclose(batch[1:2], single, atol=1e-5)
    assert torch.equal(images, batch) and ws.shape == (3, generator.num_ws, 16)


def test_stylegan2_trains_a_step_with_r1_and_path_length() -> None:
    """One D step (logistic + R1) and one G step (+ path length) stay finite and change weights."""
    from pipeline.gan.losses import get_loss, path_length_penalty, r1_penalty

    torch.manual_seed(6)
    spec = _spec("stylegan2", 32)
    generator, discriminator = build_generator(spec), build_discriminator(spec)
    opt_g = torch.optim.Adam(generator.parameters(), lr=2e-3, betas=(0.0, 0.99))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=2e-3, betas=(0.0, 0.99))
    loss = get_loss("nonsaturating")
    reals = (torch.rand(4, 3, 32, 32) * 2 - 1).requires_grad_(True)
    # D step: logistic loss on reals and detached fakes, plus R1 on reals (gamma = 1).
    real_logits = discriminator(reals)
    fakes = generator(torch.randn(4, 16))
    d_total = loss.d_loss(real_logits, discriminator(fakes.detach()))
    d_total = d_total + 0.5 * r1_penalty(real_logits, reals)
    opt_d.zero_grad()
    d_total.backward()
    opt_d.step()
    # G step: non-saturating loss plus the path-length penalty through ws.
    before = generator.blocks[-1].torgb.bias.detach().clone()
    images, ws = generator(torch.randn(4, 16), return_ws=True)
    penalty, mean_length = path_length_penalty(images, ws, torch.zeros(()))
    g_total = loss.g_loss(None, discriminator(images)) + 2.0 * penalty
    opt_g.zero_grad()
    g_total.backward()
    opt_g.step()
    assert torch.isfinite(d_total) and torch.isfinite(g_total) and mean_length > 0
    assert not torch.equal(before, generator.blocks[-1].torgb.bias)
    params = list(generator.parameters()) + list(discriminator.parameters())
    assert all(torch.isfinite(p).all() for p in params)
