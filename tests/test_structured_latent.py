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
    assert dcae15.default_channel_choices(128) == [16, 32, 48, 64, 80, 96, 112, 128]
    assert dcae15.default_channel_choices(64) == [8, 16, 24, 32, 40, 48, 56, 64]
    assert dcae15.default_channel_choices(8) == list(range(1, 9))
    assert dcae15.default_channel_choices(4) == [1, 2, 3, 4]
    with pytest.raises(ValueError):
        dcae15.check_channel_choices([0, 8], 8)
    with pytest.raises(ValueError):
        dcae15.check_channel_choices([], 8)
    assert dcae15.check_channel_choices(["8", 2, 2], 8) == [2, 8]


def test_sampling_is_seeded_uniform_and_in_choices():
    choices = [16, 32, 48, 64]
    draw = lambda seed, **kw: dcae15.sample_latent_channels(choices, generator=torch.Generator().manual_seed(seed), **kw)
    assert isinstance(draw(0), int) and draw(0) in choices
    assert draw(3) == draw(3)
    per_sample = draw(1, batch_size=4000)
    assert per_sample.shape == (4000,) and torch.equal(per_sample, draw(1, batch_size=4000))
    counts = torch.stack([(per_sample == c).sum() for c in choices]).float()
    assert set(per_sample.tolist()) == set(choices)
    assert (counts / 4000 - 0.25).abs().max() < 0.04  # uniform over the list
