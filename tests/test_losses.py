"""Losses against their formulas written out by hand, penalties against known gradients."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pipeline.core.errors import UserError
from pipeline.gan.losses import (
    LOSSES,
    get_loss,
    gradient_penalty,
    lazy_weight,
    path_length_penalty,
    r1_penalty,
    r2_penalty,
)

REAL = torch.tensor([2.0, -0.5, 1.0])  # D logits on three reals
FAKE = torch.tensor([-1.0, 0.5, 0.0])  # D logits on three fakes


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _softplus(x: float) -> float:
    return math.log(1 + math.exp(x))


def test_registry_has_every_loss_and_rejects_bad_names() -> None:
    assert set(LOSSES) == {
        "minimax", "nonsaturating", "lsgan", "ralsgan", "hinge", "wgan-gp", "rpgan"
    }
    with pytest.raises(UserError) as info:
        get_loss("wgan")
    for name in LOSSES:
        assert name in str(info.value)


def test_minimax_and_nonsaturating_are_cross_entropies() -> None:
    y = 0.8
    r, f = REAL.tolist(), FAKE.tolist()
    # -[y log s(r) + (1-y) log(1-s(r))] averaged, plus -log(1 - s(f)) averaged
    bce_real = _mean(
        [-(y * math.log(_sigmoid(v)) + (1 - y) * math.log(1 - _sigmoid(v))) for v in r]
    )
    bce_fake = _mean([-math.log(1 - _sigmoid(v)) for v in f])
    for name in ("minimax", "nonsaturating"):
        d = get_loss(name).d_loss(REAL, FAKE, real_label=y)
        assert d.item() == pytest.approx(bce_real + bce_fake, rel=1e-6)
    g_minimax = _mean([math.log(1 - _sigmoid(v)) for v in f])
    g_nonsat = _mean([-math.log(_sigmoid(v)) for v in f])
    assert get_loss("minimax").g_loss(None, FAKE).item() == pytest.approx(g_minimax, rel=1e-6)
    assert get_loss("nonsaturating").g_loss(None, FAKE).item() == pytest.approx(g_nonsat, rel=1e-6)


def test_lsgan_and_hinge_and_wgan() -> None:
    y = 0.9
    r, f = REAL.tolist(), FAKE.tolist()
    lsgan = get_loss("lsgan")
    d_ls = 0.5 * _mean([(v - y) ** 2 for v in r]) + 0.5 * _mean([v**2 for v in f])
    assert lsgan.d_loss(REAL, FAKE, y).item() == pytest.approx(d_ls, rel=1e-6)
    g_ls = 0.5 * _mean([(v - y) ** 2 for v in f])
    assert lsgan.g_loss(None, FAKE, y).item() == pytest.approx(g_ls, rel=1e-6)
    hinge = get_loss("hinge")
    d_hinge = _mean([max(0.0, 1 - v) for v in r]) + _mean([max(0.0, 1 + v) for v in f])
    assert hinge.d_loss(REAL, FAKE).item() == pytest.approx(d_hinge, rel=1e-6)
    assert hinge.g_loss(None, FAKE).item() == pytest.approx(-_mean(f))
    wgan = get_loss("wgan-gp")
    assert wgan.d_loss(REAL, FAKE).item() == pytest.approx(_mean(f) - _mean(r))
    assert wgan.g_loss(None, FAKE).item() == pytest.approx(-_mean(f))
    assert wgan.gradient_penalty_weight == 10.0
    assert all(LOSSES[n].gradient_penalty_weight == 0 for n in LOSSES if n != "wgan-gp")


def test_ralsgan_matches_seed_004_formula() -> None:
    """Seed 004's errD / errG code, written out with the labels tensor it used."""
    y = 0.8
    output_r, output_f = REAL.reshape(-1, 1), FAKE.reshape(-1, 1)
    labels = torch.full((3, 1), y)
    err_d = (torch.mean((output_r - torch.mean(output_f) - labels) ** 2)
             + torch.mean((output_f - torch.mean(output_r) + labels) ** 2)) / 2
    err_g = (torch.mean((output_r - torch.mean(output_f) + labels) ** 2)
             + torch.mean((output_f - torch.mean(output_r) - labels) ** 2)) / 2
    loss = get_loss("ralsgan")
    assert loss.uses_real_logits_in_g
    assert loss.d_loss(REAL, FAKE, y).item() == pytest.approx(err_d.item(), rel=1e-6)
    assert loss.g_loss(REAL, FAKE, y).item() == pytest.approx(err_g.item(), rel=1e-6)
    with pytest.raises(ValueError):
        loss.g_loss(None, FAKE, y)


