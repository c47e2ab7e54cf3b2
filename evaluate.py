"""
Evaluate autoencoders and generators: rFID, PSNR, SSIM, LPIPS, the partial-channel sweep, and FID.

    # reconstruction metrics for each c' (the paper's partial-channel comparison), with a baseline
    python evaluate.py recon --ae-ckpt runs/ae/last.pt --baseline-ckpt runs/ae-plain/last.pt
    # reference statistics of a dataset (pytorch-fid .npz: mu, sigma)
    python evaluate.py ref --data imagefolder --data-path /data/imagenet/train --image-size 256 \
        --out ref.npz
    # FID of samples (an .npz from sample.py, an image folder, or a DiT sampled on the fly)
    python evaluate.py fid --samples samples.npz --ref ref.npz
    # how often a DiT's samples show the requested class (a small CNN trained on the AE's
    # reconstructions judges)
    python evaluate.py classes --ckpt runs/dit/last.pt

FID is pytorch-fid compatible: torchvision's Inception v3 with the TF-graph pooling changes and the FID
weights pt_inception-2015-12-05-6726825d.pth; uint8 images, bilinear resize to 299, 2048-d pool
features; statistics accumulated in float64 as running sums (mergeable across ranks).
Run `python evaluate.py SUBCOMMAND --help`.
"""

import argparse
import json
import math
import os
import sys
import warnings

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import torchvision
from PIL import Image
from torchvision.models import inception as tv_inception
from tqdm import tqdm

