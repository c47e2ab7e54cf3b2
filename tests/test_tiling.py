"""Tiled encode and decode (dcaelib/tiling.py): tiles placed and blended exactly, whole below a
tile, memory bounded by a tile, and no seam on a smooth image."""

import pytest
import torch

import dcae15
from dcaelib import tiling


def pointwise(ae):
    """The same network with only the centre tap of every 3x3 kernel: each latent cell then depends
    on its own f x f pixels only, so tiling changes nothing but rounding."""
    with torch.no_grad():
        for m in ae.modules():
            if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3):
                centre = m.weight[:, :, 1, 1].clone()
                m.weight.zero_()
                m.weight[:, :, 1, 1] = centre
    return ae


@pytest.mark.parametrize("size", [(36, 20), (40, 72), (4, 100)])  # odd latent sides, not multiples of a tile
def test_tiling_blends_and_places_tiles_exactly(tiny_ae, size):
    ae = pointwise(tiny_ae)
    x = torch.randn(2, 3, *size)
    z, c_prime = ae.encode(x), 5
    whole = ae.decode(z), ae.decode(z[:, :c_prime]), ae.encode(x, c_prime)
    tiled = tiling.Tiled(ae, 16, 8)  # 4-cell tiles overlapping by 2 (f = 4)
    torch.testing.assert_close(tiled.encode(x), z, rtol=0, atol=1e-6)
    for a, b in zip((tiled.decode(z), tiled.decode(z[:, :c_prime]), tiled.encode(x, c_prime)), whole):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_an_image_that_fits_one_tile_is_coded_whole(tiny_ae):
    x = torch.randn(2, 3, 32, 24)
    z, y = tiny_ae.encode(x), tiny_ae.decode(tiny_ae.encode(x))
    tiled = tiling.Tiled(tiny_ae, 32)
    assert torch.equal(tiled.encode(x), z) and torch.equal(tiled.decode(z), y)
    assert tiling.tiled_above(tiny_ae, 0) is tiny_ae and tiled.latent_channels == 8  # the AE's own
    for bad in ((30, None), (32, 10), (32, 20)):  # not multiples of f = 4, overlap above half a tile
        with pytest.raises(ValueError, match="multiples of its spatial compression 4"):
            tiling.Tiled(tiny_ae, *bad)


def test_tiled_activations_stop_growing_with_the_image(tiny_ae):
    """The largest tensor the decoder makes is one tile's, at any image size; untiled it grows with
    the image."""
    largest = []
    hooks = [m.register_forward_hook(lambda m, i, o: largest.append(o.numel()))
             for m in tiny_ae.decoder.modules() if m is not tiny_ae.decoder]

    def peak(side, tile):
        largest.clear()
        tiling.tiled_above(tiny_ae, tile).decode(torch.randn(1, 8, side, side))
        return max(largest)

    assert peak(16, 32) == peak(32, 32)  # 64 and 128 px images, 32 px tiles
    assert peak(32, None) == 4 * peak(16, None)
    for h in hooks:
        h.remove()


def test_tiling_leaves_no_seam_on_a_smooth_image():
    """A tiny AE trained a little on smooth images, decoding a smooth image in tiles: next to tile
    borders, neighbouring pixels differ no more than anywhere in the whole-image decode, and the
    tiled image is within 35 dB PSNR of it. Without an overlap the seams show (the test can see them)."""
    ae = dcae15.DCAE(dcae15.build_dcae_config("dc-ae-tiny"))
    opt = torch.optim.Adam(ae.parameters(), 2e-3)
    g = torch.Generator().manual_seed(0)

    def smooth(n, h, w):
        yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
        phase, freq = torch.rand(2, n, 3, 1, 1, generator=g) * 6
        return torch.tanh(torch.sin(freq * xx + phase) * torch.cos(freq * yy - phase))

    for _ in range(150):
        x = smooth(8, 32, 32)
        loss = (ae(x)[0] - x).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    ae.eval()
    with torch.no_grad():
        z = ae.encode(smooth(2, 64, 96))
        whole = ae.decode(z)

        def jumps(y):  # the largest step between neighbouring columns, per column
            return (y[..., 1:] - y[..., :-1]).abs().amax(dim=(0, 1, 2))

        for overlap, seam in ((8, False), (0, True)):
            tiled = tiling.Tiled(ae, 32, overlap).decode(z)
            excess = (jumps(tiled) - jumps(whole).max()).max().item()
            psnr = 10 * torch.log10(4 / (tiled - whole).pow(2).mean()).item()
            if seam:
                assert excess > 0.1, excess
            else:
                assert excess < 0.02 and psnr > 35, (excess, psnr)


