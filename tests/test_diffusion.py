"""DDPM objective, augmented diffusion training and the DDIM sampler."""

import pytest
import torch

import dcae15


class EpsModel(torch.nn.Module):
    """A fixed 'network': eps_theta = fn(x_t, t). Records what it was given."""

    def __init__(self, fn, num_classes=10):
        super().__init__()
        self.fn, self.seen = fn, []
        self.cfg = type("cfg", (), {"num_classes": num_classes})

    def forward(self, x, t, y):
        self.seen.append(x.clone())
        return self.fn(x, t)

    def forward_with_cfg(self, x, t, y, s):
        return dcae15.DiT.forward_with_cfg(self, x, t, y, s)


def test_schedule_closed_form():
    diff = dcae15.GaussianDiffusion()
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    torch.testing.assert_close(diff.alphas_cumprod[-1], torch.prod(1 - betas))
    alpha, sigma = diff.alpha_sigma(torch.tensor([0, 999]))
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(alpha))


def test_zero_predictor_loss_is_noise_power_over_kept_channels():
    diff = dcae15.GaussianDiffusion()
    x0 = torch.randn(64, 16, 8, 8)
    zero = EpsModel(lambda x, t: torch.zeros_like(x))
    g = torch.Generator().manual_seed(0)
    # E[eps^2] = 1 per kept element; normalising by C instead of c' would give 4/16
    masked = diff.diffusion_loss(zero, x0, None, mask=dcae15.channel_mask(16, 4), generator=g)
    assert masked.shape == (64,) and masked.mean().item() == pytest.approx(1, abs=0.03)
    assert diff.diffusion_loss(zero, x0, None, generator=g).mean().item() == pytest.approx(1, abs=0.03)


def test_masked_loss_ignores_masked_channels_and_masks_the_input():
    diff = dcae15.GaussianDiffusion()
    x0 = torch.randn(4, 8, 4, 4)
    mask = dcae15.channel_mask(8, 3)
    base = lambda x, t: 0.3 * x
    garbage = lambda x, t: torch.cat([0.3 * x[:, :3], 1e3 * torch.randn_like(x[:, 3:])], 1)
    a, b = EpsModel(base), EpsModel(garbage)
    la = diff.diffusion_loss(a, x0, None, mask=mask, generator=torch.Generator().manual_seed(1))
    lb = diff.diffusion_loss(b, x0, None, mask=mask, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(la, lb)
    assert a.seen[0][:, 3:].eq(0).all() and a.seen[0][:, :3].ne(0).all()  # x_t * mask reaches the model


def test_augmented_loss_equals_plain_at_full_c_and_is_the_mean():
    diff = dcae15.GaussianDiffusion()
    x0, y = torch.randn(4, 8, 4, 4), torch.arange(4)
    model = EpsModel(lambda x, t: 0.5 * x + 0.001 * t.float().view(-1, 1, 1, 1))
    plain = diff.diffusion_loss(model, x0, None, generator=torch.Generator().manual_seed(2))
    full_mask = diff.diffusion_loss(model, x0, None, mask=dcae15.channel_mask(8, 8), generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(plain, full_mask, rtol=0, atol=0)
    # training_loss = (L_full + w L_masked) / (1 + w): one batch of 2B, the second half masked to c'
    loss, terms = diff.training_loss(model, x0, y, c_prime=2, aug_weight=1.0, generator=torch.Generator().manual_seed(3))
    mask = torch.cat([torch.ones(4, 8, 1, 1), dcae15.channel_mask(8, 2).expand(4, -1, -1, -1)])
    both = diff.diffusion_loss(model, torch.cat([x0, x0]), torch.cat([y, y]), mask=mask, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(terms["loss_full"], both[:4].mean())
    torch.testing.assert_close(terms["loss_masked"], both[4:].mean())
    torch.testing.assert_close(loss, 0.5 * (both[:4].mean() + both[4:].mean()))
    assert model.seen[-1][4:, 2:].eq(0).all() and model.seen[-1][:4, 2:].ne(0).all()
    loss3, _ = diff.training_loss(model, x0, y, c_prime=2, aug_weight=3.0, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(loss3, (both[:4].mean() + 3 * both[4:].mean()) / 4)
    loss, terms = diff.training_loss(model, x0, y, c_prime=None, generator=torch.Generator().manual_seed(3))
    assert set(terms) == {"loss_full"} and loss == terms["loss_full"]


def oracle_for(point, diff):
    """The exact eps-predictor when all data sits at one point: eps = (x_t - alpha_t x0) / sigma_t."""

    def fn(x, t):
        alpha, sigma = diff.alpha_sigma(t)
        return (x - alpha * point) / sigma

    return fn


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_recovers_a_point_mass(eta):
    diff = dcae15.GaussianDiffusion()
    point = torch.randn(1, 8, 4, 4)
    model = EpsModel(oracle_for(point, diff))
    out = diff.ddim_sample(model, (3, 8, 4, 4), torch.tensor([0, 1, 2]), steps=25, eta=eta,
                           generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, point.expand(3, -1, -1, -1), rtol=0, atol=1e-3)


def test_ddim_partial_channels_and_cfg():
    diff = dcae15.GaussianDiffusion()
    point = torch.randn(1, 8, 4, 4)
    model = EpsModel(oracle_for(point, diff))
    out = diff.ddim_sample(model, (2, 8, 4, 4), torch.tensor([0, 1]), steps=10, cfg_scale=3.0, c_prime=3,
                           generator=torch.Generator().manual_seed(0))
    assert out[:, 3:].eq(0).all()  # the rest stays exactly zero
    torch.testing.assert_close(out[:, :3], point[:, :3].expand(2, -1, -1, -1), rtol=0, atol=1e-3)
    assert all(x[:, 3:].eq(0).all() for x in model.seen)  # the model only ever sees masked inputs


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_is_deterministic_under_a_seed(eta):
    diff = dcae15.GaussianDiffusion()
    model = dcae15.DiT(dcae15.build_dit_config("DiT-tiny", input_size=4, in_channels=8, num_classes=10))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.eval()
    y = torch.tensor([1, 2])
    run = lambda seed: diff.ddim_sample(model, (2, 8, 4, 4), y, steps=8, eta=eta, cfg_scale=2.0,
                                        generator=torch.Generator().manual_seed(seed))
    assert torch.equal(run(0), run(0))
    assert not torch.allclose(run(0), run(1))
    with pytest.raises(ValueError, match="steps"):
        diff.ddim_sample(model, (2, 8, 4, 4), y, steps=0)