import common
import data
import dcae15

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
        if self.n < 2048:
            warnings.warn(f"FID from {self.n} < 2048 images: the 2048x2048 covariance is "
                          f"rank-deficient and the score is biased upwards; compare only numbers "
                          f"computed with the same count")
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

    tr((S1 S2)^(1/2)) = sum of sqrt(eigenvalues of S1 S2). These equal the eigenvalues of the
    symmetric PSD matrix S1^(1/2) S2 S1^(1/2), which `eigh` computes stably as reals; tiny negative
    ones from rounding are clipped to 0. About 7x faster than scipy's sqrtm at 2048-d, and no
    complex parts.
    """
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"statistics of different dimensions: {mu1.shape} vs {mu2.shape}")
    if not all(np.isfinite(a).all() for a in (mu1, sigma1, mu2, sigma2)):
        raise ValueError("FID statistics contain NaN or inf (features overflowed?)")
    w1, v1 = np.linalg.eigh(sigma1)
    sqrt1 = (v1 * np.sqrt(np.clip(w1, 0, None))) @ v1.T
    w = np.linalg.eigvalsh(sqrt1 @ sigma2 @ sqrt1)
    if w.min() < -1e-6 * max(abs(w.max()), 1.0):
        raise ValueError(f"covariance product has a clearly negative eigenvalue {w.min():.3g}: "
                         f"bad statistics")
    tr_covmean = np.sqrt(np.clip(w, 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


# ==================================================================================================
# PSNR, SSIM, LPIPS
# ==================================================================================================


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


def build_lpips_alex(mode):
    """LPIPS-AlexNet (the official evaluation's metric); None with a message if weights are missing."""
    if mode == "off":
        return None
    import lpips

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return dcae15.freeze(lpips.LPIPS(net="alex", verbose=False))
    except OSError as err:
        msg = (f"LPIPS needs torchvision's AlexNet weights alexnet-owt-7be5be79.pth in "
               f"{os.path.join(torch.hub.get_dir(), 'checkpoints')}/ ({err})")
        if mode == "on":
            raise FileNotFoundError(msg) from err
        print(f"note: LPIPS skipped: {msg}")
        return None


# ==================================================================================================
# Subcommands
# ==================================================================================================


def image_batches(dataset, num_images, batch_size, rank=0, world=1, desc=None):
    """Batches of (images in [-1, 1], labels) of the first num_images items, this rank's share."""
    n = min(num_images, len(dataset)) if num_images > 0 else len(dataset)
    starts = list(range(0, n, batch_size))[rank::world]
    for start in tqdm(starts, desc=desc, disable=desc is None or rank != 0, file=sys.stdout):
        items = [dataset[i] for i in range(start, min(start + batch_size, n))]
        yield torch.stack([im for im, _ in items]), torch.tensor([lab for _, lab in items])


@torch.no_grad()
def recon_metrics(ae, dataset, channel_list, args, device, inception, ref_stats, lpips_net, rank,
                  world, label):
    """{c': {psnr, ssim, lpips?, rfid?}} for one autoencoder over the evaluation images.

    rFID (when `inception` is given) compares the reconstructions' features with `ref_stats`, the
    originals'.
    """
    sums = {c: {"psnr": 0.0, "ssim": 0.0, "lpips": 0.0} for c in channel_list}
    stats = {c: FeatureStats() for c in channel_list} if inception is not None else None
    n = 0
    batches = image_batches(dataset, args.num_images, args.batch_size, rank, world,
                            desc=f"evaluating {label}")
    for x, _ in batches:
        x = x.to(device)
        z = ae.encode(x)
        x8 = common.to_uint8(x)
        for c in channel_list:
            rec = ae.decode(z[:, :c]).clamp(-1, 1)
            r8 = common.to_uint8(rec)
            sums[c]["psnr"] += common.psnr(rec, x).sum().item()
            sums[c]["ssim"] += ssim(r8, x8).sum().item()
            if lpips_net is not None:  # on the uint8-quantised images, in [-1, 1]
                d = lpips_net(r8.float() / 127.5 - 1, x8.float() / 127.5 - 1)
                sums[c]["lpips"] += d.sum().item()
            if stats is not None:
                stats[c].add(inception(r8))
        n += x.shape[0]
    n = int(common.all_reduce_mean(float(n)) * world)
    results = {}
    for c in channel_list:
        row = {k: common.all_reduce_mean(v) * world / n for k, v in sums[c].items()}
        if lpips_net is None:
            row.pop("lpips")
        if stats is not None:
            row["rfid"] = frechet_distance(*stats[c].all_reduce().mu_sigma(), *ref_stats)
        results[c] = row
    return results


def dataset_stats(dataset, args, inception, device, rank, world, desc):
    stats = FeatureStats()
    for x, _ in image_batches(dataset, args.num_images, args.batch_size, rank, world, desc=desc):
        stats.add(inception(common.to_uint8(x.to(device))))
    return stats.all_reduce()


def recon_table(columns, channel_list, title):
    """The text table of `recon`: one row per c', a column per (model, metric)."""
    metrics = list(next(iter(columns["model"].values())))
    names = [f"{name + ' ' + m:>16}" for name in columns for m in metrics]
    header = f"{'c_prime':>8} | " + " | ".join(names)
    lines = [title, header, "-" * len(header)]
    for c in channel_list:
        values = [f"{columns[name][c][m]:>16.4f}" for name in columns for m in metrics]
        lines.append(f"{c:>8} | " + " | ".join(values))
    return "\n".join(lines)


def cmd_recon(args, rank, world, device):
    ae, _, _ = load_ae(args.ae_ckpt, args.ae_config)
    baseline = load_ae(args.baseline_ckpt, args.ae_config)[0] if args.baseline_ckpt else None
    C = ae.latent_channels
    if args.latent_channels:
        channel_list = dcae15.check_channel_choices(args.latent_channels.split(","), C)
    else:
        channel_list = dcae15.default_channel_choices(C)
    if baseline is not None and baseline.latent_channels != C:
        raise ValueError(f"--baseline-ckpt has {baseline.latent_channels} latent channels, "
                         f"--ae-ckpt {C}")
    dataset = data.build_dataset(args.data, args.split, args.image_size, args.data_path, args.seed)
    f = ae.spatial_compression_ratio
    if args.image_size % f:
        raise ValueError(f"--image-size {args.image_size} is not divisible by the compression {f}")
    inception, ref_stats = maybe_inception(args, device), None
    if inception is not None:  # rFID compares reconstructions with the originals' statistics
        ref = dataset_stats(dataset, args, inception, device, rank, world, "reference features")
        ref_stats = ref.mu_sigma()
    lpips_net = build_lpips_alex(args.lpips)
    if lpips_net is not None:
        lpips_net.to(device)
    columns = {}
    for name, model in (("model", ae), ("baseline", baseline)):
        if model is not None:
            columns[name] = recon_metrics(model.to(device), dataset, channel_list, args, device,
                                          inception, ref_stats, lpips_net, rank, world, name)
    if rank == 0:
        n = min(args.num_images, len(dataset))
        print(recon_table(columns, channel_list, f"reconstruction from the first c' latent channels, "
                                                 f"{n} {args.data} {args.split} images at "
                                                 f"{args.image_size}px"))
        results = {name: {str(c): row for c, row in col.items()} for name, col in columns.items()}
        return {"command": "recon", "ae_ckpt": args.ae_ckpt, "baseline_ckpt": args.baseline_ckpt,
                "num_images": n, "results": results}


def cmd_ref(args, rank, world, device):
    dataset = data.build_dataset(args.data, args.split, args.image_size, args.data_path, args.seed)
    inception = build_inception(find_inception_weights(args.inception_weights), device)
    stats = dataset_stats(dataset, args, inception, device, rank, world, "reference features")
    if rank == 0:
        mu, sigma = stats.mu_sigma()
        common.save_npz(args.out, mu=mu, sigma=sigma)  # pytorch-fid format
        print(f"wrote {args.out}: statistics of {stats.n} images")
        return {"command": "ref", "out": args.out, "num_images": stats.n}


def sample_batches(args, rank, world, device):
    """uint8 (B, 3, H, W) batches of the samples: an .npz (arr_0 NHWC), an image folder, or a DiT
    checkpoint sampled on the fly."""
    if args.samples and args.samples.endswith(".npz"):
        arr = np.load(args.samples)["arr_0"]
        if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
            raise ValueError(f"{args.samples}: arr_0 must be uint8 (N, H, W, 3), got {arr.dtype} "
                             f"{arr.shape}")
        for start in list(range(0, len(arr), args.batch_size))[rank::world]:
            yield torch.from_numpy(arr[start : start + args.batch_size]).permute(0, 3, 1, 2)
    elif args.samples:
        if not os.path.isdir(args.samples):
            raise FileNotFoundError(f"--samples {args.samples} is neither an .npz nor a folder")
        extensions = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
        files = sorted(os.path.join(dp, f) for dp, _, fs in os.walk(args.samples) for f in fs
                       if f.lower().endswith(extensions))
        if not files:
            raise FileNotFoundError(f"no images in {args.samples}")
        for start in list(range(0, len(files), args.batch_size))[rank::world]:
            chunk = files[start : start + args.batch_size]
            ims = [np.array(Image.open(f).convert("RGB")) for f in chunk]
            yield torch.from_numpy(np.stack(ims)).permute(0, 3, 1, 2)
    else:
        model, ae, ckpt = dcae15.load_dit(args.ckpt)
        model.to(device)
        ae.to(device)
        n_batches = math.ceil(args.num_samples / args.batch_size)
        for b in list(range(n_batches))[rank::world]:
            size = min(args.batch_size, args.num_samples - b * args.batch_size)
            gen = torch.Generator(device).manual_seed(args.seed * 1_000_003 + b)
            # random labels, as the official evaluation draws them
            y = torch.randint(model.cfg.num_classes, (size,), generator=gen, device=device)
            images = dcae15.generate(model, ae, ckpt["latent_scale"], y, gen, ckpt["objective"],
                                     args.steps, cfg_scale=args.cfg_scale)
            yield common.to_uint8(images)


def cmd_fid(args, rank, world, device):
    if bool(args.samples) == bool(args.ckpt):
        raise ValueError("pass exactly one of --samples (an .npz or image folder) and --ckpt (a DiT "
                         "to sample)")
    if not args.ref and not args.ref_data:
        raise ValueError("pass --ref STATS.npz or --ref-data (a dataset, with --data-path / "
                         "--image-size)")
    ref = load_stats(args.ref) if args.ref else None
    inception = build_inception(find_inception_weights(args.inception_weights), device)
    if ref is None:
        dataset = data.build_dataset(args.ref_data, args.split, args.image_size, args.data_path,
                                     args.seed)
        stats = dataset_stats(dataset, args, inception, device, rank, world, "reference features")
        ref = stats.mu_sigma()
    stats = FeatureStats()
    batches = sample_batches(args, rank, world, device)
    for x in tqdm(batches, desc="sample features", disable=rank != 0, file=sys.stdout):
        stats.add(inception(x.to(device)))
    stats.all_reduce()
    fid = frechet_distance(*stats.mu_sigma(), *ref)
    if rank == 0:
        print(f"FID {fid:.4f} ({stats.n} samples, pytorch-fid compatible Inception)")
        return {"command": "fid", "fid": fid, "num_samples": stats.n,
                "ref": args.ref or args.ref_data}


def class_judge(num_classes):
    """A small CNN (four conv-BN-ReLU-pool blocks) that tells the classes apart: `classes`' judge."""
    nn = torch.nn

    def block(i, o):
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(),
                             nn.MaxPool2d(2))

    return nn.Sequential(block(3, 32), block(32, 64), block(64, 128), block(128, 128),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, num_classes))


