"""
Evaluate autoencoders and generators: rFID, PSNR, SSIM, LPIPS, the partial-channel sweep, and FID.

    # reconstruction metrics for each c' (the paper's partial-channel comparison), with a baseline
    python evaluate.py recon --ae-ckpt runs/ae/last.pt --baseline-ckpt runs/ae-plain/last.pt
    # reference statistics of a dataset (pytorch-fid .npz: mu, sigma)
    python evaluate.py ref --data imagefolder --data-path /data/imagenet/train --image-size 256 \
        --out ref.npz
    # FID of samples (an .npz from sample.py, an image folder, or a DiT sampled on the fly)
    python evaluate.py fid --samples samples.npz --ref ref.npz
    # how often a DiT's samples show the requested class, as a small CNN (the judge, trained once
    # per dataset and cached under runs/judges) sees them
    python evaluate.py classes --ckpt runs/dit/last.pt
    # quality against training step of DiT runs kept with --save-every, and the speed-up factor
    python evaluate.py curve --run plain=runs/dit-plain --run augmented=runs/dit

FID is pytorch-fid compatible (fid.py: torchvision's Inception v3 with the TF-graph pooling changes and
the FID weights pt_inception-2015-12-05-6726825d.pth; uint8 images, bilinear resize to 299, 2048-d pool
features; statistics accumulated in float64 as running sums, mergeable across ranks).
Run `python evaluate.py SUBCOMMAND --help`.
"""

import argparse
import csv
import hashlib
import json
import math
import os
import re
import sys
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import common
import data
import dcae15
from fid import (FID_WEIGHTS_FILE, FeatureStats, build_inception, find_inception_weights,
                 frechet_distance, load_stats)

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


def laplacian_energy(x):
    """Per-image mean square of the 3x3 Laplacian of uint8 (B, 3, H, W) images: the energy of the
    finest detail (edges, stripes, texture). `recon`'s sharpness is its ratio, reconstructions to
    originals: 1 is as crisp as the originals, a blurred reconstruction is below 1."""
    k = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], dtype=torch.float64,
                     device=x.device).expand(x.shape[1], 1, 3, 3)
    return F.conv2d(x.double(), k, groups=x.shape[1]).pow(2).mean(dim=(1, 2, 3))


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
    for start in common.progress(starts, desc=desc, disable=desc is None or rank != 0):
        items = [dataset[i] for i in range(start, min(start + batch_size, n))]
        yield torch.stack([im for im, _ in items]), torch.tensor([lab for _, lab in items])


@torch.no_grad()
def recon_metrics(ae, dataset, channel_list, args, device, inception, ref_stats, lpips_net, rank,
                  world, label):
    """{c': {psnr, ssim, lpips?, rfid?}} for one autoencoder over the evaluation images.

    rFID (when `inception` is given) compares the reconstructions' features with `ref_stats`, the
    originals'.
    """
    sums = {c: {"psnr": 0.0, "ssim": 0.0, "sharpness": 0.0, "lpips": 0.0} for c in channel_list}
    detail = 0.0  # the originals' Laplacian energy, summed: sharpness = reconstructions' / this
    stats = {c: FeatureStats() for c in channel_list} if inception is not None else None
    n = 0
    batches = image_batches(dataset, args.num_images, args.batch_size, rank, world,
                            desc=f"evaluating {label}")
    for x, _ in batches:
        x = x.to(device)
        z = ae.encode(x)
        x8 = common.to_uint8(x)
        detail += laplacian_energy(x8).sum().item()
        for c in channel_list:
            rec = ae.decode(z[:, :c]).clamp(-1, 1)
            r8 = common.to_uint8(rec)
            sums[c]["psnr"] += common.psnr(rec, x).sum().item()
            sums[c]["ssim"] += ssim(r8, x8).sum().item()
            sums[c]["sharpness"] += laplacian_energy(r8).sum().item()
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
        row["sharpness"] /= common.all_reduce_mean(detail) * world / n
        if lpips_net is None:
            row.pop("lpips")
        if stats is not None:
            row["rfid"] = frechet_distance(*stats[c].all_reduce().mu_sigma(), *ref_stats)
        results[c] = row
    return results


@torch.no_grad()
def save_recon_grid(path, dataset, models, channel_list, device, rows=8):
    """A PNG of the first `rows` images (one per row): the original, then each model's
    reconstruction from the first c' channels for each c' in turn (e.g. before and after a phase)."""
    x = torch.stack([dataset[i][0] for i in range(min(rows, len(dataset)))]).to(device)
    columns = [x]
    for model in models:
        z = model.encode(x)
        columns += [model.decode(z[:, :c]).clamp(-1, 1) for c in channel_list]
    common.save_grid(torch.stack(columns, dim=1).flatten(0, 1), path, ncol=len(columns))


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
    if args.grid and not os.path.isdir(os.path.dirname(os.path.abspath(args.grid))):
        raise ValueError(f"--grid {args.grid}: its folder does not exist; create it first")
    dataset = data.build_dataset(args.data, args.split, args.image_size, args.data_path, args.seed,
                                 skip_bad=args.skip_bad_images)
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
        if args.grid:
            models = [m for m in (ae, baseline) if m is not None]
            save_recon_grid(args.grid, dataset, models, channel_list, device, rows=min(8, n))
            print(f"wrote {args.grid}: rows = images; columns = the original, then "
                  + ", then ".join(f"{name} at c' = {','.join(map(str, channel_list))}"
                                   for name in columns))
        results = {name: {str(c): row for c, row in col.items()} for name, col in columns.items()}
        return {"command": "recon", "ae_ckpt": args.ae_ckpt, "baseline_ckpt": args.baseline_ckpt,
                "num_images": n, "results": results}


