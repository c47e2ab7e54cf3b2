"""
pictures.py: images as the scripts write them: uint8 conversion (both ways, rounding as the official
evaluation does), PNG grids, and the partial-channel reconstruction grid (the paper's Figure 3).
"""

import math

import torch
from PIL import Image

from dcaelib import files



def to_uint8(x):
    """[-1, 1] float (B, 3, H, W) -> uint8, rounding as the official evaluation does."""
    return (x.float() * 127.5 + 128).clamp(0, 255).to(torch.uint8)

def pyplot():
    """matplotlib's pyplot on the file-only Agg backend, or None: matplotlib is optional, and the
    callers skip a picture with a note without it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def from_uint8(x):
    """uint8 (B, 3, H, W) -> float in [-1, 1], the image range of every model here."""
    return x.float() / 127.5 - 1


def save_grid(images, path, ncol):
    """Save (N, 3, H, W) images in [-1, 1] as one PNG grid with `ncol` columns and a 2 px gap."""
    images = to_uint8(images).cpu()
    n, _, h, w = images.shape
    nrow = math.ceil(n / ncol)
    grid = torch.full((3, nrow * (h + 2) + 2, ncol * (w + 2) + 2), 255, dtype=torch.uint8)
    for i in range(n):
        r, c = divmod(i, ncol)
        top, left = 2 + r * (h + 2), 2 + c * (w + 2)
        grid[:, top : top + h, left : left + w] = images[i]
    with files.atomic_write(path, ".png") as tmp:
        Image.fromarray(grid.permute(1, 2, 0).numpy()).save(tmp)

@torch.no_grad()
def partial_reconstructions(ae, x, channel_list):
    """(c', D(E(x)[:, :c'])) for each c' of `channel_list`, clamped to [-1, 1], from one encoder
    pass: the reconstructions from the first c' latent channels (the paper's Figure 3)."""
    z = ae.encode(x)
    for c in channel_list:
        yield c, ae.decode(z[:, :c]).clamp(-1, 1)

@torch.no_grad()
def save_recon_grid(path, images, models, channel_list):
    """A PNG with a row per image: the original, then each model's reconstruction from the first
    c' channels for each c' of `channel_list` in turn."""
    columns = [images]
    for ae in models:
        columns += [rec for _, rec in partial_reconstructions(ae, images, channel_list)]
    save_grid(torch.stack(columns, dim=1).flatten(0, 1), path, ncol=len(columns))
