"""Graders of the re-implement exercises of EXERCISES.md.

A student deletes the body of a named function of dcae15.py, writes it again, and runs
`python -m pytest tests/test_exercises.py -k NAME`. Each `grade_*` checks the function that dcae15
holds at call time against the paper's equation through properties (a closed form, an
equivalence, an invariant), not against a copy of our body, so that any correct body passes.
tests/test_graders.py feeds every grader plausible wrong bodies and asserts that it fails on each.
"""

import math

import pytest
import torch

import dcae15
# a stand-in DiT that records its inputs, and the exact velocity field of Gaussian data
from test_flow import VelocityModel as RecordingModel, gaussian_velocity


def gaussian_eps(diff, mu, s):
    """E[eps | x_t = x] when the data is N(mu, s^2) per element and x_t = alpha_t x_0 + sigma_t eps."""

    def fn(x, t):
        alpha, sigma = diff.alpha_sigma(t)
        return sigma * (x - alpha * mu) / (alpha**2 * s**2 + sigma**2)

    return fn


def call(what, fn, *args, **kwargs):
    """fn(*args, **kwargs); an error it raises fails the exercise as the grader's assertion, saying
    what raised it (a body that divides by zero is wrong, not broken)."""
    try:
        return fn(*args, **kwargs)
    except (ArithmeticError, ValueError, RuntimeError, TypeError, IndexError) as err:
        raise AssertionError(f"{what} raised {type(err).__name__}: {err}") from err


def tensor(value, call):
    """`value`, after checking that the student's function returned a tensor at all."""
    assert isinstance(value, torch.Tensor), \
        f"{call} returned {type(value).__name__}, not a tensor: is the body written yet?"
    return value


# ---------------------------------------------------------------------------------------------------
# 1. channel_mask: mask_{c,c'} = (1 x c', 0 x (c - c'))
# ---------------------------------------------------------------------------------------------------


def grade_channel_mask():
    for c in (1, 8, 13):
        for c_prime in range(1, c + 1):
            m = tensor(dcae15.channel_mask(c, c_prime), f"channel_mask({c}, {c_prime})")
            assert tuple(m.shape) == (1, c, 1, 1), f"channel_mask({c}, {c_prime}) has shape {m.shape}"
            assert m.dtype.is_floating_point, "the mask multiplies latents: make it a float tensor"
            assert m.flatten().tolist() == [1.0] * c_prime + [0.0] * (c - c_prime), \
                f"channel_mask({c}, {c_prime}) = {m.flatten().tolist()}"
    # one c' per sample: a (B,) tensor gives one mask row per sample
    c_primes = torch.tensor([3, 1, 8, 5])
    m = dcae15.channel_mask(8, c_primes)
    assert tuple(m.shape) == (4, 8, 1, 1), f"a (4,) tensor of c' gives shape {m.shape}"
    for row, c_prime in zip(m, c_primes.tolist()):
        assert row.flatten().tolist() == [1.0] * c_prime + [0.0] * (8 - c_prime)
    # what it is for: z * mask keeps the first c' channels and zeroes the rest, over any H, W
    z = torch.randn(2, 8, 3, 5)
    out = z * dcae15.channel_mask(8, 5)
    assert torch.equal(out[:, :5], z[:, :5]) and out[:, 5:].eq(0).all()


def test_channel_mask():
    grade_channel_mask()


# ---------------------------------------------------------------------------------------------------
# 2. The adaptive convs: the encoder's last conv emits c' channels, the decoder's first takes c'
# ---------------------------------------------------------------------------------------------------


def grade_adaptive_output_conv():
    conv = dcae15.AdaptiveOutputConv(6, 8)
    with torch.no_grad():
        conv.conv.bias.normal_()  # a non-zero bias, so that a body that drops it shows
    x = torch.randn(2, 6, 5, 5)
    full = conv.conv(x)  # the whole 3x3 conv: what the encoder emits at c' = c
    out = tensor(conv(x), "AdaptiveOutputConv.forward")
    assert tuple(out.shape) == (2, 8, 5, 5), f"conv(x) has shape {tuple(out.shape)}"
    torch.testing.assert_close(out, full, msg="conv(x) without c' must be the whole conv")
    for c_prime in range(1, 9):
        out = conv(x, c_prime)
        assert tuple(out.shape) == (2, c_prime, 5, 5), \
            f"conv(x, {c_prime}) has shape {tuple(out.shape)}: it must emit exactly c' channels"
        torch.testing.assert_close(out, full[:, :c_prime],
                                   msg=f"conv(x, {c_prime}) must be the first {c_prime} channels")


