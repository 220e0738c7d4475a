"""FastGAN: shapes, the SLE gates, the reconstruction loss of D, and building via the registry."""

from __future__ import annotations

import pytest
import torch

from pipeline.core.errors import UserError
from pipeline.gan.models import (
    ModelSpec,
    build_discriminator,
    build_generator,
    count_parameters,
    fold_batchnorm,
    get_model,
)
from pipeline.gan.models.fastgan import Discriminator, Generator, SkipExcitation

NZ = 16  # latent size of the tiny test networks
WIDTH = 1 / 16  # channel multiplier: 4..64 channels, so every test runs in about a second


def _nets(size: int, channels: int = 3) -> tuple[Generator, Discriminator]:
    torch.manual_seed(0)
    return Generator(size, channels, NZ, WIDTH), Discriminator(size, channels, WIDTH)


@pytest.mark.parametrize("size", [32, 64, 128, 256])
def test_shapes_and_range_at_every_size(size: int) -> None:
    generator, discriminator = _nets(size)
    images = generator(torch.randn(2, NZ))
    logits, recon = discriminator(images, aux=True)
    assert images.shape == (2, 3, size, size)
    assert images.min() >= -1 and images.max() <= 1
    assert logits.shape == (2,) and recon.shape == ()
    assert discriminator(images).shape == (2,)  # aux=False: logits alone


@pytest.mark.parametrize("size,gates", [(32, 0), (64, 1), (128, 2), (256, 3)])
def test_sle_pairs_present_at_each_size(size: int, gates: int) -> None:
    """G gates 64, 128, 256 from 8, 16, 32; D gates 8, 16, 32 from 64, 128, 256."""
    generator, discriminator = _nets(size)
    for net in (generator, discriminator):
        assert sum(isinstance(m, SkipExcitation) for m in net.modules()) == gates


def test_generator_parameter_count_by_hand() -> None:
    """32 px, width 1/16 (channels 4: 64, 8: 32, 16: 16, 32: 8), nz 16, RGB."""
    init = 16 * 128 * 16 + 2 * 128  # ConvT(16 -> 2*64, 4x4) + BN
    up8 = 64 * 64 * 9 + 2 * 64 + 1 + 32 * 64 * 9 + 2 * 64 + 1  # comp: 2 convs, 2 BN, 2 noise
    up16 = 32 * 32 * 9 + 2 * 32  # plain: conv(32 -> 2*16) + BN
    up32 = 16 * 16 * 9 + 2 * 16 + 1 + 8 * 16 * 9 + 2 * 16 + 1
    to_rgb = 8 * 3 * 9 + 3
    generator, _ = _nets(32)
    assert count_parameters(generator) == init + up8 + up16 + up32 + to_rgb == 101_599


def test_128_builds_with_the_recorded_parameter_counts() -> None:
    spec = ModelSpec(name="fastgan", size=128, channels=3, nz=128, width=0.25)
    assert count_parameters(build_generator(spec)) == 2_254_777
    assert count_parameters(build_discriminator(spec)) == 3_108_160


def test_recon_loss_is_positive_finite_and_trains_the_decoders() -> None:
    _, discriminator = _nets(64)
    reals = torch.rand(3, 3, 64, 64) * 2 - 1
    _, recon = discriminator(reals, aux=True)
    assert torch.isfinite(recon) and recon.item() > 0
    recon.backward()
    for decoder in (discriminator.decode_whole, discriminator.decode_part):
        grads = [p.grad for p in decoder.parameters()]
        assert all(g is not None for g in grads)
        assert sum(g.abs().sum().item() for g in grads) > 0


def test_one_adam_step_reduces_the_recon_loss_on_the_same_batch() -> None:
    _, discriminator = _nets(32)
    reals = torch.rand(4, 3, 32, 32) * 2 - 1
    optimiser = torch.optim.Adam(discriminator.parameters(), lr=1e-3, betas=(0.5, 0.999))
    torch.manual_seed(5)  # the same random quarter both times
    before = discriminator(reals, aux=True)[1]
    optimiser.zero_grad()
    before.backward()
    optimiser.step()
    torch.manual_seed(5)
    after = discriminator(reals, aux=True)[1]
    assert after.item() < before.item()