def cmd_ref(args, rank, world, device):
    dataset = data.build_dataset(args.data, args.split, args.image_size, args.data_path, args.seed,
                                 skip_bad=args.skip_bad_images)
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
    if args.samples and args.samples.endswith(".npz"):  # read batch by batch, never all at once
        for arr in common.npz_batches(args.samples, "arr_0", args.batch_size, rank, world):
            if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
                raise ValueError(f"{args.samples}: arr_0 must be uint8 (N, H, W, 3), got "
                                 f"{arr.dtype} {arr.shape[1:]} per sample")
            yield torch.from_numpy(arr.copy()).permute(0, 3, 1, 2)  # frombuffer is read-only
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
    for x in common.progress(batches, desc="sample features", disable=rank != 0):
        stats.add(inception(x.to(device)))
    stats.all_reduce()
    fid = frechet_distance(*stats.mu_sigma(), *ref)
    if rank == 0:
        print(f"FID {fid:.4f} ({stats.n} samples, pytorch-fid compatible Inception)")
        return {"command": "fid", "fid": fid, "num_samples": stats.n,
                "ref": args.ref or args.ref_data}


# ==================================================================================================
# The class judge (trained once per dataset, cached), `classes` and the convergence curves (`curve`)
# ==================================================================================================

JUDGE_RECIPE = 3  # bump when the judge's training changes: judges cached under another recipe retrain


def judge_input_size(image_size):
    """The resolution the judge looks at: a quarter of the images' (at least 16 px)."""
    return max(16, image_size // 4)


def class_judge(num_classes, image_size):
    """A small CNN that tells the classes apart from the images averaged down to a quarter of their
    size (judge_input_size): object structure, not the fine detail an autoencoder blurs. Then four
    conv-BN-ReLU-pool blocks; judge[:-1] gives its 128-d features, judge[-1] the class logits.

    NOTE: measured on the shapes set, a judge that looked at the full 64 px (trained on originals,
    blurred and noised) got 99 % of the originals right but only 78-84 % of the classroom AEs'
    reconstructions; the same judge at 16 px gets 99 % and 95-97 %.
    """
    nn = torch.nn

    def block(i, o):
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(),
                             nn.MaxPool2d(2))

    return nn.Sequential(nn.AdaptiveAvgPool2d(judge_input_size(image_size)), block(3, 32),
                         block(32, 64), block(64, 128), block(128, 128), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(128, num_classes))


def judge_features(judge, images):
    """The judge's 128-d features of uint8 (B, 3, H, W) images: what its Fréchet distance compares."""
    return judge[:-1](images.float() / 127.5 - 1)


def random_blur(x, max_sigma, generator=None):
    """Blur each image with a Gaussian of its own sigma, uniform in [0, max_sigma] (0 leaves it as
    it is): the judge's augmentation, so that it reads an autoencoder's soft reconstructions (and
    a DiT's decoded samples) as well as the sharp originals it is trained on."""
    B, C, H, W = x.shape
    r = 4  # a 9-tap kernel covers +-2.7 sigma at the largest sigma used (1.5)
    sigma = torch.rand(B, generator=generator).mul(max_sigma).clamp_min(1e-3)  # ~0: a delta
    taps = torch.arange(-r, r + 1, dtype=torch.float32)
    g = torch.exp(-(taps**2) / (2 * sigma[:, None] ** 2))
    g = (g / g.sum(1, keepdim=True)).repeat_interleave(C, 0).to(x)  # one kernel per (image, channel)
    flat = x.reshape(1, B * C, H, W)  # grouped convolutions: every image its own kernel
    flat = F.conv2d(F.pad(flat, (r, r, 0, 0), mode="replicate"), g.view(B * C, 1, 1, -1),
                    groups=B * C)
    flat = F.conv2d(F.pad(flat, (0, 0, r, r), mode="replicate"), g.view(B * C, 1, -1, 1),
                    groups=B * C)
    return flat.view(B, C, H, W)


