"""
metrics.py: the reconstruction metrics of the paper's partial-channel comparison (DC-AE 1.5 Figure 3,
Table 1), measured for each c' (the reconstruction from the first c' latent channels).

- PSNR (psnr), SSIM (as torchmetrics, which the official evaluation uses), LPIPS-AlexNet, rFID
  (fid.py's Inception) and a sharpness ratio (the Laplacian energy of reconstructions over originals).
- `recon_metrics`: all of them for one autoencoder over a dataset, mergeable across ranks.
- `image_batches`: a dataset's first N images in batches, one rank's share.

evaluate.py's `recon` prints them; its `ref` and `fid` use `dataset_stats`; judge.py reads its images
with `image_batches`.
"""

import os
import warnings

import torch
import torch.nn.functional as F

import dcae15
from dcaelib.fid import FeatureStats, build_inception, find_inception_weights, frechet_distance
from dcaelib import cli, distributed, pictures

# ==================================================================================================
# SSIM, sharpness, LPIPS, the optional Inception
# ==================================================================================================


def mean_psnr(ae, batches, channel_list):
    """{c': mean PSNR (dB) of the reconstructions from the first c' channels} over batches of
    images in [-1, 1]."""
    sums, n = dict.fromkeys(channel_list, 0.0), 0
    for x in batches:
        for c, rec in pictures.partial_reconstructions(ae, x, channel_list):
            sums[c] += psnr(rec, x).sum().item()
        n += x.shape[0]
    return {c: total / n for c, total in sums.items()}

def psnr(x, y):
    """Per-image PSNR in dB on uint8-quantised images (official DC-AE evaluation), (B,) tensor."""
    mse = (pictures.to_uint8(x).double() - pictures.to_uint8(y).double()).pow(2).mean(dim=(1, 2, 3))
    return 10 * torch.log10(255.0**2 / mse.clamp_min(1e-10))


def ssim(x, y, data_range=255.0):
    """Per-image SSIM (Wang et al. 2004) of uint8 images: 11x11 Gaussian window (sigma 1.5),
    K = (0.01, 0.03), averaged over channels and the valid window positions (as torchmetrics, which
    the official evaluation uses)."""
    x, y = x.double(), y.double()
    coords = torch.arange(11, dtype=torch.float64, device=x.device) - 5
    g = torch.exp(-(coords**2) / (2 * 1.5**2))
    g = g / g.sum()
    C = x.shape[1]
    rows, cols = g.view(1, 1, 11, 1).expand(C, 1, 11, 1), g.view(1, 1, 1, 11).expand(C, 1, 1, 11)

    def filt(t):  # the 2D Gaussian window is separable: two 1D passes, 5.5x cheaper; valid only
        return F.conv2d(F.conv2d(t, rows, groups=C), cols, groups=C)

    mu_x, mu_y = filt(x), filt(y)
    var_x, var_y, cov = filt(x * x) - mu_x**2, filt(y * y) - mu_y**2, filt(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    numerator = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    s = numerator / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return s.mean(dim=(1, 2, 3))


def laplacian_energy(x):
    """Per-image mean square of the 3x3 Laplacian of uint8 (B, 3, H, W) images: the energy of the
    finest detail (edges, stripes, texture). `recon`'s sharpness is its ratio, reconstructions to
    originals: 1 is as crisp as the originals, a blurred reconstruction is below 1."""
    k = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], dtype=torch.float64,
                     device=x.device).expand(x.shape[1], 1, 3, 3)
    return F.conv2d(x.double(), k, groups=x.shape[1]).pow(2).mean(dim=(1, 2, 3))


def optional_network(mode, build, what):
    """A network that an optional metric `what` needs, by a flag's mode: "off" None; "on" build()
    or its FileNotFoundError (the weights are missing); "auto" build(), or None with a note that the
    metric is skipped and why."""
    if mode == "off":
        return None
    try:
        return build()
    except FileNotFoundError as err:
        if mode == "on":
            raise
        print(f"note: {what} skipped: {err}")
        return None


def build_lpips_alex(mode):
    """LPIPS-AlexNet (the official evaluation's metric), as `optional_network` gives it."""
    def build():
        import lpips

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return dcae15.freeze(lpips.LPIPS(net="alex", verbose=False))
        except OSError as err:
            raise FileNotFoundError(f"LPIPS needs torchvision's AlexNet weights "
                                    f"alexnet-owt-7be5be79.pth in "
                                    f"{os.path.join(torch.hub.get_dir(), 'checkpoints')}/ ({err})")

    return optional_network(mode, build, "LPIPS")


def maybe_inception(mode, weights, device, what):
    """The FID Inception for an optional metric `what` (rFID in `recon`, FID in `curve`), as
    `optional_network` gives it."""
    return optional_network(mode, lambda: build_inception(find_inception_weights(weights), device),
                            what)


# ==================================================================================================
# Over a dataset
# ==================================================================================================


def num_first(num_images, dataset):
    """How many items "the first num_images" of a dataset are (--num-images 0: all of them)."""
    return min(num_images, len(dataset)) if num_images > 0 else len(dataset)