def test_zeroing_an_sle_changes_the_images() -> None:
    """With the gate's last conv zeroed every channel gets sigmoid(0) = 0.5: other images.

    Training mode: BN uses batch statistics (fresh running statistics would shrink the maps
    to ~1e-9 in eval mode); the noise strengths are still 0, so both passes are deterministic.
    """
    generator, _ = _nets(64)
    z = torch.randn(2, NZ)
    with torch.no_grad():
        gated = generator(z)
        generator.sles["64"].gate[3].weight.zero_()
        flat = generator(z)
        gate = generator.sles["64"].gate(torch.randn(2, 32, 8, 8))  # (2, c64, 1, 1)
    assert torch.equal(gate, torch.full_like(gate, 0.5))
    assert (gated - flat).abs().max() > 1e-3


def test_noise_is_random_in_training_and_fixed_in_eval() -> None:
    generator, _ = _nets(32)
    for module in generator.modules():
        if hasattr(module, "noise_const"):
            module.strength.data.fill_(0.5)
    z = torch.randn(2, NZ)
    assert not torch.equal(generator(z), generator(z))  # training: fresh noise
    generator.eval()
    with torch.no_grad():
        assert torch.equal(generator(z), generator(z))


def test_fold_batchnorm_keeps_the_generator() -> None:
    """Generation folds BN into G's convs; noise sits after BN so every BN folds."""
    generator, _ = _nets(64)
    for bn in (m for m in generator.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    generator.eval()
    z = torch.randn(3, NZ)
    with torch.no_grad():
        before = generator(z)
        after = fold_batchnorm(generator)(z)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in generator.modules())
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-4)


