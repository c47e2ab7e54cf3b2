"""Flow matching (linear interpolant, velocity target), its augmented loss and the Euler / Heun ODE
samplers: closed forms and equivalences."""

import pytest
import torch

import dcae15


class VelocityModel(torch.nn.Module):
    """A fixed 'network': v_theta = fn(x_t, t). Records the inputs it was given."""

    def __init__(self, fn, num_classes=10):
        super().__init__()
        self.fn, self.seen = fn, []
        self.cfg = type("cfg", (), {"num_classes": num_classes})

    def forward(self, x, t, y):
        self.seen.append((x.clone(), t.clone()))
        return self.fn(x, t)

    def forward_with_cfg(self, x, t, y, s):
        return dcae15.DiT.forward_with_cfg(self, x, t, y, s)


def gaussian_velocity(mu, s):
    """The exact velocity E[x_0 - eps | x_t = x] when the data is N(mu, s^2) per element.

    x_t = t x_0 + (1 - t) eps is Gaussian with mean t mu and variance t^2 s^2 + (1 - t)^2, and
    Cov(x_0 - eps, x_t) = t s^2 - (1 - t): the regression line of x_0 - eps on x_t.
    """

    def fn(x, t):
        t = t.view(-1, 1, 1, 1)
        return mu + (t * s**2 - (1 - t)) / (t**2 * s**2 + (1 - t) ** 2) * (x - t * mu)

    return fn


def test_zero_predictor_loss_is_the_target_power_over_kept_channels():
    fm = dcae15.FlowMatching()
    x0 = 2 * torch.randn(64, 16, 4, 4) + 1
    zero = VelocityModel(lambda x, t: torch.zeros_like(x))
    mask = dcae15.channel_mask(16, 4)
    loss = fm.flow_loss(zero, x0, None, mask=mask, generator=torch.Generator().manual_seed(0))
    # the same draws by hand: t ~ U[0, 1) per sample, then the noise
    g = torch.Generator().manual_seed(0)
    t, noise = torch.rand(64, generator=g), torch.randn(x0.shape, generator=g)
    target = (x0 - noise)[:, :4]
    torch.testing.assert_close(loss, target.pow(2).mean(dim=(1, 2, 3)))
    assert 0 <= t.min() and t.max() < 1
    # E||x0 - eps||^2 = E[x0^2] + 1 = 4 + 1 + 1 per kept element; C H W normalising would give 6 / 4
    assert loss.mean().item() == pytest.approx(6, rel=0.05)
    # whatever the masked channels hold
    garbage = x0.clone()
    garbage[:, 4:] = 1e3 * torch.randn_like(garbage[:, 4:])
    again = fm.flow_loss(zero, garbage, None, mask=mask, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again, loss, rtol=0, atol=0)


def test_masked_pass_feeds_zeros_and_the_interpolant():
    fm = dcae15.FlowMatching()
    x0 = torch.randn(4, 8, 4, 4)
    model = VelocityModel(lambda x, t: 0.3 * x)
    fm.flow_loss(model, x0, None, mask=dcae15.channel_mask(8, 3), generator=torch.Generator().manual_seed(1))
    x_t, t = model.seen[0]
    assert x_t[:, 3:].eq(0).all() and x_t[:, :3].ne(0).all()
    g = torch.Generator().manual_seed(1)
    t_ref, noise = torch.rand(4, generator=g), torch.randn(x0.shape, generator=g)
    torch.testing.assert_close(t, t_ref)  # the float t in [0, 1) reaches the model as it is
    tv = t_ref.view(-1, 1, 1, 1)
    torch.testing.assert_close(x_t[:, :3], (tv * x0 + (1 - tv) * noise)[:, :3])