def train_judge(x, y, num_classes, steps, device, seed=0):
    """The judge: `steps` Adam steps (batch 64, cosine decay) on uint8 originals x with labels y,
    each batch blurred (random_blur, sigma up to 1.5 px) and with a little noise added."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    judge = class_judge(num_classes, x.shape[-1]).to(device)
    opt = torch.optim.Adam(judge.parameters(), lr=2e-3)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)  # a settled judge at the end
    for _ in common.progress(range(steps), desc="training the judge"):
        idx = torch.randint(len(x), (64,), generator=gen)
        xb = random_blur(x[idx].float() / 127.5 - 1, 1.5, gen).to(device)
        xb = xb + 0.1 * torch.randn_like(xb)  # and robust to the noise left in samples
        loss = F.cross_entropy(judge(xb), y[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        decay.step()
    return judge.eval().requires_grad_(False)


def judge_key(run_args, num_classes, num_images, steps):
    """Everything a dataset's judge depends on (its hash names the cached file). No autoencoder:
    one judge serves every AE and DiT trained on that data."""
    path = run_args.get("data_path")
    return {"recipe": JUDGE_RECIPE, "data": run_args["data"],
            "data_path": os.path.abspath(path) if path else None,
            "image_size": run_args["image_size"],
            "judge_input_size": judge_input_size(run_args["image_size"]),
            "data_seed": data.data_seed(run_args) if run_args["data"] == "shapes" else None,
            "num_classes": num_classes, "num_images": num_images, "steps": steps}


def dataset_judge(run_args, num_classes, num_images, steps, cache_dir, batch_size, device):
    """The class judge of a run's dataset: (judge, its file, whether it was trained now).

    Loaded from `cache_dir` when a judge with the same key was trained before, else trained on
    `num_images` training originals and saved there (atomically), so that every later call, for any
    autoencoder or checkpoint on that data, loads it instead of training it again.
    """
    key = judge_key(run_args, num_classes, num_images, steps)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = os.path.join(cache_dir, f"judge-{key['data']}-{digest}.pt")
    judge = class_judge(num_classes, key["image_size"])
    if os.path.isfile(path):
        saved = dcae15.load_checkpoint(path)
        if saved.get("key") != key:
            raise ValueError(f"{path} holds a judge for {saved.get('key')}, not {key}; delete it")
        judge.load_state_dict(saved["model"])
        return judge.to(device).eval().requires_grad_(False), path, False
    train = data.build_dataset(run_args["data"], "train", run_args["image_size"],
                               run_args.get("data_path"), data.data_seed(run_args))
    x, y = originals(train, num_images, batch_size, "judge data")
    judge = train_judge(x, y, num_classes, steps, device)
    os.makedirs(cache_dir, exist_ok=True)
    state = {k: v.cpu() for k, v in judge.state_dict().items()}
    dcae15.save_checkpoint({"kind": "dcae15-judge", "key": key, "model": state}, path)
    return judge, path, True


@torch.no_grad()
def originals(dataset, num_images, batch_size, desc=None):
    """(uint8 images, labels) of the first num_images items (uint8, to save memory)."""
    xs, ys = zip(*((common.to_uint8(x), y) for x, y in
                   image_batches(dataset, num_images, batch_size, desc=desc)))
    return torch.cat(xs), torch.cat(ys)


@torch.no_grad()
def reconstructions(ae, images, batch_size, device):
    """The AE's reconstructions (all channels) of uint8 images, as uint8."""
    return torch.cat([common.to_uint8(ae(x.to(device).float() / 127.5 - 1)[0]).cpu()
                      for x in images.split(batch_size)])


@torch.no_grad()
def judge_accuracy(judge, images, labels, batch_size, device):
    hits = sum((judge(x.to(device).float() / 127.5 - 1).argmax(1).cpu() == y).sum().item()
               for x, y in zip(images.split(batch_size), labels.split(batch_size)))
    return hits / len(labels)


@torch.no_grad()
def judge_stats(judge, images, batch_size, device):
    stats = FeatureStats(dim=judge[-1].in_features)
    for x in images.split(batch_size):
        stats.add(judge_features(judge, x.to(device)))
    return stats.mu_sigma()


@torch.no_grad()
def judge_samples(model, ae, ckpt, judge, ref_stats, num_samples, cfg_scales, steps, seed,
                  batch_size, device, inception=None, ref_fid=None):
    """{guidance scale: {"share": fraction of samples the judge puts in the requested class, "fd":
    Fréchet distance of the samples' judge features to the validation images', and "fid" with an
    `inception` (FID against ref_fid)}}. Classes in turn; batch b's noise seeded as in sample.py."""
    num_classes = model.cfg.num_classes
    labels = torch.arange(num_samples) % num_classes  # every class equally often
    result = {}
    for scale in cfg_scales:
        hits, stats = 0, FeatureStats(dim=judge[-1].in_features)
        fid_stats = FeatureStats() if inception is not None else None
        for b, start in enumerate(range(0, num_samples, batch_size)):
            yb = labels[start : start + batch_size]
            gen = torch.Generator(device).manual_seed(seed * 1_000_003 + b)
            images = dcae15.generate(model, ae, ckpt["latent_scale"], yb.to(device), gen,
                                     ckpt["objective"], steps, cfg_scale=scale)
            feats = judge_features(judge, common.to_uint8(images))
            hits += (judge[-1](feats).argmax(1).cpu() == yb).sum().item()
            stats.add(feats)
            if fid_stats is not None:
                fid_stats.add(inception(common.to_uint8(images)))
        result[scale] = {"share": hits / num_samples,
                         "fd": frechet_distance(*stats.mu_sigma(), *ref_stats)}
        if fid_stats is not None:
            result[scale]["fid"] = frechet_distance(*fid_stats.mu_sigma(), *ref_fid)
    return result