def test_channels_last_matches_contiguous() -> None:
    generator, discriminator = _nets(64)
    generator.eval(), discriminator.eval()
    z, reals = torch.randn(2, NZ), torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        images = generator(z)
        torch.manual_seed(3)
        logits, recon = discriminator(reals, aux=True)
        generator.to(memory_format=torch.channels_last)
        discriminator.to(memory_format=torch.channels_last)
        images_cl = generator(z)
        torch.manual_seed(3)
        logits_cl, recon_cl = discriminator(
            reals.contiguous(memory_format=torch.channels_last), aux=True
        )
    torch.testing.assert_close(images_cl, images, atol=1e-5, rtol=0)
    torch.testing.assert_close(logits_cl, logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(recon_cl, recon, atol=1e-5, rtol=0)


def test_registry_builds_it_and_names_the_allowed_sizes() -> None:
    family = get_model("fastgan")
    assert family.d_aux_loss and family.batchnorm and not family.has_mapping
    assert family.recipe["loss"] == "hinge" and family.recipe["batch_size"] == 8
    spec = ModelSpec(name="fastgan", size=64, channels=3, nz=32, width=0.25)
    images = build_generator(spec).eval()(torch.randn(2, 32))
    assert images.shape == (2, 3, 64, 64)
    with pytest.raises(UserError, match="32, 64, 128, 256"):
        build_generator(ModelSpec(name="fastgan", size=48, channels=3, nz=32))
    with pytest.raises(UserError, match="d_head 'patch'"):
        build_discriminator(ModelSpec(name="fastgan", size=64, channels=3, nz=32, d_head="patch"))


def test_recon_size_sets_the_decoders_output_sides() -> None:
    """0: the paper's min(size, 128) and min(size/2, 128); r: both at most r."""
    from pipeline.gan.models.fastgan import reconstruction_sides

    assert reconstruction_sides(64) == (64, 32) and reconstruction_sides(256) == (128, 128)
    assert reconstruction_sides(64, 16) == (16, 16) and reconstruction_sides(64, 32) == (32, 32)
    torch.manual_seed(0)
    discriminator = Discriminator(64, 3, WIDTH, recon_size=16)
    features = torch.randn(2, discriminator.decode_whole[0][1].in_channels, 8, 8)
    assert discriminator.decode_whole(features).shape == (2, 3, 16, 16)
    _, recon = discriminator(torch.rand(2, 3, 64, 64) * 2 - 1, aux=True)
    assert torch.isfinite(recon) and recon.item() > 0
    with pytest.raises(UserError, match="recon_size must be 0 or one of 16, 32, 64"):
        build_discriminator(ModelSpec(name="fastgan", size=64, channels=3, nz=16, recon_size=24))


def test_lazy_reconstruction_skips_or_scales_the_decoders_gradient() -> None:
    """train.recon_interval N: d_backward with aux_weight 0 never runs the decoders; on the
    steps that do, their gradient is N times the every-step one (the lazy R1 rule)."""
    from pipeline.gan.losses import get_loss
    from pipeline.gan.precision import Precision
    from pipeline.gan.steps import DiscriminatorPair, d_backward

    _, discriminator = _nets(32)
    discriminator.eval()  # spectral norm's power iteration would move between the calls
    pair = DiscriminatorPair(discriminator, aux=True)
    reals, fakes = torch.rand(4, 3, 32, 32) * 2 - 1, torch.rand(4, 3, 32, 32) * 2 - 1
    decoder_grads = {}
    for weight in (0.0, 1.0, 2.0):
        discriminator.zero_grad(set_to_none=True)
        torch.manual_seed(7)  # the same random quarter each time
        d_backward(pair, discriminator, get_loss("hinge"), reals, fakes, 1.0,
                   Precision(torch.device("cpu"), None, False), aux_weight=weight)
        decoder_grads[weight] = [p.grad for p in discriminator.decode_whole.parameters()]
    assert all(g is None for g in decoder_grads[0.0])
    for once, twice in zip(decoder_grads[1.0], decoder_grads[2.0]):
        torch.testing.assert_close(twice, 2 * once)


def test_reconstruction_weight_follows_the_lazy_rule_and_zero_turns_it_off() -> None:
    """train.recon_weight w, recon_interval N: w * N on every N-th D step, 0 on the others (the
    decoders skipped, as tested above); w = 0 never runs them. Hand-computed values."""
    from pipeline.gan.steps import reconstruction_skipped_sometimes, reconstruction_weight

    assert [reconstruction_weight(1.0, 1, step) for step in range(3)] == [1.0, 1.0, 1.0]
    assert [reconstruction_weight(2.0, 1, step) for step in range(3)] == [2.0, 2.0, 2.0]
    assert [reconstruction_weight(1.5, 2, step) for step in range(4)] == [3.0, 0.0, 3.0, 0.0]
    assert [reconstruction_weight(0.0, 1, step) for step in range(3)] == [0.0, 0.0, 0.0]
    # ... and DDP is told the decoders go without gradients exactly in the last two cases.
    skipped = {(1.0, 1): False, (2.0, 1): False, (1.5, 2): True, (0.0, 1): True}  # (w, N)
    assert {case: reconstruction_skipped_sometimes(*case) for case in skipped} == skipped


def test_the_pair_normalises_d_once_for_both_passes() -> None:
    """DiscriminatorPair computes the spectrally normalised weights once for reals and fakes:
    one power iteration a D step (as one D call makes), the same weights in both passes, and
    gradients that still reach every raw weight through both."""
    from pipeline.gan.steps import DiscriminatorPair

    torch.manual_seed(0)
    discriminator = Discriminator(64, 3, WIDTH, recon_size=16)
    single = Discriminator(64, 3, WIDTH, recon_size=16)
    single.load_state_dict(discriminator.state_dict())
    real, fake = torch.rand(2, 3, 64, 64) * 2 - 1, torch.rand(2, 3, 64, 64) * 2 - 1
    real_logits, fake_logits, recon = DiscriminatorPair(discriminator, aux=True)(real, fake)
    single_real, _ = single(real, aux=True)  # one call (decoders too): one power iteration
    u = {k: v for k, v in discriminator.state_dict().items() if k.endswith("_u")}
    assert u, "D has spectral norm"
    single_u = single.state_dict()
    for key, value in u.items():  # one power iteration, as in one single D call
        assert torch.equal(value, single_u[key]), key
    torch.testing.assert_close(real_logits, single_real)
    (real_logits.sum() - fake_logits.sum() + recon).backward()
    raw = [p for name, p in discriminator.named_parameters() if "original" in name]
    assert raw and all(p.grad is not None and p.grad.abs().sum() > 0 for p in raw)