def test_augmented_loss_equals_plain_at_full_c_and_is_the_mean():
    fm = dcae15.FlowMatching()
    x0, y = torch.randn(4, 8, 4, 4), torch.arange(4)
    model = VelocityModel(lambda x, t: 0.5 * x + 0.1 * t.view(-1, 1, 1, 1))
    plain = fm.flow_loss(model, x0, None, generator=torch.Generator().manual_seed(2))
    full = fm.flow_loss(model, x0, None, mask=dcae15.channel_mask(8, 8),
                        generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(plain, full, rtol=0, atol=0)
    loss, terms = fm.training_loss(model, x0, y, c_prime=2, generator=torch.Generator().manual_seed(3))
    mask = torch.cat([torch.ones(4, 8, 1, 1), dcae15.channel_mask(8, 2).expand(4, -1, -1, -1)])
    both = fm.flow_loss(model, torch.cat([x0, x0]), torch.cat([y, y]), mask=mask,
                        generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(terms["loss_full"], both[:4].mean())
    torch.testing.assert_close(terms["loss_masked"], both[4:].mean())
    torch.testing.assert_close(loss, 0.5 * (both[:4].mean() + both[4:].mean()))
    assert model.seen[-1][0][4:, 2:].eq(0).all() and model.seen[-1][0][:4, 2:].ne(0).all()
    loss3, _ = fm.training_loss(model, x0, y, c_prime=2, aug_weight=3.0,
                                generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(loss3, (both[:4].mean() + 3 * both[4:].mean()) / 4)
    # c' = C: both passes see every channel, so the augmented loss is the plain loss of 2B samples
    loss_c, terms_c = fm.training_loss(model, x0, y, c_prime=8, generator=torch.Generator().manual_seed(4))
    plain_2b = fm.flow_loss(model, torch.cat([x0, x0]), None, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(loss_c, plain_2b.mean())
    loss, terms = fm.training_loss(model, x0, y, generator=torch.Generator().manual_seed(3))
    assert set(terms) == {"loss_full"} and loss == terms["loss_full"]


def test_ode_samplers_reproduce_a_gaussian_with_heun_beating_euler():
    fm = dcae15.FlowMatching()
    C = 6
    mu = torch.linspace(-2, 2, C).view(1, C, 1, 1)
    s = torch.linspace(0.3, 1.5, C).view(1, C, 1, 1)
    model = VelocityModel(gaussian_velocity(mu, s))
    shape, y = (2000, C, 2, 2), torch.zeros(2000, dtype=torch.long)
    z = torch.randn(shape, generator=torch.Generator().manual_seed(0))  # the sampler's first draw
    exact = mu + s * z  # the flow of a Gaussian is affine: x_t = t mu + sqrt(t^2 s^2 + (1-t)^2) z
    errors = {}
    for method in ("euler", "heun"):
        out = fm.sample(model, shape, y, steps=20, method=method, generator=torch.Generator().manual_seed(0))
        errors[method] = (out - exact).abs().max().item()
    # Heun's samples have the data's distribution; 20 Euler steps shrink the spread by ~7%
    torch.testing.assert_close(out.mean(dim=(0, 2, 3)), mu.flatten(), rtol=0, atol=0.05)
    torch.testing.assert_close(out.std(dim=(0, 2, 3)), s.flatten(), rtol=0.03, atol=0)
    assert errors["heun"] < 0.01 < 0.1 < errors["euler"], errors
    assert errors["heun"] < errors["euler"] / 20
    assert len(model.seen) == 20 + 40  # Euler: one model call per interval, Heun: two
    ts = [t[0].item() for _, t in model.seen[:20]]
    assert ts == pytest.approx([i / 20 for i in range(20)])  # from t = 0 (noise) towards 1 (data)


def test_partial_generation_and_guidance():
    fm = dcae15.FlowMatching()
    C = 8
    mu, s = torch.randn(1, C, 1, 1), torch.full((1, C, 1, 1), 0.5)
    model = VelocityModel(gaussian_velocity(mu, s))
    out = fm.sample(model, (3, C, 4, 4), torch.tensor([0, 1, 2]), steps=10, cfg_scale=3.0,
                    c_prime=3, generator=torch.Generator().manual_seed(0))
    assert out[:, 3:].eq(0).all()  # channels >= c' stay exactly zero
    assert all(x[:, 3:].eq(0).all() for x, _ in model.seen)  # the model only sees masked inputs
    # guidance of a label-blind model changes nothing: u + s (c - u) = u
    plain = fm.sample(model, (3, C, 4, 4), torch.tensor([0, 1, 2]), steps=10, c_prime=3,
                      generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, plain)


def test_flow_sampling_is_deterministic_and_checks_its_arguments():
    fm = dcae15.FlowMatching()
    model = dcae15.DiT(dcae15.build_dit_config("DiT-tiny", input_size=4, in_channels=8, num_classes=10))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.eval()
    y = torch.tensor([1, 2])

    def run(seed, method="heun"):
        return fm.sample(model, (2, 8, 4, 4), y, steps=4, method=method, cfg_scale=2.0,
                         generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(0), run(0)) and not torch.allclose(run(0), run(1))
    assert not torch.allclose(run(0), run(0, "euler"))
    with pytest.raises(ValueError, match="heun or euler, not 'ddim'"):
        run(0, "ddim")
    with pytest.raises(ValueError, match="steps"):
        fm.sample(model, (2, 8, 4, 4), y, steps=0)
    with pytest.raises(ValueError, match="samples with method 'ddim'"):
        dcae15.GaussianDiffusion().sample(model, (2, 8, 4, 4), y, method="heun")
    with pytest.raises(ValueError, match="unknown objective"):
        dcae15.build_objective("edm")


def test_dit_trains_on_the_flow_objective():
    """A real DiT and the augmented flow loss: the loss falls when fitting one small batch."""
    torch.manual_seed(0)
    fm = dcae15.FlowMatching()
    model = dcae15.DiT(dcae15.build_dit_config("DiT-tiny", input_size=2, in_channels=4, num_classes=2))
    x0 = torch.randn(2, 4, 2, 2).repeat(8, 1, 1, 1)
    y = torch.tensor([0, 1]).repeat(8)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(150):
        loss, _ = fm.training_loss(model, x0, y, c_prime=2, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-20:]) / 20 < 0.6 * sum(losses[:20]) / 20