def grade_adaptive_input_conv():
    conv = dcae15.AdaptiveInputConv(8, 6)
    with torch.no_grad():
        conv.conv.bias.normal_()
    z = torch.randn(2, 8, 5, 5)
    for c_prime in range(1, 9):
        out = tensor(conv(z[:, :c_prime]), "AdaptiveInputConv.forward")
        assert tuple(out.shape) == (2, 6, 5, 5), f"conv(z[:, :{c_prime}]) has shape {tuple(out.shape)}"
        # the paper's z * mask_{c,c'} through the whole conv
        zero_filled = conv.conv(z * dcae15.channel_mask(8, c_prime))
        torch.testing.assert_close(out, zero_filled,
                                   msg=f"conv(z[:, :{c_prime}]) must equal the conv of z * mask_(8,{c_prime})")


def grade_adaptive_convs_in_the_autoencoder():
    ae = dcae15.DCAE(dcae15.build_dcae_config("dc-ae-tiny")).eval()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        z = ae.encode(x)
        for c_prime in (1, 3, z.shape[1]):
            torch.testing.assert_close(ae.encode(x, c_prime), z[:, :c_prime])
            torch.testing.assert_close(ae.decode(z[:, :c_prime]),
                                       ae.decode(z * dcae15.channel_mask(z.shape[1], c_prime)))


def test_adaptive_output_conv():
    grade_adaptive_output_conv()


def test_adaptive_input_conv():
    grade_adaptive_input_conv()


def test_adaptive_convs_in_the_autoencoder():
    grade_adaptive_convs_in_the_autoencoder()


# ---------------------------------------------------------------------------------------------------
# 3. The masked flow-matching loss: || (x_0 - eps) * mask - v_theta(x_t * mask, t) * mask ||^2
# ---------------------------------------------------------------------------------------------------


