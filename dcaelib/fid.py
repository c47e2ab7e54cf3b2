"""
FID as pytorch-fid computes it: the Inception v3 network of the TF graph (torchvision's Inception3 with
the pooling changes and the FID weights pt_inception-2015-12-05-6726825d.pth), streaming feature
statistics (float64 running sums, mergeable across ranks) and the Fréchet distance.

evaluate.py uses it for FID, metrics.py for rFID, curves.py for the FID of a curve's points, bench.py
to time the network; the Fréchet distance also serves judge.py's class judge, in its own feature space.
"""

import os
import warnings

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import torchvision
from torchvision.models import inception as tv_inception

# ==================================================================================================
# Inception v3 as the FID reference implementation (TF graph) computes it
# ==================================================================================================

FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   + FID_WEIGHTS_FILE)


def _avg_pool_no_pad(x):  # TF's average pool ignores the zero padding at borders
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(tv_inception.InceptionA):
    def _forward(self, x):
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return [self.branch1x1(x), b5, b3, self.branch_pool(_avg_pool_no_pad(x))]


class FIDInceptionC(tv_inception.InceptionC):
    def _forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        b7d = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                      self.branch7x7dbl_4, self.branch7x7dbl_5):
            b7d = layer(b7d)
        return [self.branch1x1(x), b7, b7d, self.branch_pool(_avg_pool_no_pad(x))]


class FIDInceptionE(tv_inception.InceptionE):
    """Mixed_7b pools with an average (no padding); Mixed_7c, a quirk of the TF graph, with a max."""

    def __init__(self, in_channels, max_pool):
        super().__init__(in_channels)
        self.max_pool = max_pool

    def _forward(self, x):
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        b3d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        b3d = torch.cat([self.branch3x3dbl_3a(b3d), self.branch3x3dbl_3b(b3d)], 1)
        pool = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_pool_no_pad(x)
        return [self.branch1x1(x), b3, b3d, self.branch_pool(pool)]


class FIDInception(torch.nn.Module):
    """uint8 images (B, 3, H, W) -> (B, 2048) pool3 features, as pytorch-fid computes them."""

    def __init__(self):
        super().__init__()
        net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False,
                                              num_classes=1008)
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
            old = getattr(net, name)
            new = FIDInceptionA(old.branch1x1.conv.in_channels, old.branch_pool.conv.out_channels)
            setattr(net, name, new)
        for name in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
            old = getattr(net, name)
            setattr(net, name, FIDInceptionC(768, old.branch7x7_1.conv.out_channels))
        net.Mixed_7b = FIDInceptionE(1280, max_pool=False)
        net.Mixed_7c = FIDInceptionE(2048, max_pool=True)
        self.net = net

    def load_weights(self, path):
        sd = torch.load(path, map_location="cpu", weights_only=True)
        self.net.load_state_dict(sd, strict=True)  # torchvision's Inception3 keys, 1008 classes
        return self

    @torch.no_grad()
    def forward(self, images):  # (B, 3, H, W) uint8
        x = images.float() / 255.0
        # no antialias, as pytorch-fid
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        n = self.net
        for layer in (n.Conv2d_1a_3x3, n.Conv2d_2a_3x3, n.Conv2d_2b_3x3, n.maxpool1, n.Conv2d_3b_1x1,
                      n.Conv2d_4a_3x3, n.maxpool2, n.Mixed_5b, n.Mixed_5c, n.Mixed_5d, n.Mixed_6a,
                      n.Mixed_6b, n.Mixed_6c, n.Mixed_6d, n.Mixed_6e, n.Mixed_7a, n.Mixed_7b,
                      n.Mixed_7c):
            x = layer(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1).double()  # (B, 2048)


def find_inception_weights(path=None):
    """--inception-weights PATH, else the torch hub cache, else a download; clear error offline."""
    if path:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--inception-weights {path} does not exist")
        return path
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", FID_WEIGHTS_FILE)
    if os.path.isfile(cached):
        return cached
    try:
        torch.hub.load_state_dict_from_url(FID_WEIGHTS_URL, progress=True)
    except OSError as err:
        raise FileNotFoundError(
            f"FID needs the Inception weights {FID_WEIGHTS_FILE}, which are not at {cached} and "
            f"could not be downloaded ({err}). Get them from {FID_WEIGHTS_URL} and put the file "
            f"in {os.path.dirname(cached)}/ or pass --inception-weights PATH") from err
    return cached