def parse_scales(text):
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"--cfg-scales must be comma-separated numbers, got {text!r}") from None


def check_judge_flags(args, world):
    if world > 1:
        raise ValueError(f"evaluate.py {args.command} runs in one process; start it with python, "
                         f"not torchrun")
    if args.num_samples <= 1 or args.num_images <= 0 or args.judge_steps <= 0:
        raise ValueError("--num-samples must be at least 2, --num-images and --judge-steps "
                         "positive")


def cmd_classes(args, rank, world, device):
    """How often a DiT's samples show the requested class, and how far their judge features are from
    the validation images' (a Fréchet distance in the judge's feature space; not FID)."""
    check_judge_flags(args, world)
    cfg_scales = parse_scales(args.cfg_scales)
    model, ae, ckpt = dcae15.load_dit(args.ckpt, args.ae_ckpt)
    model.to(device)
    ae.to(device)
    run = ckpt["args"]  # the DiT's own data: its classes are the ones to judge
    num_classes = model.cfg.num_classes
    judge, judge_path, _ = dataset_judge(run, num_classes, args.num_images, args.judge_steps,
                                         args.judge_cache, args.batch_size, device)
    val = data.build_dataset(run["data"], "val", run["image_size"], run.get("data_path"),
                             data.data_seed(run))
    xv, yv = originals(val, args.num_val, args.batch_size, "validation images")
    ceiling = judge_accuracy(judge, xv, yv, args.batch_size, device)
    recon = judge_accuracy(judge, reconstructions(ae, xv, args.batch_size, device), yv,
                           args.batch_size, device)
    ref = judge_stats(judge, xv, args.batch_size, device)
    samples = judge_samples(model, ae, ckpt, judge, ref, args.num_samples, cfg_scales, args.steps,
                            args.seed, args.batch_size, device)
    print(f"judge ({judge_path}): right on {ceiling:.1%} of {len(xv)} validation images and on "
          f"{recon:.1%} of this AE's reconstructions of them (the ceilings; chance "
          f"{1 / num_classes:.1%})")
    for scale, row in samples.items():
        print(f"  guidance {scale:4.1f}: {row['share']:6.1%} of {args.num_samples} samples show "
              f"the requested class; judge-feature Fréchet distance to validation {row['fd']:.2f}")
    return {"command": "classes", "ckpt": args.ckpt, "ceiling": ceiling, "ceiling_recon": recon,
            "judge": judge_path, "samples": {str(s): row for s, row in samples.items()}}


# ---------------------------------------------------------------------------- convergence curves

CURVE_KEYS = ("label", "run", "seed", "step")  # the CSV's first columns; then one per metric
RUN_FREE_ARGS = {"seed", "out", "resume", "max_steps", "log_every", "sample_every", "save_every",
                 "device", "cache_dir", "ae_ckpt", "encode_batch_size"}  # may differ between seeds
METRIC_WORDS = {"share": "in the requested class", "fd": "judge-feature Fréchet distance",
                "fid": "FID"}


def metric_name(kind, scale):
    """The column of a metric at a guidance scale: share_g1, fd_g4, fid_g1.5, ..."""
    return f"{kind}_g{scale:g}"


def lower_is_better(metric):
    return not metric.startswith("share")


def parse_runs(specs):
    """--run LABEL=DIR[,DIR...] flags -> {label: [run folders]} (one folder per seed), in order."""
    runs = {}
    for spec in specs:
        label, sep, folders = spec.partition("=")
        folders = [f for f in folders.split(",") if f]
        if not sep or not label or not folders:
            raise ValueError(f"--run {spec!r}: expected LABEL=DIR, or LABEL=DIR1,DIR2 for one run "
                             f"folder per seed")
        if label in runs:
            raise ValueError(f"--run label {label!r} appears twice; give its seeds as one "
                             f"{label}=DIR1,DIR2")
        runs[label] = folders
    return runs


