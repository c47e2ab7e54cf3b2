"""
tiling.py: encode and decode images larger than memory allows, in overlapping tiles on the latent
grid, blended linearly across the overlap (ours: the paper codes whole images). `Tiled(ae, ...)` is
an autoencoder that codes in tiles above a size and whole below it; the AE itself is not changed.

Near a tile's border the network sees the tile's padding instead of its neighbours, so tiled
results differ a little from whole-image ones (RESULTS.md, "Tiled encode and decode", says how much).
"""

import math

import torch


def tile_starts(size, tile, overlap):
    """Where the tiles of `tile` cells start along an axis of `size` cells: they cover it, spread
    evenly from 0 to size - tile, and neighbours overlap by at least `overlap` cells."""
    if size <= tile:
        return [0]
    n = math.ceil((size - overlap) / (tile - overlap))  # the fewest tiles that overlap enough
    return [round(k * (size - tile) / (n - 1)) for k in range(n)]


def blend_weights(start, length, size, ramp):
    """A tile's weight along one axis: 1, falling linearly towards 0 over the `ramp` cells at each
    side that has a neighbour (not at the image's border). Where two tiles overlap by `ramp`, their
    weights sum to 1: a linear cross-fade from one to the other."""
    w = torch.ones(length)
    if ramp > 0:
        r = (torch.arange(ramp) + 0.5) / ramp  # 1/(2 ramp) ... 1 - 1/(2 ramp): never 0
        if start > 0:
            w[:ramp] = torch.minimum(w[:ramp], r)
        if start + length < size:
            w[-ramp:] = torch.minimum(w[-ramp:], r.flip(0))
    return w


def tiled(fn, x, tile, overlap, cell_in, cell_out):
    """fn over overlapping tiles of x (B, C, H, W), blended: what encode / decode do with tiling on.

    Sizes count cells of the latent grid: one cell is `cell_in` pixels of x and `cell_out` of fn's
    output (f and 1 for encode, 1 and f for decode), so that every tile starts on the latent grid.
    Each output pixel is the weighted mean of the tiles that cover it (`blend_weights`). Memory: the
    output, and one tile's activations at a time.
    """
    grid_h, grid_w = x.shape[2] // cell_in, x.shape[3] // cell_in
    out = weight = None
    for i in tile_starts(grid_h, tile, overlap):
        for j in tile_starts(grid_w, tile, overlap):
            y = fn(x[:, :, i * cell_in:(i + tile) * cell_in, j * cell_in:(j + tile) * cell_in])
            h, w = y.shape[2:]
            top, left = i * cell_out, j * cell_out
            wy = blend_weights(top, h, grid_h * cell_out, overlap * cell_out)
            wx = blend_weights(left, w, grid_w * cell_out, overlap * cell_out)
            wt = (wy[:, None] * wx[None]).to(y)
            if out is None:
                out = y.new_zeros(y.shape[0], y.shape[1], grid_h * cell_out, grid_w * cell_out)
                weight = y.new_zeros(grid_h * cell_out, grid_w * cell_out)
            out[:, :, top:top + h, left:left + w] += y * wt
            weight[top:top + h, left:left + w] += wt
    return out.div_(weight)  # in place: no second image-sized tensor


class Tiled:
    """An autoencoder (dcae15.DCAE or DC-AE 1.0's) that encodes and decodes images larger than
    `tile_size` pixels (a side) in tiles of that size overlapping by `overlap` pixels (default a
    quarter tile), so that memory stops growing with the image beyond one tile plus the output. Both
    must be multiples of the spatial compression f (tiles start on the latent grid), with overlap <=
    tile_size / 2. An image that fits in one tile is coded whole, exactly as by the AE itself. Every
    other attribute is the AE's."""

    def __init__(self, ae, tile_size, overlap=None):
        f = ae.spatial_compression_ratio
        overlap = tile_size // 4 // f * f if overlap is None else overlap
        if tile_size <= 0 or tile_size % f or overlap < 0 or overlap % f or 2 * overlap > tile_size:
            raise ValueError(f"tiles of {tile_size} px overlapping by {overlap} px do not fit this "
                             f"autoencoder: both must be multiples of its spatial compression {f}, "
                             f"with 0 <= overlap <= tile / 2")
        self.ae, self.tile_size, self.overlap = ae, tile_size, overlap
        self.cells = (tile_size // f, overlap // f)  # in latent cells

    def encode(self, x, c_prime=None):  # (B, 3, H, W) -> (B, c', H/f, W/f)
        f = self.ae.spatial_compression_ratio
        if max(x.shape[2:]) <= self.tile_size:
            return self.ae.encode(x, c_prime)
        self.ae.check_images(x)
        return tiled(lambda t: self.ae.encode(t, c_prime), x, *self.cells, f, 1)

    def decode(self, z):  # (B, c', h, w) -> (B, 3, h*f, w*f)
        if max(z.shape[2:]) <= self.cells[0]:
            return self.ae.decode(z)
        return tiled(self.ae.decode, z, *self.cells, 1, self.ae.spatial_compression_ratio)

    def to(self, *args, **kwargs):
        self.ae.to(*args, **kwargs)
        return self

    def __getattr__(self, name):  # latent_channels, cfg, eval, ...: the AE's own
        return getattr(self.ae, name)


def tiled_above(ae, tile_size):
    """`Tiled(ae, tile_size)`, or the AE itself for tile_size 0 or None (never tile): what the
    scripts' --tile-size gives."""
    return Tiled(ae, tile_size) if tile_size else ae