def test_gradient_penalty_of_linear_critic_is_known() -> None:
    """D(x) = <a, x> has gradient a everywhere, so the penalty is (||a|| - 1)^2 exactly."""
    critic = nn.Sequential(nn.Flatten(), nn.Linear(2 * 3 * 3, 1, bias=False))
    with torch.no_grad():
        critic[1].weight.fill_(0.5)  # ||a|| = 0.5 * sqrt(18)
    real, fake = torch.randn(4, 2, 3, 3), torch.randn(4, 2, 3, 3)
    penalty = gradient_penalty(critic, real, fake)
    assert penalty.item() == pytest.approx((0.5 * math.sqrt(18) - 1) ** 2, rel=1e-5)
    penalty.backward()  # the graph reaches D's weights
    assert critic[1].weight.grad is not None


def test_r1_penalty_of_quadratic_critic() -> None:
    """D(x) = sum(x^2) has gradient 2x, so R1 = mean over images of sum(4 x^2)."""
    images = torch.randn(3, 1, 2, 2, requires_grad=True)
    logits = images.square().flatten(1).sum(1)
    expected = (4 * images.detach().square()).flatten(1).sum(1).mean()
    assert r1_penalty(logits, images).item() == pytest.approx(expected.item(), rel=1e-6)


def test_path_length_of_linear_map() -> None:
    """images = ws @ M: the penalty is finite and the running mean moves towards the lengths."""
    ws = torch.randn(5, 2, 4, requires_grad=True)  # (N, num_ws, w_dim)
    images = (ws.flatten(1) @ torch.randn(8, 3 * 4 * 4)).reshape(5, 3, 4, 4)
    penalty, mean = path_length_penalty(images, ws, torch.zeros(()), decay=0.5)
    assert torch.isfinite(penalty) and mean.item() > 0


def test_few_steps_of_hinge_separate_reals_from_fakes() -> None:
    """A tiny linear D trained with the hinge loss learns to score reals above fakes."""
    torch.manual_seed(0)
    d = nn.Linear(2, 1)
    reals, fakes = torch.randn(64, 2) + 2, torch.randn(64, 2) - 2
    optimiser = torch.optim.SGD(d.parameters(), lr=0.1)
    loss = get_loss("hinge")
    first = loss.d_loss(d(reals).squeeze(1), d(fakes).squeeze(1)).item()
    for _ in range(30):
        optimiser.zero_grad()
        value = loss.d_loss(d(reals).squeeze(1), d(fakes).squeeze(1))
        value.backward()
        optimiser.step()
    assert value.item() < 0.2 * first
    assert d(reals).mean() > d(fakes).mean()


def test_rpgan_pairs_real_i_with_fake_i() -> None:
    """real = [2, 0], fake = [0, 1]: differences real - fake are 2 and -1."""
    loss = get_loss("rpgan")
    real, fake = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0])
    d_expected = (_softplus(-2.0) + _softplus(1.0)) / 2  # softplus(-(r - f)) per pair
    g_expected = (_softplus(2.0) + _softplus(-1.0)) / 2  # softplus(-(f - r)) per pair
    assert loss.uses_real_logits_in_g
    assert loss.d_loss(real, fake).item() == pytest.approx(d_expected, rel=1e-6)
    assert loss.g_loss(real, fake).item() == pytest.approx(g_expected, rel=1e-6)
    # Soft labels do not apply: real_label changes nothing.
    assert loss.d_loss(real, fake, 0.8).item() == pytest.approx(d_expected, rel=1e-6)
    assert loss.g_loss(real, fake, 0.8).item() == pytest.approx(g_expected, rel=1e-6)
    # Pairs, not batch means: swapping the fakes gives differences 1 and 0 instead.
    swapped = loss.d_loss(real, fake.flip(0)).item()
    assert swapped == pytest.approx((_softplus(-1.0) + _softplus(0.0)) / 2, rel=1e-6)
    with pytest.raises(ValueError):
        loss.g_loss(None, fake)
    with pytest.raises(ValueError):
        loss.d_loss(real, torch.zeros(3))


def test_rpgan_on_patch_logits_pairs_element_wise() -> None:
    """(N, P) = (2, 2): each patch meets the same patch of its partner; mean over all four."""
    real = torch.tensor([[1.0, 0.0], [3.0, -1.0]])
    fake = torch.tensor([[0.0, 0.0], [1.0, 1.0]])  # real - fake = [[1, 0], [2, -2]]
    d_expected = _mean([_softplus(-1.0), _softplus(0.0), _softplus(-2.0), _softplus(2.0)])
    g_expected = _mean([_softplus(1.0), _softplus(0.0), _softplus(2.0), _softplus(-2.0)])
    loss = get_loss("rpgan")
    assert loss.d_loss(real, fake).item() == pytest.approx(d_expected, rel=1e-6)
    assert loss.g_loss(real, fake).item() == pytest.approx(g_expected, rel=1e-6)