def run_points(folder, max_step=None):
    """({step: checkpoint file}, the newest checkpoint) of a train_dit.py run folder: its
    step_NNNNNNN.pt files (--save-every) and last.pt, up to step max_step if it is given."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"run folder not found: {folder}")
    points = {}
    for name in os.listdir(folder):
        match = re.fullmatch(r"step_(\d+)\.pt", name)
        if match:
            points[int(match.group(1))] = os.path.join(folder, name)
    last = os.path.join(folder, "last.pt")
    newest = dcae15.load_checkpoint(last if os.path.isfile(last) else points[max(points)]) \
        if points or os.path.isfile(last) else None
    if newest is None or newest.get("kind") != dcae15.DIT_KIND:
        raise ValueError(f"{folder} has no evaluable points (no DiT step_*.pt or last.pt); train "
                         f"with train_dit.py --save-every N --out {folder}")
    if os.path.isfile(last):
        points.setdefault(newest["step"], last)
    points = {s: p for s, p in sorted(points.items()) if max_step is None or s <= max_step}
    if not points:
        raise ValueError(f"{folder} has no point at or before --max-step {max_step}")
    return points, newest


def check_runs(meta):
    """Clear errors for runs that cannot share one plot: other data, or seeds of one label that
    differ in more than the seed, or whose evaluated steps differ. meta: {label: [(folder, points,
    newest checkpoint)]}."""
    def dataset(ckpt):
        a = ckpt["args"]
        return (a["data"], a.get("data_path"), a["image_size"], data.data_seed(a),
                ckpt["num_classes"])

    first_label, first = next(iter(meta.items()))
    reference = dataset(first[0][2])
    for label, runs in meta.items():
        for folder, points, ckpt in runs:
            if dataset(ckpt) != reference:
                raise ValueError(f"mismatched runs: {folder} was trained on {dataset(ckpt)[:4]}, "
                                 f"{first[0][0]} on {reference[:4]}; a curve compares runs on one "
                                 f"dataset")
        folder0, points0, ckpt0 = runs[0]
        for folder, points, ckpt in runs[1:]:
            a, b = ckpt0["args"], ckpt["args"]
            differ = sorted(k for k in set(a) | set(b)
                            if k not in RUN_FREE_ARGS and a.get(k) != b.get(k))
            if ckpt0["ae"]["fingerprint"] != ckpt["ae"]["fingerprint"]:
                differ.append("the autoencoder")
            if differ:
                raise ValueError(f"mismatched runs: the seeds of {label!r}, {folder0} and {folder}, "
                                 f"differ in {', '.join(differ)}; give them different labels")
            if list(points) != list(points0):
                raise ValueError(f"mismatched runs: {folder0} has steps {list(points0)}, {folder} "
                                 f"{list(points)}; the seeds of {label!r} need the same steps")


def first_reach(steps, values, target, lower):
    """(step, status): where the curve (values at steps) first reaches target, linearly interpolated
    between evaluated steps; status "reached", "before" (already at the first evaluated step: the
    true step is at most steps[0]) or "never" (step None)."""
    good = (lambda v: v <= target) if lower else (lambda v: v >= target)
    if good(values[0]):
        return steps[0], "before"
    for i in range(1, len(steps)):
        if good(values[i]):
            v0, v1 = values[i - 1], values[i]
            return steps[i - 1] + (target - v0) / (v1 - v0) * (steps[i] - steps[i - 1]), "reached"
    return None, "never"


def speedup(base_steps, base_values, steps, values, lower):
    """The speed-up factor of a curve over a baseline curve: the baseline's final value is the
    target; factor = the baseline's final step / the step where the curve first reaches it."""
    step, status = first_reach(steps, values, base_values[-1], lower)
    factor = base_steps[-1] / step if step else None
    return {"target": base_values[-1], "step": step, "status": status, "factor": factor}


def format_speedup(s):
    if s["status"] == "never":
        return "not reached"
    if s["status"] == "before":
        return f">{s['factor']:.2f}x (already at step {s['step']:.0f})"
    return f"{s['factor']:.2f}x (at step {s['step']:.0f})"


def summarise(rows, metrics):
    """{label: {"steps": [...], "runs": {run: {metric: [...]}}, metric: {"mean"/"min"/"max": [...]}}}
    from CSV rows (one per run and step); the steps of a label are those all its runs have."""
    out = {}
    for row in rows:
        label = out.setdefault(row["label"], {"runs": {}})
        label["runs"].setdefault(row["run"], {})[row["step"]] = row
    for label in out.values():
        steps = sorted(set.intersection(*(set(r) for r in label["runs"].values())))
        label["steps"] = steps
        for m in metrics:
            per_run = [[r[s][m] for s in steps] for r in label["runs"].values()]
            label[m] = {"mean": np.mean(per_run, axis=0).tolist(),
                        "min": np.min(per_run, axis=0).tolist(),
                        "max": np.max(per_run, axis=0).tolist()}
        label["runs"] = {run: {m: [r[s][m] for s in steps] for m in metrics}
                         for run, r in label["runs"].items()}
    return out


def speedups(summary, baseline, metric):
    """{label: {"mean": speed-up of the mean curve, "pairs": [speed-up of each (baseline seed, seed)
    pair]}} of every label but the baseline, by `metric`."""
    base, lower, result = summary[baseline], lower_is_better(metric), {}
    for label, s in summary.items():
        if label == baseline:
            continue
        mean = speedup(base["steps"], base[metric]["mean"], s["steps"], s[metric]["mean"], lower)
        pairs = [speedup(base["steps"], b[metric], s["steps"], r[metric], lower)
                 for b in base["runs"].values() for r in s["runs"].values()]
        result[label] = {"mean": mean, "pairs": pairs}
    return result


