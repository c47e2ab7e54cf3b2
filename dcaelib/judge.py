"""
judge.py: the class judge, a small CNN trained to tell a dataset's classes apart, and what it measures:
how often a DiT's samples show the class they were asked for, and how far their judge features lie
from the validation images' (a Fréchet distance in the judge's own 128-d feature space; not FID).

Not a paper metric: a quick, download-free check of a small class-conditional model (e.g. on the
shapes set). One judge serves every AE and DiT trained on a dataset: it is trained on first use and
cached (`dataset_judge`). evaluate.py's `classes` and curves.py (`curve`) use it.
"""

import os

import torch
import torch.nn.functional as F

from dcaelib.fid import FeatureStats, frechet_distance
from dcaelib.metrics import image_batches
from dcaelib import cli, data, files, pictures, sampling

# ==================================================================================================
# The judge: a small CNN, its augmentation and its training
# ==================================================================================================

JUDGE_RECIPE = 3  # bump when the judge's training changes: judges cached under another recipe retrain


def judge_input_size(image_size):
    """The resolution the judge looks at: a quarter of the images' (at least 16 px)."""
    return max(16, image_size // 4)


def class_judge(num_classes, image_size):
    """A small CNN that tells the classes apart from the images averaged down to a quarter of their
    size (judge_input_size): object structure, not the fine detail an autoencoder blurs. Then four
    conv-BN-ReLU-pool blocks; judge[:-1] gives its 128-d features, judge[-1] the class logits.

    NOTE: a quarter of the resolution because the judge must read an autoencoder's soft
    reconstructions (and a DiT's samples) as well as the sharp originals: at full resolution it
    tells the originals apart but misses many reconstructions (RESULTS.md, "The judge").
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
    return judge[:-1](pictures.from_uint8(images))


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
    threads = torch.get_num_threads()
    # one thread on the CPU, whatever the caller's: the same judge bit for bit from any command
    # (another thread count sums in another order), so that every run of a comparison meets it
    torch.set_num_threads(1 if torch.device(device).type == "cpu" else threads)
    try:
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        judge = class_judge(num_classes, x.shape[-1]).to(device)
        opt = torch.optim.Adam(judge.parameters(), lr=2e-3)
        decay = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)  # a settled judge at the end
        for _ in cli.progress(range(steps), desc="training the judge"):
            idx = torch.randint(len(x), (64,), generator=gen)
            xb = random_blur(pictures.from_uint8(x[idx]), 1.5, gen).to(device)
            xb = xb + 0.1 * torch.randn_like(xb)  # and robust to the noise left in samples
            loss = F.cross_entropy(judge(xb), y[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            decay.step()
    finally:
        torch.set_num_threads(threads)
    return judge.eval().requires_grad_(False)


# ==================================================================================================
# One judge per dataset, cached
# ==================================================================================================


def run_dataset(run_args, split):
    """The dataset a train_ae.py / train_dit.py run trained on (its `args`), `split` of it."""
    return data.build_dataset(run_args["data"], split, run_args["image_size"],
                              run_args.get("data_path"), run_args["data_seed"])


def judge_key(run_args, num_classes, num_images, steps):
    """Everything a dataset's judge depends on (its hash names the cached file). No autoencoder:
    one judge serves every AE and DiT trained on that data."""
    path = run_args.get("data_path")
    return {"recipe": JUDGE_RECIPE, "data": run_args["data"],
            "data_path": os.path.abspath(path) if path else None,
            "image_size": run_args["image_size"],
            "judge_input_size": judge_input_size(run_args["image_size"]),
            "data_seed": run_args["data_seed"] if run_args["data"] == "shapes" else None,
            "num_classes": num_classes, "num_images": num_images, "steps": steps}


def dataset_judge(run_args, num_classes, num_images, steps, cache_dir, batch_size, device):
    """The class judge of a run's dataset: (judge, its file, whether it was trained now).

    Loaded from `cache_dir` when a judge with the same key was trained before, else trained on
    `num_images` training originals and saved there (atomically), so that every later call, for any
    autoencoder or checkpoint on that data, loads it instead of training it again.
    """
    key = judge_key(run_args, num_classes, num_images, steps)
    digest = files.key_digest(key)
    path = os.path.join(cache_dir, f"judge-{key['data']}-{digest}.pt")
    judge = class_judge(num_classes, key["image_size"])
    if os.path.isfile(path):
        saved = files.load_checkpoint(path)
        if saved.get("key") != key:
            raise ValueError(f"{path} holds a judge for {saved.get('key')}, not {key}; delete it")
        judge.load_state_dict(saved["model"])
        return judge.to(device).eval().requires_grad_(False), path, False
    x, y = originals(run_dataset(run_args, "train"), num_images, batch_size, "judge data")
    judge = train_judge(x, y, num_classes, steps, device)
    os.makedirs(cache_dir, exist_ok=True)
    state = {k: v.cpu() for k, v in judge.state_dict().items()}
    files.save_checkpoint({"kind": "dcae15-judge", "key": key, "model": state}, path)
    return judge, path, True


@torch.no_grad()
def originals(dataset, num_images, batch_size, desc=None):
    """(uint8 images, labels) of the first num_images items (uint8, to save memory)."""
    xs, ys = zip(*((pictures.to_uint8(x), y) for x, y in
                   image_batches(dataset, num_images, batch_size, desc=desc)))
    return torch.cat(xs), torch.cat(ys)


def validation_images(run_args, num_val, batch_size):
    """(uint8 images, labels) of the first num_val validation images of a run's dataset: the
    judge's ceilings and the reference of its Fréchet distance."""
    return originals(run_dataset(run_args, "val"), num_val, batch_size, "validation images")


# ==================================================================================================
# What the judge measures
# ==================================================================================================


@torch.no_grad()
def reconstructions(ae, images, batch_size, device):
    """The AE's reconstructions (all channels) of uint8 images, as uint8."""
    return torch.cat([pictures.to_uint8(ae(pictures.from_uint8(x.to(device)))[0]).cpu()
                      for x in images.split(batch_size)])


@torch.no_grad()
def judge_accuracy(judge, images, labels, batch_size, device):
    hits = sum((judge(pictures.from_uint8(x.to(device))).argmax(1).cpu() == y).sum().item()
               for x, y in zip(images.split(batch_size), labels.split(batch_size)))
    return hits / len(labels)


@torch.no_grad()
def judge_stats(judge, images, batch_size, device):
    stats = FeatureStats(dim=judge[-1].in_features)
    for x in images.split(batch_size):
        stats.add(judge_features(judge, x.to(device)))
    return stats.mu_sigma()


def judge_fd(judge, images, ref_stats, batch_size, device):
    """The judge FD of uint8 images to reference statistics (judge_stats of the validation images)."""
    return frechet_distance(*judge_stats(judge, images, batch_size, device), *ref_stats)


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
        for _, yb, images in sampling.sample_batches(model, ae, ckpt, num_samples, batch_size, seed,
                                                     device, labels, steps=steps, cfg_scale=scale):
            feats = judge_features(judge, pictures.to_uint8(images))
            hits += (judge[-1](feats).argmax(1).cpu() == yb.cpu()).sum().item()
            stats.add(feats)
            if fid_stats is not None:
                fid_stats.add(inception(pictures.to_uint8(images)))
        result[scale] = {"share": hits / num_samples,
                         "fd": frechet_distance(*stats.mu_sigma(), *ref_stats)}
        if fid_stats is not None:
            result[scale]["fid"] = frechet_distance(*fid_stats.mu_sigma(), *ref_fid)
    return result