def test_rpgan_generator_gradient_is_known() -> None:
    """d/df_i mean softplus(r - f) = -sigmoid(r_i - f_i) / N, and nothing flows into D(real)."""
    real = torch.tensor([2.0, 0.0])
    fake = torch.tensor([0.0, 1.0], requires_grad=True)
    get_loss("rpgan").g_loss(real, fake).backward()
    expected = [-_sigmoid(2.0) / 2, -_sigmoid(-1.0) / 2]
    assert fake.grad is not None
    assert fake.grad.tolist() == pytest.approx(expected, rel=1e-6)


def test_few_steps_of_rpgan_separate_reals_from_fakes() -> None:
    """A tiny linear D trained with RpGAN learns to score each real above its fake."""
    torch.manual_seed(0)
    d = nn.Linear(2, 1)
    reals, fakes = torch.randn(64, 2) + 2, torch.randn(64, 2) - 2
    optimiser = torch.optim.SGD(d.parameters(), lr=0.1)
    loss = get_loss("rpgan")
    first = loss.d_loss(d(reals).squeeze(1), d(fakes).squeeze(1)).item()
    for _ in range(30):
        optimiser.zero_grad()
        value = loss.d_loss(d(reals).squeeze(1), d(fakes).squeeze(1))
        value.backward()
        optimiser.step()
    assert value.item() < 0.2 * first
    assert d(reals).mean() > d(fakes).mean()


def test_r2_penalty_of_linear_critic_is_its_squared_weight_norm() -> None:
    """D(x) = sum(w * x) has gradient w everywhere, so R2 = ||w||^2 and d R2 / d w = 2w."""
    critic = nn.Sequential(nn.Flatten(), nn.Linear(1 * 2 * 2, 1, bias=False))
    with torch.no_grad():
        critic[1].weight.copy_(torch.tensor([[1.0, -2.0, 0.5, 3.0]]))  # ||w||^2 = 14.25
    fakes = torch.randn(5, 1, 2, 2).requires_grad_(True)  # detached from G, as the loop does
    penalty = r2_penalty(critic(fakes).squeeze(1), fakes)
    assert penalty.item() == pytest.approx(14.25, rel=1e-6)
    penalty.backward()  # the graph reaches D's weights
    assert critic[1].weight.grad is not None
    assert critic[1].weight.grad.tolist() == [[2.0, -4.0, 1.0, 6.0]]


def test_r2_penalty_of_quadratic_critic_by_hand() -> None:
    """D(x) = sum(x^2): gradient 2x, so ||grad||^2 = 4 sum(x^2): images [1, 2] and [0, -1]
    give 20 and 4, mean 12. R1 follows the same convention on the same inputs."""
    images = torch.tensor([[[[1.0, 2.0]]], [[[0.0, -1.0]]]], requires_grad=True)  # (2,1,1,2)
    logits = images.square().flatten(1).sum(1)  # (2,)
    assert r2_penalty(logits, images).item() == pytest.approx(12.0)
    assert r1_penalty(logits, images).item() == pytest.approx(12.0)


def test_r1_and_r2_from_one_d_step_on_patch_logits() -> None:
    """Patch logits (N, P) = the pixels times 3: each image's gradient is 3 per pixel, so
    each penalty is 9 * pixels = 36; both can be taken from the same D step and trained."""
    weight = torch.tensor(3.0, requires_grad=True)
    reals = torch.randn(2, 1, 2, 2).requires_grad_(True)
    fakes = torch.randn(2, 1, 2, 2).requires_grad_(True)
    real_logits, fake_logits = weight * reals.flatten(1), weight * fakes.flatten(1)  # (2, 4)
    r1, r2 = r1_penalty(real_logits, reals), r2_penalty(fake_logits, fakes)
    assert (r1.item(), r2.item()) == (pytest.approx(36.0), pytest.approx(36.0))
    (r1 + r2).backward()  # d/dw (4 w^2 + 4 w^2) = 16 w = 48
    assert weight.grad is not None and weight.grad.item() == pytest.approx(48.0)


def test_lazy_weight_is_stylegan2s_every_kth_step_weighting() -> None:
    assert lazy_weight(1.0, 16, 0) == 8.0  # gamma / 2 * 16 on due steps
    assert lazy_weight(1.0, 16, 32) == 8.0
    assert lazy_weight(1.0, 16, 5) == 0.0  # skipped in between
    assert lazy_weight(10.0, 4, 8) == 20.0
    assert lazy_weight(0.2, 1, 7) == pytest.approx(0.1)  # interval 1: plain gamma / 2
    assert lazy_weight(0.0, 16, 16) == 0.0
    # Averaged over a whole interval it is gamma / 2 per step.
    assert sum(lazy_weight(3.0, 4, s) for s in range(4)) / 4 == 1.5
    with pytest.raises(ValueError):
        lazy_weight(1.0, 0, 0)
