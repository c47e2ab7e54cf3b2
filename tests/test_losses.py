"""The autoencoder loss (L1 + LPIPS + hinge GAN) and the perceptual-mode switch."""

import urllib.error

import lpips
import pytest
import torch

import dcae15


class ConstantDisc(torch.nn.Module):
    """A 'discriminator' that scores every patch of an image by the image's mean."""

    def forward(self, x):
        return x.mean(dim=(1, 2, 3), keepdim=True)


def test_hinge_and_generator_terms_closed_form():
    loss = dcae15.AutoencoderLoss(ConstantDisc(), perceptual=None, l1_weight=2.0, gan_weight=0.5, gan_start=10)
    x = torch.full((2, 3, 4, 4), 0.5)  # D(x) = 0.5
    x_rec = torch.full((2, 3, 4, 4), -0.25)  # D(x_rec) = -0.25
    total, terms = loss.generator_loss(x, x_rec, step=9)  # before gan_start: L1 only
    assert set(terms) == {"l1"} and total.item() == pytest.approx(2.0 * 0.75)
    total, terms = loss.generator_loss(x, x_rec, step=10)
    assert terms["gan"].item() == pytest.approx(0.25)  # -D(x_rec)
    assert total.item() == pytest.approx(2.0 * 0.75 + 0.5 * 0.25)
    # hinge: 0.5 * (relu(1 - 0.5) + relu(1 + (-0.25))) = 0.5 * (0.5 + 0.75)
    assert loss.discriminator_loss(x, x_rec).item() == pytest.approx(0.625)


def test_lpips_term_is_frozen_and_not_a_submodule(tiny_ae):
    net = dcae15.freeze(lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False))
    loss = dcae15.AutoencoderLoss(None, perceptual=net, lpips_weight=1.0)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    tiny_ae.train()
    rec, _ = tiny_ae(x, 4)
    total, terms = loss.generator_loss(x, rec, step=0)
    total.backward()
    assert terms["lpips"] > 0 and not net.training
    assert all(p.grad is None and not p.requires_grad for p in net.parameters())
    ids = {id(p) for p in tiny_ae.parameters()}
    assert not any(id(p) in ids for p in net.parameters())
    # deterministic (dropout off) and zero for identical images
    assert loss.generator_loss(x, rec.detach(), 0)[1]["lpips"] == terms["lpips"]
    assert net(x, x).abs().max() < 1e-6


def test_perceptual_modes(monkeypatch):
    assert dcae15.build_lpips("off") is None
    with pytest.raises(ValueError, match="'auto', 'on' or 'off'"):
        dcae15.build_lpips("yes")

    def offline(*args, **kwargs):  # what torchvision raises when the weights are not cached and offline
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(lpips, "LPIPS", offline)
    with pytest.warns(UserWarning, match="vgg16-397923af.pth.*WITHOUT the perceptual loss"):
        assert dcae15.build_lpips("auto") is None
    with pytest.raises(FileNotFoundError, match="vgg16-397923af.pth"):
        dcae15.build_lpips("on")


def test_ae_loss_falls_when_overfitting_one_batch(tiny_ae):
    torch.manual_seed(0)
    net = dcae15.freeze(lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False))
    disc = dcae15.PatchDiscriminator(width=8, n_layers=2)
    loss_fn = dcae15.AutoencoderLoss(disc, perceptual=net, lpips_weight=0.1, gan_weight=0.01, gan_start=0)
    opt = torch.optim.Adam(tiny_ae.parameters(), lr=3e-3)
    opt_d = torch.optim.Adam(disc.parameters(), lr=1e-4)
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    tiny_ae.train()
    l1 = []
    for step in range(40):
        rec, _ = tiny_ae(x, 8 if step % 2 else 4)  # alternate c' as structured training does
        loss, terms = loss_fn.generator_loss(x, rec, step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        d_loss = loss_fn.discriminator_loss(x, rec)
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()
        l1.append(terms["l1"].item())
    assert sum(l1[-5:]) / 5 < 0.5 * sum(l1[:5]) / 5


def test_patch_discriminator_shape():
    d = dcae15.PatchDiscriminator()
    assert d(torch.randn(2, 3, 64, 64)).shape == (2, 1, 6, 6)


def test_adaptive_gan_weight_balances_the_gradients_at_the_last_layer():
    w = torch.randn(4, 3, requires_grad=True)
    rec, gan = (2.0 * w).sum(), (0.5 * w).sum()  # gradients 2 and 0.5 in each of 12 entries
    scale = dcae15.AutoencoderLoss.adaptive_weight(rec, gan, w)
    n = 12 ** 0.5
    assert scale.item() == pytest.approx(2 * n / (0.5 * n + 1e-4)) and not scale.requires_grad
    # with the scale, the GAN term pulls the last layer exactly as hard as the reconstruction
    (g,) = torch.autograd.grad(scale * gan, w)
    assert g.norm().item() == pytest.approx(2 * n, rel=1e-4)
    with pytest.raises(ValueError, match="last layer"):
        dcae15.AutoencoderLoss.adaptive_weight(rec, gan, None)