def curve_text(summary, metrics, speed, baseline, metric):
    """The printed table (mean over seeds, min..max when there are several) and the speed-ups."""
    lines = [f"{'run':>16} {'seeds':>5} {'step':>7} | " + " | ".join(f"{m:>21}" for m in metrics)]
    lines.append("-" * len(lines[0]))
    for label, s in summary.items():
        for i, step in enumerate(s["steps"]):
            cells = []
            for m in metrics:
                mean, lo, hi = (s[m][k][i] for k in ("mean", "min", "max"))
                fmt = "{:.3f}" if m.startswith("share") else "{:.2f}"
                cell = fmt.format(mean) + (f" ({fmt.format(lo)}-{fmt.format(hi)})"
                                           if len(s["runs"]) > 1 else "")
                cells.append(f"{cell:>21}")
            lines.append(f"{label:>16} {len(s['runs']):>5} {step:>7} | " + " | ".join(cells))
    for label, sp in speed.items():
        pairs = [p["factor"] for p in sp["pairs"]]
        spread = ""
        if len(pairs) > 1:
            words = [f"{p:.2f}x" if p else "not reached" for p in pairs]
            spread = f"; seed pairs: {', '.join(words)}"
        lines.append(f"speed-up of {label} over {baseline} by {metric} (the step where it first "
                     f"reaches {baseline}'s final {sp['mean']['target']:.3f}): "
                     f"{format_speedup(sp['mean'])}{spread}")
    return "\n".join(lines)


