"""Structured latent space: mask_{c,c'} and the sampling of c'."""

import pytest
import torch

import dcae15


@pytest.mark.parametrize("c_prime", [1, 7, 16])
def test_channel_mask_is_a_prefix(c_prime):
    m = dcae15.channel_mask(16, c_prime)
    assert m.shape == (1, 16, 1, 1)
    assert m[0, :c_prime].eq(1).all() and m[0, c_prime:].eq(0).all()
    x = torch.randn(2, 16, 3, 3)
    torch.testing.assert_close((x * m)[:, :c_prime], x[:, :c_prime], rtol=0, atol=0)


def test_channel_mask_per_sample():
    c_prime = torch.tensor([1, 4, 3])
    m = dcae15.channel_mask(4, c_prime)
    assert m.shape == (3, 4, 1, 1)
    assert m[:, :, 0, 0].tolist() == [[1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 0]]
    assert m.sum(dim=(1, 2, 3)).tolist() == c_prime.float().tolist()


@pytest.mark.parametrize("bad", [0, 17, 3.0, torch.tensor([0, 3]), torch.tensor([[2]])])
def test_channel_mask_rejects_out_of_range(bad):
    with pytest.raises(ValueError, match=r"\[1, 16\]"):
        dcae15.channel_mask(16, bad)


def test_default_choices():
    assert dcae15.default_c_prime_choices(128) == [16, 32, 48, 64, 80, 96, 112, 128]
    assert dcae15.default_c_prime_choices(64) == [8, 16, 24, 32, 40, 48, 56, 64]
    assert dcae15.default_c_prime_choices(8) == list(range(1, 9))
    assert dcae15.default_c_prime_choices(4) == [1, 2, 3, 4]
    with pytest.raises(ValueError):
        dcae15.check_c_prime_choices([0, 8], 8)
    with pytest.raises(ValueError):
        dcae15.check_c_prime_choices([], 8)
    assert dcae15.check_c_prime_choices(["8", 2, 2], 8) == [2, 8]


def test_sampling_is_seeded_uniform_and_in_choices():
    choices = [16, 32, 48, 64]
    draw = lambda seed, **kw: dcae15.sample_c_prime(choices, generator=torch.Generator().manual_seed(seed), **kw)
    assert isinstance(draw(0), int) and draw(0) in choices
    assert draw(3) == draw(3)
    per_sample = draw(1, batch_size=4000)
    assert per_sample.shape == (4000,) and torch.equal(per_sample, draw(1, batch_size=4000))
    counts = torch.stack([(per_sample == c).sum() for c in choices]).float()
    assert set(per_sample.tolist()) == set(choices)
    assert (counts / 4000 - 0.25).abs().max() < 0.04  # uniform over the list


def test_several_c_from_one_encoder_pass_equal_separate_passes(tiny_ae):
    x = torch.randn(3, 3, 16, 16)
    recs, z = tiny_ae(x, [2, 8, 5])
    assert z.shape == (3, 8, 4, 4) and len(recs) == 3
    for rec, c in zip(recs, [2, 8, 5]):
        torch.testing.assert_close(rec, tiny_ae(x, c)[0], rtol=1e-5, atol=1e-6)
    # and the gradients of the averaged loss are those of the separate passes, averaged
    params = list(tiny_ae.parameters())
    recs, _ = tiny_ae(x, [2, 8])
    together = torch.autograd.grad(sum(r.square().mean() for r in recs) / 2, params)
    separate = [torch.autograd.grad(tiny_ae(x, c)[0].square().mean() / 2, params) for c in (2, 8)]
    for g, g2, g8 in zip(together, *separate):
        torch.testing.assert_close(g, g2 + g8, rtol=1e-4, atol=1e-6)


def test_sample_channel_list_follows_the_official_options():
    choices = [2, 4, 6, 8]
    for seed in range(20):  # one draw by default: the same as sample_latent_channels
        one = dcae15.sample_c_primes(choices, generator=torch.Generator().manual_seed(seed))
        assert one == [dcae15.sample_c_prime(choices, generator=torch.Generator().manual_seed(seed))]
    g = torch.Generator().manual_seed(0)
    lists = [dcae15.sample_c_primes(choices, 3, always_max=True, generator=g) for _ in range(200)]
    assert all(len(c) == 3 and c[0] == 8 for c in lists)
    assert {c for cs in lists for c in cs[1:]} == set(choices)  # the rest are uniform draws
    lists = [dcae15.sample_c_primes(choices, 3, always_min_max=True, generator=g) for _ in range(200)]
    assert all(c[:2] == [2, 8] for c in lists) and {c[2] for c in lists} == set(choices)
    assert dcae15.sample_c_primes(choices, 2, always_min_max=True, generator=g) == [2, 8]
    with pytest.raises(ValueError, match="at least 2"):
        dcae15.sample_c_primes(choices, 1, always_min_max=True)
    with pytest.raises(ValueError, match="exclude each other"):
        dcae15.sample_c_primes(choices, 3, always_max=True, always_min_max=True)