def image_batches(dataset, num_images, batch_size, rank=0, world=1, desc=None):
    """Batches of (images in [-1, 1], labels) of the first num_images items, this rank's share."""
    n = num_first(num_images, dataset)
    starts = list(range(0, n, batch_size))[rank::world]
    for start in cli.progress(starts, desc=desc, disable=desc is None or rank != 0):
        items = [dataset[i] for i in range(start, min(start + batch_size, n))]
        yield torch.stack([im for im, _ in items]), torch.tensor([lab for _, lab in items])


def dataset_stats(dataset, num_images, batch_size, inception, device, rank, world, desc):
    """The Inception statistics of the first num_images images, merged over the ranks."""
    stats = FeatureStats()
    for x, _ in image_batches(dataset, num_images, batch_size, rank, world, desc=desc):
        stats.add(inception(pictures.to_uint8(x.to(device))))
    return stats.all_reduce()


def add_scores(sums, rec, x, x8, lpips_net):
    """Add a batch's summed PSNR, SSIM and (with `lpips_net`, on the uint8-quantised images in
    [-1, 1]) LPIPS of the reconstructions `rec` against the originals `x` (`x8`: as uint8) to `sums`;
    returns the reconstructions as uint8."""
    r8 = pictures.to_uint8(rec)
    sums["psnr"] += psnr(rec, x).sum().item()
    sums["ssim"] += ssim(r8, x8).sum().item()
    if lpips_net is not None:
        sums["lpips"] += lpips_net(pictures.from_uint8(r8), pictures.from_uint8(x8)).sum().item()
    return r8


@torch.no_grad()
def recon_metrics(ae, dataset, channel_list, num_images, batch_size, device, inception, ref_stats,
                  lpips_net, rank, world, label):
    """{c': {psnr, ssim, sharpness, lpips?, rfid?}} for one autoencoder over the first num_images
    images (all ranks' shares).

    rFID (when `inception` is given) compares the reconstructions' features with `ref_stats`, the
    originals'.
    """
    sums = {c: {"psnr": 0.0, "ssim": 0.0, "sharpness": 0.0, "lpips": 0.0} for c in channel_list}
    detail = 0.0  # the originals' Laplacian energy, summed: sharpness = reconstructions' / this
    stats = {c: FeatureStats() for c in channel_list} if inception is not None else None
    n = 0
    batches = image_batches(dataset, num_images, batch_size, rank, world, desc=f"evaluating {label}")
    for x, _ in batches:
        x = x.to(device)
        x8 = pictures.to_uint8(x)
        detail += laplacian_energy(x8).sum().item()
        for c, rec in pictures.partial_reconstructions(ae, x, channel_list):
            r8 = add_scores(sums[c], rec, x, x8, lpips_net)
            sums[c]["sharpness"] += laplacian_energy(r8).sum().item()
            if stats is not None:
                stats[c].add(inception(r8))
        n += x.shape[0]
    n = int(distributed.all_reduce_mean(float(n)) * world)
    results = {}
    for c in channel_list:
        row = {k: distributed.all_reduce_mean(v) * world / n for k, v in sums[c].items()}
        row["sharpness"] /= distributed.all_reduce_mean(detail) * world / n
        if lpips_net is None:
            row.pop("lpips")
        if stats is not None:
            row["rfid"] = frechet_distance(*stats[c].all_reduce().mu_sigma(), *ref_stats)
        results[c] = row
    return results


TAIL_WAYS = ("kept", "zeroed", "mean", "shuffled")


@torch.no_grad()
def tail_metrics(ae, dataset, start, num_images, batch_size, device, lpips_net=None, seed=0):
    """What the latent channels from `start` on carry: {way: {psnr, ssim, lpips?}} of the full latent's
    reconstruction with those channels kept, zeroed (the first `start` channels alone), replaced by their
    mean over the images (what every image shares), and shuffled between images (right statistics, wrong
    image). One process; the latents of all `num_images` images are held at once."""
    x = torch.cat([b for b, _ in image_batches(dataset, num_images, batch_size)])
    z = torch.cat([ae.encode(b.to(device)) for b in x.split(batch_size)])
    perm = torch.randperm(len(z), generator=torch.Generator().manual_seed(seed)).to(device)
    tails = {"kept": z[:, start:], "zeroed": torch.zeros_like(z[:, start:]),
             "mean": z[:, start:].mean(0, keepdim=True).expand_as(z[:, start:]), "shuffled": z[perm, start:]}
    results = {}
    for way, tail in tails.items():
        sums = {"psnr": 0.0, "ssim": 0.0, "lpips": 0.0}
        for i in range(0, len(z), batch_size):
            xb = x[i:i + batch_size].to(device)
            rec = ae.decode(torch.cat([z[i:i + batch_size, :start], tail[i:i + batch_size]], 1)).clamp(-1, 1)
            add_scores(sums, rec, xb, pictures.to_uint8(xb), lpips_net)
        if lpips_net is None:
            sums.pop("lpips")
        results[way] = {k: v / len(z) for k, v in sums.items()}
    return results