def build_inception(weights_path, device):
    return FIDInception().load_weights(weights_path).to(device).eval()


# ==================================================================================================
# Streaming statistics and the Fréchet distance
# ==================================================================================================


class FeatureStats:
    """Running float64 sums of features: n, sum x, sum x x^T. Merge by adding (or all_reduce)."""

    def __init__(self, dim=2048):
        self.n = 0
        self.s = torch.zeros(dim, dtype=torch.float64)
        self.ss = torch.zeros(dim, dim, dtype=torch.float64)

    def add(self, feats):  # (B, dim)
        feats = feats.double().cpu()
        self.n += feats.shape[0]
        self.s += feats.sum(0)
        self.ss += feats.T @ feats

    def merge(self, other):
        self.n += other.n
        self.s += other.s
        self.ss += other.ss
        return self

    def all_reduce(self):
        if dist.is_available() and dist.is_initialized():
            device = "cuda" if dist.get_backend() == "nccl" else "cpu"
            n = torch.tensor([float(self.n)], dtype=torch.float64)
            packed = torch.cat([n, self.s, self.ss.flatten()]).to(device)
            dist.all_reduce(packed)
            packed = packed.cpu()
            d = self.s.numel()
            self.n = int(packed[0].item())
            self.s, self.ss = packed[1 : 1 + d], packed[1 + d :].view(d, d)
        return self

    def mu_sigma(self):
        """Mean and unbiased covariance (N - 1), as numpy float64."""
        if self.n < 2:
            raise ValueError(f"need at least 2 images for FID statistics, got {self.n}")
        d = self.s.numel()
        if self.n < d:
            warnings.warn(f"Fréchet distance from {self.n} < {d} images: the {d}x{d} covariance "
                          f"is rank-deficient and the score is biased upwards; compare only "
                          f"numbers computed with the same count")
        mu = self.s / self.n
        sigma = (self.ss - self.n * torch.outer(mu, mu)) / (self.n - 1)
        return mu.numpy(), sigma.numpy()


def load_stats(path):
    with np.load(path) as stats:
        if "mu" not in stats or "sigma" not in stats:
            raise ValueError(f"{path} has no 'mu' and 'sigma': not a pytorch-fid statistics file")
        return stats["mu"].astype(np.float64), stats["sigma"].astype(np.float64)


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)), by eigenvalues.

    tr((S1 S2)^(1/2)) = sum of sqrt(eigenvalues of S1 S2). With S1 = V diag(w) V^T and M = V diag(w)^(1/2),
    these are the eigenvalues of the symmetric PSD matrix M^T S2 M, which `eigh` computes stably as
    reals; tiny negative ones from rounding are clipped to 0. Only the columns of M with w above
    rounding noise are kept: the others add 0, and a covariance of n < d images has rank n - 1, so the
    product shrinks to (n - 1) x (n - 1). Several times faster than scipy's sqrtm at 2048-d, and no
    complex parts.
    """
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"statistics of different dimensions: {mu1.shape} vs {mu2.shape}")
    if not all(np.isfinite(a).all() for a in (mu1, sigma1, mu2, sigma2)):
        raise ValueError("FID statistics contain NaN or inf (features overflowed?)")
    w1, v1 = np.linalg.eigh(sigma1)
    keep = w1 > max(w1.max(), 0.0) * len(w1) * np.finfo(w1.dtype).eps  # numpy's rank tolerance
    m = v1[:, keep] * np.sqrt(w1[keep])
    w = np.linalg.eigvalsh(m.T @ sigma2 @ m) if keep.any() else np.zeros(1)
    if w.min() < -1e-6 * max(abs(w.max()), 1.0):
        raise ValueError(f"covariance product has a clearly negative eigenvalue {w.min():.3g}: "
                         f"bad statistics")
    tr_covmean = np.sqrt(np.clip(w, 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)