def write_curve_csv(rows, path):
    """One line per (run, step), written atomically."""
    fields = list(rows[0])
    with dcae15.atomic_write(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def read_curve_csv(path):
    """The rows write_curve_csv wrote, with their types back: (rows, metric columns)."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        fields = reader.fieldnames or []
        metrics = [f for f in fields if f not in CURVE_KEYS]
        if list(fields[: len(CURVE_KEYS)]) != list(CURVE_KEYS) or not metrics:
            raise ValueError(f"{path} is not a curve CSV: its header must start with "
                             f"{','.join(CURVE_KEYS)} and name at least one metric")
        rows = [{"label": r["label"], "run": r["run"], "seed": int(r["seed"]),
                 "step": int(r["step"]), **{m: float(r[m]) for m in metrics}} for r in reader]
    if not rows:
        raise ValueError(f"{path} has no rows")
    return rows, metrics


def plot_curves(summary, metrics, path):
    """One panel per metric: the mean over seeds against the training step, the seeds' range
    shaded. matplotlib is optional: without it, a note, and False."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"note: no plot written to {path}: matplotlib is not installed (pip install "
              f"matplotlib, then rerun with --from-csv); the table and the CSV are complete")
        return False
    kinds = list(dict.fromkeys(m.split("_g")[0] for m in metrics))  # a row per kind of metric
    scales = list(dict.fromkeys(m.split("_g")[1] for m in metrics))  # a column per guidance scale
    fig, axes = plt.subplots(len(kinds), len(scales), figsize=(4.2 * len(scales), 3.2 * len(kinds)),
                             squeeze=False)
    for m in metrics:
        ax = axes[kinds.index(m.split("_g")[0])][scales.index(m.split("_g")[1])]
        for label, s in summary.items():
            line, = ax.plot(s["steps"], s[m]["mean"], marker="o", ms=3, label=label)
            if len(s["runs"]) > 1:
                ax.fill_between(s["steps"], s[m]["min"], s[m]["max"], alpha=0.2,
                                color=line.get_color())
        kind, scale = m.split("_g")
        ax.set_title(f"{METRIC_WORDS.get(kind, kind)}, guidance {scale}", fontsize=9)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    with dcae15.atomic_write(path, ".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return True


def point_cache(folder, path, step, settings):
    """The file that keeps one evaluated point: rerunning `curve` after a run grew evaluates only
    the new points. The checkpoint's modification time is in the key (a new run in the same folder
    starts afresh)."""
    key = {**settings, "mtime": os.stat(path).st_mtime_ns}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return os.path.join(folder, "curve", f"step_{step:07d}-{digest}.json")


@torch.no_grad()
def autoencoder_rows(aes, judge, xv, yv, batch_size, device):
    """Per distinct AE: its latent channels, PSNR from the first c/8 and all c channels, and the
    judge's accuracy on its reconstructions (that AE's ceiling)."""
    rows = {}
    for fp, (path, ae) in aes.items():
        C = ae.latent_channels
        psnr = {c: 0.0 for c in (C // 8, C)}
        for x in xv.split(batch_size):
            x = x.to(device).float() / 127.5 - 1
            z = ae.encode(x)
            for c in psnr:
                psnr[c] += common.psnr(ae.decode(z[:, :c]).clamp(-1, 1), x).sum().item()
        recon = reconstructions(ae, xv, batch_size, device)
        rows[path] = {"channels": C, "psnr_c8": psnr[C // 8] / len(xv), "psnr": psnr[C] / len(xv),
                      "judge_recon": judge_accuracy(judge, recon, yv, batch_size, device)}
    return rows


def cmd_curve(args, rank, world, device):
    """Quality against training step for one or more DiT runs (their step_*.pt and last.pt), the
    speed-up of each over the baseline, as a table, a CSV and a plot."""
    cfg_scales = parse_scales(args.cfg_scales)
    if args.from_csv:
        rows, metrics = read_curve_csv(args.from_csv)
    else:
        check_judge_flags(args, world)
        if not args.run:
            raise ValueError("pass --run LABEL=DIR[,DIR...] (one or more), or --from-csv FILE")
        runs = parse_runs(args.run)
        meta = {label: [(f, *run_points(f, args.max_step)) for f in folders]
                for label, folders in runs.items()}
        check_runs(meta)
        metrics = [metric_name(k, s) for s in cfg_scales for k in ("share", "fd")]
    baseline = args.baseline or (rows[0]["label"] if args.from_csv else next(iter(runs)))
    labels = list(dict.fromkeys(r["label"] for r in rows)) if args.from_csv else list(runs)
    if baseline not in labels:
        raise ValueError(f"--baseline {baseline!r} is none of the runs' labels {labels}")
    if args.speedup_metric not in metrics:
        raise ValueError(f"--speedup-metric {args.speedup_metric!r} is not measured; choose one "
                         f"of {', '.join(metrics)}")
    for out in (args.csv, args.plot):
        if os.path.dirname(out):
            os.makedirs(os.path.dirname(out), exist_ok=True)

    result = {"command": "curve"}
    if not args.from_csv:
        rows, result["autoencoders"] = evaluate_runs(args, meta, cfg_scales, device)
        metrics = [m for m in rows[0] if m not in CURVE_KEYS]  # with fid_g* when FID was on
        write_curve_csv(rows, args.csv)
    summary = summarise(rows, metrics)
    speed = speedups(summary, baseline, args.speedup_metric)
    print(curve_text(summary, metrics, speed, baseline, args.speedup_metric))
    if not args.from_csv:
        print(f"wrote {args.csv}")
    if plot_curves(summary, metrics, args.plot):
        print(f"wrote {args.plot}")
    result.update(rows=rows, speedups=speed, baseline=baseline, metric=args.speedup_metric)
    return result


def evaluate_runs(args, meta, cfg_scales, device):
    """Every point of every run (cached points are read, not sampled again): (CSV rows, a row per
    autoencoder). Prints the judge's ceilings on the originals and on each AE's reconstructions."""
    first = next(iter(meta.values()))[0][2]
    run_args, num_classes = first["args"], first["num_classes"]
    judge, judge_path, _ = dataset_judge(run_args, num_classes, args.num_images, args.judge_steps,
                                         args.judge_cache, args.batch_size, device)
    val = data.build_dataset(run_args["data"], "val", run_args["image_size"],
                             run_args.get("data_path"), data.data_seed(run_args))
    xv, yv = originals(val, args.num_val, args.batch_size, "validation images")
    ref = judge_stats(judge, xv, args.batch_size, device)
    inception = maybe_inception(args, device)
    ref_fid = None
    if inception is not None:
        stats = FeatureStats()
        for x in xv.split(args.batch_size):
            stats.add(inception(x.to(device)))
        ref_fid = stats.mu_sigma()
    settings = {"judge": os.path.basename(judge_path), "num_samples": args.num_samples,
                "cfg_scales": cfg_scales, "steps": args.steps, "seed": args.seed,
                "num_val": args.num_val, "fid": inception is not None}
    rows, aes = [], {}
    for label, runs in meta.items():
        for folder, points, newest in runs:
            for step, path in points.items():
                cache = point_cache(folder, path, step, settings)
                if os.path.isfile(cache):
                    with open(cache) as fh:
                        values = json.load(fh)
                else:
                    model, ae, ckpt = dcae15.load_dit(path)
                    if ckpt["step"] != step:  # a run still training replaced its last.pt meanwhile
                        print(f"{label} {folder}: {os.path.basename(path)} holds step {ckpt['step']} "
                              f"now, not {step} (is the run still training?); that point is left "
                              f"out: run curve again to evaluate it")
                        continue
                    aes.setdefault(ckpt["ae"]["fingerprint"], (ckpt["ae"]["path"], ae))
                    t0 = time.time()
                    found = judge_samples(model.to(device), ae.to(device), ckpt, judge, ref,
                                          args.num_samples, cfg_scales, args.steps, args.seed,
                                          args.batch_size, device, inception, ref_fid)
                    values = {metric_name(k, s): v for s, row in found.items()
                              for k, v in row.items()}
                    print(f"{label} {folder} step {step}: " + ", ".join(
                        f"{k} {v:.3f}" for k, v in values.items()) + f" ({time.time() - t0:.0f} s)")
                    os.makedirs(os.path.dirname(cache), exist_ok=True)
                    common.write_json(cache, values)
                rows.append({"label": label, "run": folder, "seed": newest["args"]["seed"],
                             "step": step, **values})
            if newest["ae"]["fingerprint"] not in aes:  # every point cached: load the AE for its row
                aes[newest["ae"]["fingerprint"]] = (newest["ae"]["path"],
                                                    dcae15.load_dit(points[max(points)])[1])
    ceiling = judge_accuracy(judge, xv, yv, args.batch_size, device)
    ae_rows = autoencoder_rows({fp: (p, ae.to(device)) for fp, (p, ae) in aes.items()}, judge, xv,
                               yv, args.batch_size, device)
    print(f"judge ({judge_path}): right on {ceiling:.1%} of {len(xv)} validation originals; on the "
          f"autoencoders' reconstructions (the ceilings of their DiTs), with their PSNR:")
    for path, r in ae_rows.items():
        print(f"  {path}: c = {r['channels']}, PSNR {r['psnr_c8']:.2f} dB from the first "
              f"{r['channels'] // 8} channels, {r['psnr']:.2f} dB from all; judge "
              f"{r['judge_recon']:.1%}")
    return rows, {"judge_ceiling": ceiling, **ae_rows}


def load_ae(path, ae_config):
    """An autoencoder for evaluation: ours (EMA) or official (needs --ae-config); no latent scale."""
    return dcae15.load_autoencoder(path, ae_config, latent_scale=1.0)


def maybe_inception(args, device):
    """The FID Inception (rFID in `recon`, FID in `curve`): --fid on requires it, auto skips it
    with a note."""
    if args.fid == "off":
        return None
    try:
        return build_inception(find_inception_weights(args.inception_weights), device)
    except FileNotFoundError as err:
        if args.fid == "on":
            raise
        print(f"note: {'rFID' if args.command == 'recon' else 'FID'} skipped: {err}")
        return None


def build_parser():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    defaults = argparse.ArgumentDefaultsHelpFormatter

    def data_flags(q, default_split):
        q.add_argument("--data", default="shapes", choices=data.DATASETS, help="dataset")
        q.add_argument("--data-path", default=None, help="dataset folder (imagefolder, cifar10)")
        q.add_argument("--skip-bad-images", action="store_true",
                       help="skip unreadable files of an image folder instead of stopping")
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
    r.add_argument("--grid", default=None,
                   help="also save a PNG of the first 8 images: the original, then the "
                        "reconstructions of the model (and the baseline) for each c'")
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

    def judge_flags(q):
        q.add_argument("--num-samples", type=int, default=200,
                       help="samples per guidance scale (classes in turn)")
        q.add_argument("--cfg-scales", default="1,4", help="comma-separated guidance scales")
        q.add_argument("--steps", type=int, default=50,
                       help="sampler steps (DDIM, or Heun for flow checkpoints)")
        q.add_argument("--num-images", type=int, default=20000,
                       help="training images the judge learns from")
        q.add_argument("--judge-steps", type=int, default=1200,
                       help="training steps of the judge (batch 64)")
        q.add_argument("--judge-cache", default=os.path.join("runs", "judges"),
                       help="folder of the trained judges (one per dataset, trained on first use)")
        q.add_argument("--num-val", type=int, default=1000,
                       help="validation images: the judge's ceilings and the Fréchet reference")
        q.add_argument("--seed", type=int, default=0, help="seed of the samples")

    c = sub.add_parser("classes", help="share of a DiT's samples that show the requested class, and "
                                       "their distance to real images, as a small CNN (the judge) "
                                       "sees them", formatter_class=defaults)
    c.add_argument("--ckpt", required=True,
                   help="a train_dit.py checkpoint (its data and AE are used)")
    c.add_argument("--ae-ckpt", default=None, help="the DiT's autoencoder, if it has moved")
    judge_flags(c)
    common_flags(c)

    v = sub.add_parser("curve", help="quality against training step for DiT runs, the speed-up "
                                     "factor, a CSV and a plot", formatter_class=defaults)
    v.add_argument("--run", action="append", default=[],
                   help="LABEL=DIR, or LABEL=DIR1,DIR2 (one train_dit.py run folder per seed); "
                        "repeat for each curve. The points are its step_*.pt (--save-every) and "
                        "last.pt")
    v.add_argument("--baseline", default=None, help="label of the baseline (default: the first)")
    v.add_argument("--max-step", type=int, default=None,
                   help="only the points up to this step (a fixed training budget)")
    v.add_argument("--speedup-metric", default="fd_g1",
                   help="metric of the speed-up: share_gS or fd_gS (S a guidance scale)")
    v.add_argument("--csv", default=os.path.join("runs", "curve.csv"), help="table of every point")
    v.add_argument("--plot", default=os.path.join("runs", "curve.png"),
                   help="the curves (needs matplotlib)")
    v.add_argument("--from-csv", default=None,
                   help="redraw the table, speed-ups and plot from a CSV (no checkpoints needed)")
    v.add_argument("--fid", default="auto", choices=["auto", "on", "off"],
                   help="FID of the samples against the validation images too (needs the "
                        "Inception weights)")
    judge_flags(v)
    common_flags(v)

    s = sub.add_parser("ref", help="reference statistics of a dataset, saved as a pytorch-fid .npz",
                       formatter_class=defaults)
    s.add_argument("--out", required=True, help="output .npz (mu, sigma)")
    data_flags(s, "train")
    common_flags(s)
    return p


def main(args):
    rank, world, device = common.setup_distributed(args.device)
    commands = {"recon": cmd_recon, "ref": cmd_ref, "fid": cmd_fid, "classes": cmd_classes,
                "curve": cmd_curve}
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