@torch.no_grad()
def reconstructions(ae, dataset, num_images, batch_size, device, desc):
    """(uint8 images, labels): the AE's reconstructions of the first num_images of dataset (uint8,
    to save memory)."""
    xs, ys = [], []
    for x, y in image_batches(dataset, num_images, batch_size, desc=desc):
        xs.append(common.to_uint8(ae(x.to(device))[0]).cpu())
        ys.append(y)
    return torch.cat(xs), torch.cat(ys)


def train_judge(x, y, num_classes, steps, seed, device):
    """The judge: trained `steps` steps (batch 64, cosine decay) on uint8 images x with labels y."""
    torch.manual_seed(seed)
    judge = class_judge(num_classes).to(device)
    opt = torch.optim.Adam(judge.parameters(), lr=2e-3)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)  # a settled judge at the end
    for _ in tqdm(range(steps), desc="training the judge", file=sys.stdout):
        idx = torch.randint(len(x), (64,))
        xb = x[idx].to(device).float() / 127.5 - 1
        xb = xb + 0.1 * torch.randn_like(xb)  # a little robustness to the noise left in samples
        loss = F.cross_entropy(judge(xb), y[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        decay.step()
    return judge.eval()


def cmd_classes(args, rank, world, device):
    """How often a DiT's samples show the requested class, judged by a CNN trained on the AE's
    reconstructions.

    The judge sees reconstructions, not the sharp originals, because decoded samples look like
    those: trained on originals, it misreads the AE's blur. Its accuracy on validation
    reconstructions is the ceiling.
    """
    if world > 1:
        raise ValueError("evaluate.py classes runs in one process; start it with python, not "
                         "torchrun")
    if args.num_samples <= 0 or args.num_images <= 0 or args.judge_steps <= 0:
        raise ValueError("--num-samples, --num-images and --judge-steps must be positive")
    try:
        cfg_scales = [float(v) for v in args.cfg_scales.split(",")]
    except ValueError:
        raise ValueError(f"--cfg-scales must be comma-separated numbers, "
                         f"got {args.cfg_scales!r}") from None
    model, ae, ckpt = dcae15.load_dit(args.ckpt, args.ae_ckpt)
    model.to(device)
    ae.to(device)
    run = ckpt["args"]  # the DiT's own data: its classes are the ones to judge
    train = data.build_dataset(run["data"], "train", run["image_size"], run["data_path"], run["seed"])
    val = data.build_dataset(run["data"], "val", run["image_size"], run["data_path"], run["seed"])
    num_classes = model.cfg.num_classes

    x, y = reconstructions(ae, train, args.num_images, args.batch_size, device, "judge data")
    judge = train_judge(x, y, num_classes, args.judge_steps, args.seed, device)

    @torch.no_grad()
    def accuracy(images, labels):  # uint8 images, as a saved sample would be
        predicted = judge(images.to(device).float() / 127.5 - 1).argmax(1).cpu()
        return (predicted == labels).float().mean().item()

    xv, yv = reconstructions(ae, val, 1000, args.batch_size, device, "val reconstructions")
    result = {"command": "classes", "ckpt": args.ckpt, "ceiling": accuracy(xv, yv), "samples": {}}
    labels = torch.arange(args.num_samples) % num_classes  # every class equally often
    for scale in cfg_scales:
        hits = 0.0
        for b, start in enumerate(range(0, args.num_samples, args.batch_size)):
            yb = labels[start : start + args.batch_size]
            gen = torch.Generator(device).manual_seed(args.seed * 1_000_003 + b)  # as sample.py
            images = dcae15.generate(model, ae, ckpt["latent_scale"], yb.to(device), gen,
                                     ckpt["objective"], args.steps, cfg_scale=scale)
            hits += accuracy(common.to_uint8(images), yb) * len(yb)
        result["samples"][str(scale)] = hits / args.num_samples
    print(f"judge: a small CNN trained {args.judge_steps} steps on the AE's reconstructions of "
          f"{len(x)} training images; it gets {result['ceiling']:.1%} of {len(xv)} val "
          f"reconstructions right (the ceiling; chance is {1 / num_classes:.1%})")
    for scale, acc in result["samples"].items():
        print(f"  guidance {float(scale):4.1f}: {acc:6.1%} of {args.num_samples} samples show the "
              f"requested class")
    return result


def load_ae(path, ae_config):
    """An autoencoder for evaluation: ours (EMA) or official (needs --ae-config); no latent scale."""
    return dcae15.load_autoencoder(path, ae_config, latent_scale=1.0)


def maybe_inception(args, device):
    """The FID Inception for rFID in `recon`: --fid on requires it, auto skips it with a note."""
    if args.fid == "off":
        return None
    try:
        return build_inception(find_inception_weights(args.inception_weights), device)
    except FileNotFoundError as err:
        if args.fid == "on":
            raise
        print(f"note: rFID skipped: {err}")
        return None


def build_parser():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    defaults = argparse.ArgumentDefaultsHelpFormatter

    def data_flags(q, default_split):
        q.add_argument("--data", default="shapes", choices=data.DATASETS, help="dataset")
        q.add_argument("--data-path", default=None, help="dataset folder (imagefolder, cifar10)")
        q.add_argument("--split", default=default_split, choices=["train", "val"],
                       help="dataset split")
        q.add_argument("--image-size", type=int, default=64, help="resolution (ADM centre crop)")
        q.add_argument("--num-images", type=int, default=1000,
                       help="evaluate the first N images (0: all)")
        q.add_argument("--seed", type=int, default=0, help="seed of the shapes dataset")

    def common_flags(q):
        q.add_argument("--batch-size", type=int, default=50, help="images per batch (per process)")
        q.add_argument("--inception-weights", default=None,
                       help=f"path of {FID_WEIGHTS_FILE} (default: torch hub cache, else download)")
        q.add_argument("--json", default=None, help="also write the results to this JSON file")
        q.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda")

    r = sub.add_parser("recon", help="PSNR / SSIM / LPIPS / rFID of reconstructions for each c'",
                       formatter_class=defaults)
    r.add_argument("--ae-ckpt", required=True,
                   help="train_ae.py checkpoint or an official DC-AE file")
    r.add_argument("--ae-config", default=None, help="preset of an official AE file")
    r.add_argument("--baseline-ckpt", default=None,
                   help="a second AE (e.g. trained with --no-structured) as a column")
    r.add_argument("--latent-channels", default=None,
                   help="comma-separated c' values (default: multiples of c/8)")
    r.add_argument("--fid", default="auto", choices=["auto", "on", "off"],
                   help="rFID (needs the Inception weights)")
    r.add_argument("--lpips", default="auto", choices=["auto", "on", "off"],
                   help="LPIPS-AlexNet (needs its weights)")
    data_flags(r, "val")
    common_flags(r)

    f = sub.add_parser("fid", help="FID of generated samples against reference statistics or a "
                                   "dataset", formatter_class=defaults)
    f.add_argument("--samples", default=None,
                   help="an .npz from sample.py (arr_0 uint8 NHWC) or an image folder")
    f.add_argument("--ckpt", default=None,
                   help="a train_dit.py checkpoint to sample on the fly (random labels)")
    f.add_argument("--num-samples", type=int, default=10000, help="with --ckpt: how many samples")
    f.add_argument("--steps", type=int, default=50,
                   help="with --ckpt: sampler steps (DDIM, or Heun for flow checkpoints)")
    f.add_argument("--cfg-scale", type=float, default=1.5,
                   help="with --ckpt: guidance scale (official FID: 1.5)")
    f.add_argument("--ref", default=None, help="reference statistics .npz (mu, sigma)")
    f.add_argument("--ref-data", default=None, choices=data.DATASETS,
                   help="or compute the reference from this dataset")
    f.add_argument("--data-path", default=None, help="folder of --ref-data")
    f.add_argument("--split", default="train", choices=["train", "val"], help="split of --ref-data")
    f.add_argument("--image-size", type=int, default=64, help="resolution of --ref-data")
    f.add_argument("--num-images", type=int, default=10000, help="images of --ref-data (0: all)")
    f.add_argument("--seed", type=int, default=0, help="seed of the samples / the shapes dataset")
    common_flags(f)

    c = sub.add_parser("classes", help="share of a DiT's samples that show the requested class (a "
                                       "small CNN judges)", formatter_class=defaults)
    c.add_argument("--ckpt", required=True,
                   help="a train_dit.py checkpoint (its data and AE are used)")
    c.add_argument("--ae-ckpt", default=None, help="the DiT's autoencoder, if it has moved")
    c.add_argument("--num-samples", type=int, default=200,
                   help="samples per guidance scale (classes in turn)")
    c.add_argument("--cfg-scales", default="1,4", help="comma-separated guidance scales")
    c.add_argument("--steps", type=int, default=50,
                   help="sampler steps (DDIM, or Heun for flow checkpoints)")
    c.add_argument("--num-images", type=int, default=20000,
                   help="training images the judge learns from")
    c.add_argument("--judge-steps", type=int, default=1200,
                   help="training steps of the judge (batch 64)")
    c.add_argument("--seed", type=int, default=0, help="seed of the judge and of the samples")
    common_flags(c)

    s = sub.add_parser("ref", help="reference statistics of a dataset, saved as a pytorch-fid .npz",
                       formatter_class=defaults)
    s.add_argument("--out", required=True, help="output .npz (mu, sigma)")
    data_flags(s, "train")
    common_flags(s)
    return p


def main(args):
    rank, world, device = common.setup_distributed(args.device)
    commands = {"recon": cmd_recon, "ref": cmd_ref, "fid": cmd_fid, "classes": cmd_classes}
    result = commands[args.command](args, rank, world, device)
    if rank == 0 and args.json and result is not None:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
        print(f"wrote {args.json}")
    common.cleanup_distributed()


if __name__ == "__main__":
    try:
        main(build_parser().parse_args())
    except (ValueError, FileNotFoundError) as err:  # bad input or missing weights: a message
        sys.exit(f"evaluate.py: error: {err}")
