"""R3GAN networks: shapes, output range, fix-up init, [1, 2, 1] resampling, R1's double backward."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.core.errors import UserError
from pipeline.gan.models import (
    ModelSpec,
    build_discriminator,
    build_generator,
    check_families,
    count_parameters,
    get_model,
)
from pipeline.gan.models.r3gan import (
    Discriminator,
    Downsample,
    Generator,
    ResidualBlock,
    Upsample,
    binomial_kernel,
    blur,
    channels_at,
)

NZ = 16
WIDTH = 1 / 16  # 16-32 channels a stage: every test runs in well under a second


def _spec(size: int, channels: int = 3, width: float = WIDTH) -> ModelSpec:
    return ModelSpec("r3gan", size=size, channels=channels, nz=NZ, width=width)


def _wake_branches(net: nn.Module, std: float = 0.05) -> nn.Module:
    """Give every zero-initialised projection random weights, as after some training."""
    for block in net.modules():
        if isinstance(block, ResidualBlock):
            nn.init.normal_(block.project.weight, 0.0, std)
    return net


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes(size: int, channels: int) -> None:
    torch.manual_seed(0)
    spec = _spec(size, channels)
    generator, discriminator = build_generator(spec), build_discriminator(spec)
    images = generator(torch.randn(3, NZ), truncation=0.7)  # truncation is ignored
    assert images.shape == (3, channels, size, size)
    logits = discriminator(images)
    assert logits.shape == (3,) and torch.isfinite(logits).all()


def test_128_builds_with_the_stated_depth() -> None:
    spec = _spec(128)
    generator, discriminator = build_generator(spec), build_discriminator(spec)
    # 4, 8, 16, 32, 64, 128: six stages of one block each at a narrow width.
    assert len(generator.stages) == len(discriminator.stages) == 6
    assert sum(isinstance(m, ResidualBlock) for m in generator.modules()) == 6


def test_channel_table() -> None:
    assert [channels_at(r, 1.0) for r in (4, 32, 64, 128, 256)] == [512, 512, 256, 128, 64]
    assert channels_at(128, 0.25) == 32
    assert channels_at(128, 1 / 16) == 16  # 8 rounds up to the group size
    assert channels_at(4, 0.3) == 160  # 153.6 -> nearest multiple of 16


def test_parameter_counts_by_hand() -> None:
    """32 px at width 1/16: 32 channels at every stage, so no transition convs.

    Block (c 32, hidden 64, 4 groups of 16): expand 32*64 + 64, grouped 3x3 64*16*9 + 64,
    project 64*32 = 13,440. G: basis 16*512 + 512, 4 blocks, to_image 32*3 + 3. D: from_image
    3*32 + 32, 4 blocks, basis 512 + 1.
    """
    spec = _spec(32)
    assert count_parameters(build_generator(spec)) == 8_704 + 4 * 13_440 + 99
    assert count_parameters(build_discriminator(spec)) == 128 + 4 * 13_440 + 513


def test_generator_is_unbounded_in_training_and_clamped_in_eval() -> None:
    torch.manual_seed(1)
    generator = _wake_branches(Generator(32, 3, NZ, WIDTH))
    z = torch.randn(4, NZ) * 3  # a wide latent pushes some pixels past 1
    with torch.no_grad():
        raw = generator.train()(z)
        clamped = generator.eval()(z)
    assert raw.abs().max() > 1
    assert clamped.min() >= -1 and clamped.max() <= 1
    torch.testing.assert_close(clamped, raw.clamp(-1, 1))  # G has no randomness


def test_every_residual_block_is_the_identity_at_init() -> None:
    """Fix-up: the projecting conv starts at zero, so each branch outputs exact zeros."""
    torch.manual_seed(2)
    inputs: list[torch.Tensor] = []
    generator, discriminator = Generator(64, 3, NZ, WIDTH), Discriminator(64, 3, WIDTH)
    blocks = [m for net in (generator, discriminator) for m in net.modules()
              if isinstance(m, ResidualBlock)]
    for block in blocks:
        block.register_forward_hook(lambda _m, args, _out: inputs.append(args[0]))
    discriminator(generator(torch.randn(2, NZ)))
    assert len(inputs) == len(blocks) == 10  # 5 stages each
    for block, x in zip(blocks, inputs):
        branch = block.branch(x)
        assert torch.count_nonzero(branch) == 0
        assert torch.equal(block(x), x)


def test_fixup_scales_he_init_by_blocks() -> None:
    """Non-final branch convs: std = sqrt(2 / 1.04) * L^(-1/4) / sqrt(fan_in), here L = 16."""
    torch.manual_seed(3)
    block = ResidualBlock(256, total_blocks=16)
    expected = math.sqrt(2 / 1.04) * 16**-0.25 / math.sqrt(256)  # 0.69338 / 16
    assert block.expand.weight.std().item() == pytest.approx(expected, rel=0.02)
    expected_grouped = math.sqrt(2 / 1.04) * 0.5 / math.sqrt(16 * 9)  # 16 channels a group
    assert block.conv.weight.std().item() == pytest.approx(expected_grouped, rel=0.02)
    assert block.conv.groups == 32  # 512 hidden channels / 16


def test_downsample_keeps_constants_and_flattens_checkerboards() -> None:
    down = Downsample()
    constant = torch.full((1, 2, 8, 8), 0.7)
    torch.testing.assert_close(down(constant), torch.full((1, 2, 4, 4), 0.7))
    i, j = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    checker = ((-1.0) ** (i + j)).expand(1, 2, 8, 8)  # +-1, the highest frequency
    assert down(checker).abs().max() < 1e-6
    # A ramp 0..7 along the width: x[2i-1]/4 + x[2i]/2 + x[2i+1]/4 = 2i; the left edge
    # reflects x[-1] = x[1] = 1, giving (1 + 0 + 1) / 4 = 0.5.
    ramp = torch.arange(8.0).expand(1, 1, 8, 8)
    expected = torch.tensor([0.5, 2.0, 4.0, 6.0]).expand(1, 1, 4, 4)
    torch.testing.assert_close(down(ramp), expected)


def test_upsample_is_nearest_then_binomial_blur() -> None:
    torch.manual_seed(4)
    x = torch.randn(2, 3, 5, 6)
    explicit = blur(F.interpolate(x, scale_factor=2, mode="nearest"), binomial_kernel())
    torch.testing.assert_close(Upsample()(x), explicit)
    # Per axis [0, 4] -> [0, 1, 3, 4] (interior weights 1/4, 3/4; edges repeat).
    row = torch.tensor([0.0, 4.0]).expand(1, 1, 2, 2)
    expected = torch.tensor([0.0, 1.0, 3.0, 4.0]).expand(1, 1, 4, 4)
    torch.testing.assert_close(Upsample()(row), expected)


def test_r1_double_backward_reaches_the_weights() -> None:
    torch.manual_seed(5)
    discriminator = _wake_branches(Discriminator(32, 3, WIDTH))
    reals = (torch.rand(4, 3, 32, 32) * 2 - 1).requires_grad_(True)
    (grad,) = torch.autograd.grad(discriminator(reals).sum(), reals, create_graph=True)
    penalty = grad.square().sum(dim=(1, 2, 3)).mean()  # (), R1 before its gamma / 2
    penalty.backward()
    grads = [p.grad for p in discriminator.parameters() if p.grad is not None]
    assert penalty > 0 and all(torch.isfinite(g).all() for g in grads)
    assert discriminator.from_image.weight.grad.abs().sum() > 0
    for block in discriminator.modules():
        if isinstance(block, ResidualBlock):
            assert block.project.weight.grad.abs().sum() > 0


def test_registry_capabilities_and_errors() -> None:
    family = get_model("r3gan")
    assert family.regularisers == ("r1", "r2") and not family.has_mapping
    assert not family.batchnorm and family.channels_last
    assert family.recipe["loss"] == "rpgan" and family.recipe["beta1"] == 0.0
    check_families()
    assert isinstance(build_generator(_spec(64)), Generator)
    assert isinstance(build_discriminator(_spec(64)), Discriminator)
    with pytest.raises(UserError, match="r3gan.*48"):
        build_generator(ModelSpec("r3gan", size=48, channels=3, nz=NZ))


def test_channels_last_matches_contiguous() -> None:
    torch.manual_seed(6)
    generator = _wake_branches(Generator(32, 3, NZ, WIDTH)).eval()
    discriminator = _wake_branches(Discriminator(32, 3, WIDTH))
    z = torch.randn(2, NZ)
    with torch.no_grad():
        images = generator(z)  # (2, 3, 32, 32)
        logits = discriminator(images)
        generator.to(memory_format=torch.channels_last)
        discriminator.to(memory_format=torch.channels_last)
        images_cl = generator(z)
        logits_cl = discriminator(images.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(images_cl, images, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits_cl, logits, atol=1e-5, rtol=1e-5)