def grade_flow_loss():
    fm = dcae15.FlowMatching()
    B, C = 256, 8
    x0 = (2 * torch.randn(B, C, 4, 4) + 1).double()  # float64: eps is recovered from x_t below
    offset = torch.randn(B, C, 4, 4, dtype=torch.float64)

    def recovered_noise(x_t, t, keep):
        """eps from x_t = t x_0 + (1 - t) eps on the kept channels (t = 0 is noise, 1 is data)."""
        t = t.view(-1, 1, 1, 1).double()
        return (x_t[:, :keep] - t * x0[:, :keep]) / (1 - t)

    for keep in (C, 3):
        mask = None if keep == C else dcae15.channel_mask(C, keep).double()

        def oracle_plus_offset(x_t, t):
            """The true velocity x_0 - eps on the kept channels plus a known offset; 1e3 where masked."""
            v = torch.full_like(x0, 1e3)
            v[:, :keep] = x0[:, :keep] - recovered_noise(x_t, t, keep) + offset[:, :keep]
            return v

        model = RecordingModel(oracle_plus_offset)
        loss = fm.flow_loss(model, x0, None, mask=mask, generator=torch.Generator().manual_seed(0))
        assert len(model.seen) == 1, "one model call per loss"
        x_t, t = model.seen[0]
        assert tuple(loss.shape) == (B,), f"the loss is per sample, shape ({B},), got {tuple(loss.shape)}"
        assert tuple(t.shape) == (B,) and t.dtype.is_floating_point, "one float t per sample"
        assert 0 <= t.min() and t.max() < 1 and t.unique().numel() == B, "t ~ U[0, 1), drawn per sample"
        assert abs(t.double().mean().item() - 0.5) < 0.06, f"t ~ U[0, 1): mean {t.mean().item():.3f}"
        assert x_t[:, keep:].eq(0).all(), "the model must see x_t * mask: masked channels exactly 0"
        noise = recovered_noise(x_t, t, keep)
        assert abs(noise.mean().item()) < 0.05 and abs(noise.std().item() - 1) < 0.05, \
            f"x_t is not t x_0 + (1 - t) eps with eps ~ N(0, 1) (recovered eps: mean " \
            f"{noise.mean().item():.3f}, std {noise.std().item():.3f})"
        # mean of the squared error over the kept elements only (c' H W of them), per sample
        expected = offset[:, :keep].pow(2).mean(dim=(1, 2, 3))
        torch.testing.assert_close(loss.double(), expected, rtol=1e-4, atol=1e-6,
                                   msg="loss = mean over the kept elements of (target - v)^2, "
                                       "target x_0 - eps")
    # one mask row per sample (the augmented pass stacks a full and a c' mask)
    rows = torch.tensor([8, 2, 5, 8]).repeat(B // 4)
    model = RecordingModel(lambda x_t, t: torch.zeros_like(x_t))
    loss = fm.flow_loss(model, x0, None, mask=dcae15.channel_mask(C, rows).double(),
                        generator=torch.Generator().manual_seed(1))
    x_t, t = model.seen[0]
    # each sample's input is masked by its own row, and with a zero predictor its loss is the
    # target's power over its own kept channels
    for i in range(4):
        assert x_t[i, rows[i]:].eq(0).all() and x_t[i, :rows[i]].ne(0).all()
        ti = t[i].double()
        eps = (x_t[i, : rows[i]] - ti * x0[i, : rows[i]]) / (1 - ti)
        torch.testing.assert_close(loss[i].double(), (x0[i, : rows[i]] - eps).pow(2).mean(),
                                   rtol=1e-4, atol=1e-6)


def test_flow_loss():
    grade_flow_loss()


# ---------------------------------------------------------------------------------------------------
# 4. The flow-matching ODE samplers: Euler and Heun from noise (t = 0) to data (t = 1)
# ---------------------------------------------------------------------------------------------------


def _flow_errors(method, steps):
    """Max error of a sampler on Gaussian data, whose exact flow maps noise z to mu + s z."""
    fm = dcae15.FlowMatching()
    C = 6
    mu = torch.linspace(-2, 2, C).view(1, C, 1, 1)
    s = torch.linspace(0.3, 1.5, C).view(1, C, 1, 1)
    model = RecordingModel(gaussian_velocity(mu, s))
    shape, y = (500, C, 2, 2), torch.zeros(500, dtype=torch.long)
    z = torch.randn(shape, generator=torch.Generator().manual_seed(0))  # the sampler's first draw
    out = tensor(fm.sample(model, shape, y, steps=steps, method=method,
                           generator=torch.Generator().manual_seed(0)), "FlowMatching.sample")
    assert tuple(out.shape) == shape
    return (out - (mu + s * z)).abs().max().item(), model


def grade_flow_sampler():
    (euler10, m10), (euler20, _) = _flow_errors("euler", 10), _flow_errors("euler", 20)
    (heun10, h10), (heun20, _) = _flow_errors("heun", 10), _flow_errors("heun", 20)
    assert len(m10.seen) == 10, f"Euler: one model call per step, got {len(m10.seen)} for 10 steps"
    assert len(h10.seen) == 20, f"Heun: two model calls per step, got {len(h10.seen)} for 10 steps"
    times = [t[0].item() for _, t in m10.seen]
    assert times == pytest.approx([i / 10 for i in range(10)]), \
        f"Euler evaluates v at t = 0, 0.1, ..., 0.9 (noise to data), got {times}"
    assert heun20 < 6e-3, f"20 Heun steps should land within 6e-3 of the exact flow, got {heun20:.2e}"
    # the order of the error: halving the step halves Euler's error and quarters Heun's
    assert 1.6 < euler10 / euler20 < 2.4, f"Euler is first order: error ratio {euler10 / euler20:.2f}"
    assert 3.2 < heun10 / heun20 < 4.8, f"Heun is second order: error ratio {heun10 / heun20:.2f}"
    # generating only the first c' channels: the rest stay exactly 0
    model = RecordingModel(gaussian_velocity(torch.tensor(1.0), torch.tensor(0.5)))
    out = dcae15.FlowMatching().sample(model, (4, 6, 2, 2), torch.zeros(4, dtype=torch.long), steps=3,
                                       method="heun", generator=torch.Generator().manual_seed(0),
                                       c_prime=2)
    assert out[:, 2:].eq(0).all() and out[:, :2].ne(0).all(), "c_prime=c': the rest stay 0"
    assert all(x[:, 2:].eq(0).all() for x, _ in model.seen), "the model sees zeros beyond c'"


def test_flow_sampler():
    grade_flow_sampler()


# ---------------------------------------------------------------------------------------------------
# 5. The DDIM step (Song et al., eq. 12), eta = 0 deterministic and eta = 1 ancestral
# ---------------------------------------------------------------------------------------------------


def ddim_on_gaussian_data(diff, steps, eta, mu, s):
    """The closed form of DDIM on Gaussian data N(mu, s^2) with the exact eps (`gaussian_eps`): every
    step is affine in d = x_t - alpha_t mu, d_prev = f d + sigma_step n, with f = (alpha_prev alpha s^2
    + c sigma) / (alpha^2 s^2 + sigma^2), c = sqrt(1 - alphabar_prev - sigma_step^2) and sigma_step of
    DDIM eq. 16. Starting from x = z ~ N(0, 1): x_0 = mu + gain (z - alpha_T mu) + noise of variance
    `noise_var`. Returns (gain, noise_var), per element of mu and s (float64)."""
    abar = diff.alphas_cumprod
    ts = torch.linspace(diff.num_timesteps - 1, 0, steps, dtype=torch.float64).round().long().tolist()
    s2 = s.double() ** 2
    gain, noise_var = torch.ones_like(s2), torch.zeros_like(s2)
    for i, t in enumerate(ts):
        a_t = abar[t].item()
        a_prev = abar[ts[i + 1]].item() if i + 1 < len(ts) else 1.0
        sigma_step = eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
        c = math.sqrt(max(1 - a_prev - sigma_step**2, 0.0))
        f = (math.sqrt(a_prev * a_t) * s2 + c * math.sqrt(1 - a_t)) / (a_t * s2 + 1 - a_t)
        gain, noise_var = f * gain, f**2 * noise_var + sigma_step**2
    return gain, noise_var


def grade_ddim():
    diff = dcae15.GaussianDiffusion()
    # a point mass: the exact eps gives the point itself as the prediction of x_0 at every step
    point = torch.randn(1, 8, 4, 4)
    for eta in (0.0, 1.0):
        model = RecordingModel(gaussian_eps(diff, point, torch.tensor(0.0)))
        out = call("ddim_sample", diff.ddim_sample, model, (3, 8, 4, 4), torch.zeros(3, dtype=torch.long),
                   steps=25, eta=eta, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(out, point.expand(3, -1, -1, -1), rtol=0, atol=1e-3,
                                   msg=f"eta={eta}: DDIM must land on a point mass exactly")
        assert len(model.seen) == 25, f"one model call per step, got {len(model.seen)}"
        times = [int(t[0]) for _, t in model.seen]
        assert times == torch.linspace(999, 0, 25).round().long().tolist(), \
            f"the 25 steps go from t = T - 1 (noise) down to t = 0, evenly spread: got {times}"
    # Gaussian data N(mu, s^2): DDIM is affine in the starting noise, with a closed-form gain
    C = 4
    mu = torch.tensor([-1.0, 0.0, 0.5, 2.0]).view(1, C, 1, 1)
    s = torch.tensor([0.3, 1.0, 0.6, 1.5]).view(1, C, 1, 1)
    alpha_T = diff.alphas_cumprod[-1].sqrt().item()
    shape, y = (2000, C, 2, 2), torch.zeros(2000, dtype=torch.long)
    z = torch.randn(shape, generator=torch.Generator().manual_seed(1))  # the sampler's first draw
    gain, _ = ddim_on_gaussian_data(diff, 50, 0.0, mu, s)
    out = diff.ddim_sample(RecordingModel(gaussian_eps(diff, mu, s)), shape, y, steps=50, eta=0.0,
                           generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out.double(), mu + gain * (z - alpha_T * mu), rtol=0, atol=2e-4,
                               msg="eta=0: DDIM eq. 12 step by step (deterministic, no noise added)")
    # eta = 1 adds fresh noise each step: the samples' mean and spread have a closed form too
    gain, noise_var = ddim_on_gaussian_data(diff, 50, 1.0, mu, s)
    out = diff.ddim_sample(RecordingModel(gaussian_eps(diff, mu, s)), shape, y, steps=50, eta=1.0,
                           generator=torch.Generator().manual_seed(1))
    mean = (mu + gain * (0 - alpha_T * mu)).flatten()
    std = (gain**2 + noise_var).sqrt().flatten()
    torch.testing.assert_close(out.double().mean(dim=(0, 2, 3)), mean, rtol=0, atol=0.05,
                               msg="eta=1: the samples' mean")
    torch.testing.assert_close(out.double().std(dim=(0, 2, 3)), std, rtol=0.03, atol=0,
                               msg="eta=1: the samples' spread (DDIM eq. 16 sigma)")
    # generating only the first c' channels: the rest stay exactly 0
    model = RecordingModel(gaussian_eps(diff, mu, s))
    out = diff.ddim_sample(model, (8, C, 2, 2), torch.zeros(8, dtype=torch.long), steps=10, eta=1.0,
                           generator=torch.Generator().manual_seed(2), c_prime=2)
    assert out[:, 2:].eq(0).all() and out[:, :2].ne(0).all(), "c_prime=c': the rest stay 0"


def test_ddim():
    grade_ddim()
