"""
common.py: what the scripts share (train_ae.py, train_dit.py, sample.py, evaluate.py).

- Datasets: the built-in procedural `shapes` set, ImageNet-style image folders, CIFAR-10.
- A resumable distributed sampler: the global batch of a step depends only on (seed, step), not on the
  number of processes, so a run can stop and resume exactly.
- Distributed setup for `python script.py` and `torchrun --nproc_per_node=N script.py`.
- EMA, RNG state capture, image grids and PSNR.
"""

import hashlib
import math
import os
import random
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image

# =====================================================================================================
# The built-in dataset: one textured object on a textured background, class = shape
# =====================================================================================================

SHAPE_CLASSES = ["circle", "square", "triangle", "star", "cross", "ring", "crescent", "heart", "bowtie", "L"]


def _regular_polygon(u, v, n, radius):
    """Inside test of a regular n-gon of circumradius `radius` (one vertex pointing up)."""
    inside = torch.ones_like(u, dtype=torch.bool)
    apothem = radius * math.cos(math.pi / n)
    for k in range(n):
        theta = 2 * math.pi * k / n - math.pi / 2 + math.pi / n  # normal of edge k
        inside &= u * math.cos(theta) + v * math.sin(theta) < apothem
    return inside


def shape_mask(cls, u, v):
    """Inside test for class `cls` in the object's frame: u right, v down, the object within radius ~0.9."""
    rho = torch.sqrt(u**2 + v**2)
    name = SHAPE_CLASSES[cls]
    if name == "circle":
        return rho < 0.8
    if name == "square":
        return torch.maximum(u.abs(), v.abs()) < 0.65
    if name == "triangle":
        return _regular_polygon(u, v - 0.15, 3, 0.95)
    if name == "star":  # radius zig-zags between 0.38 (inner) and 0.95 (tips) over 5 periods
        phase = (torch.atan2(v, u) + math.pi / 2) / (2 * math.pi / 5)
        tri = 1 - 2 * (phase - torch.floor(phase + 0.5)).abs()  # 1 at a tip, 0 between tips
        return rho < 0.38 + 0.57 * tri
    if name == "cross":
        return ((u.abs() < 0.25) & (v.abs() < 0.85)) | ((v.abs() < 0.25) & (u.abs() < 0.85))
    if name == "ring":
        return (rho > 0.5) & (rho < 0.88)
    if name == "crescent":
        return (rho < 0.85) & ((u - 0.38) ** 2 + v**2 > 0.66**2)
    if name == "heart":  # (x^2 + y^2 - 1)^3 - x^2 y^3 < 0, y pointing up
        x, y = u / 0.72, -v / 0.72 + 0.2
        return (x**2 + y**2 - 1) ** 3 - x**2 * y**3 < 0
    if name == "bowtie":
        return (v.abs() < u.abs() * 0.9) & (u.abs() < 0.85)
    if name == "L":
        return ((u > -0.7) & (u < -0.2) & (v.abs() < 0.8)) | ((u > -0.7) & (u < 0.7) & (v > 0.3) & (v < 0.8))
    raise ValueError(f"unknown shape class {cls}")


class ShapesDataset(torch.utils.data.Dataset):
    """Procedural, class-labelled images: no download, no files, deterministic per (seed, split, index).

    Each image holds one object whose class is its shape, at a random position (near the centre), size,
    tilt (up to 20 degrees) and colour.
    The object carries bold horizontal or vertical stripes and the background fine noise and a faint
    checker, so there is detail for later latent channels to add on top of the structure (where the object
    is, what shape and colour it is).
    Label = index % 10, so every class is equally frequent. Returns (image in [-1, 1], label).
    """

    SPLIT_OFFSET = {"train": 0, "val": 1_000_003}  # disjoint random streams for the two splits

    def __init__(self, split="train", size=None, image_size=64, seed=0):
        if split not in self.SPLIT_OFFSET:
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        self.split, self.image_size, self.seed = split, image_size, seed
        self.size = size if size is not None else (50_000 if split == "train" else 1_000)
        self.num_classes = len(SHAPE_CLASSES)
        # pixel-centre coordinates in [-1, 1] at 2x resolution: rendered at 2x, then 2x2-averaged (anti-aliasing)
        n = 2 * image_size
        coords = (torch.arange(n, dtype=torch.float32) + 0.5) / n * 2 - 1
        self.gy, self.gx = torch.meshgrid(coords, coords, indexing="ij")

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        if not 0 <= index < self.size:
            raise IndexError(index)
        g = torch.Generator().manual_seed(self.seed * 2_000_003 + self.SPLIT_OFFSET[self.split] + index)
        r = lambda *shape: torch.rand(shape, generator=g)  # noqa: E731
        cls = index % self.num_classes
        # NOTE: the ranges are narrow on purpose. With objects anywhere in the frame (radius 0.45-0.8, tilt up
        # to 30 degrees) the 5-minute classroom DiT drew the requested class in only ~27% of its samples (a
        # small CNN's verdict; chance is 10%); with these ranges and the same judge, in ~65%. The AE's
        # story holds either way: front channels give the object, later channels sharpen it.
        scale = 0.55 + 0.25 * r().item()  # object radius as a fraction of the half-width
        cx, cy = ((r(2) * 2 - 1) * (1 - scale) * 0.3).tolist()  # jitter around the centre, inside the frame
        angle = (r().item() * 2 - 1) * math.pi / 9  # a tilt of up to 20 degrees either way
        # object frame: translate, rotate, scale
        dx, dy = (self.gx - cx) / scale, (self.gy - cy) / scale
        ca, sa = math.cos(angle), math.sin(angle)
        u, v = ca * dx + sa * dy, -sa * dx + ca * dy
        inside = shape_mask(cls, u, v).float()

        bg_color, obj_color = r(3), r(3)
        lum = torch.tensor([0.299, 0.587, 0.114])
        if ((obj_color - bg_color) @ lum).abs() < 0.3:  # keep the object visible
            obj_color = 1 - bg_color if (bg_color @ lum) < 0.35 or (bg_color @ lum) > 0.65 else (bg_color + 0.5) % 1
        n = 2 * self.image_size
        # texture: bold stripes on the object, horizontal or vertical at random, 8 px period on the pixel grid,
        # darker on light objects and lighter on dark ones. A decoder can draw them quickly. The structured
        # classroom AE puts their direction in its first 8 channels already; the later channels make them crisp.
        # NOTE: earlier versions used finer (~4 px) stripes at random angles; an L1-trained classroom AE did
        # not learn those in 5 CPU minutes, so the picture could not show the later channels adding them.
        pix = torch.arange(n) // 2  # output-pixel index of each 2x-resolution row / column
        stripes = ((pix[:, None] if r().item() < 0.5 else pix[None, :]) // 4 % 2).float() * 2 - 1
        obj = obj_color[:, None, None] + 0.3 * stripes * (1 - 2 * (obj_color[:, None, None] > 0.5).float())
        checker = ((torch.arange(n)[:, None] // 4 + torch.arange(n)[None] // 4) % 2).float() * 2 - 1
        bg = bg_color[:, None, None] * (1 + 0.08 * checker) + 0.08 * (r(3, n // 2, n // 2).repeat_interleave(2, 1).repeat_interleave(2, 2) - 0.5)
        img = inside * obj + (1 - inside) * bg
        img = F.avg_pool2d(img[None], 2)[0].clamp(0, 1)  # (3, H, W) in [0, 1]
        return img * 2 - 1, cls


def adm_center_crop(pil_image, image_size):
    """ADM / DiT / official DC-AE centre crop: halve with BOX while >= 2x too big, BICUBIC resize, crop."""
    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.array(pil_image)
    top, left = (arr.shape[0] - image_size) // 2, (arr.shape[1] - image_size) // 2
    return Image.fromarray(arr[top : top + image_size, left : left + image_size])


def to_tensor_m11(pil_image):
    """PIL RGB -> (3, H, W) float in [-1, 1]."""
    arr = torch.from_numpy(np.array(pil_image.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1)
    return arr.float() / 127.5 - 1


class _Mapped(torch.utils.data.Dataset):
    def __init__(self, base, transform, num_classes):
        self.base, self.transform, self.num_classes = base, transform, num_classes

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        img, label = self.base[i]
        return self.transform(img), label


def build_dataset(name, split, image_size, data_path=None, seed=0, size=None):
    """The dataset `name` ('shapes' | 'imagefolder' | 'cifar10'); items are (image in [-1, 1], label).

    Raises a clear error (before any training) for a missing folder or an offline CIFAR-10 download.
    """
    if name == "shapes":
        return ShapesDataset(split, size=size, image_size=image_size, seed=seed)
    import torchvision

    transform = lambda im: to_tensor_m11(adm_center_crop(im.convert("RGB"), image_size))  # noqa: E731
    if name == "imagefolder":
        if not data_path or not os.path.isdir(data_path):
            raise FileNotFoundError(f"--data imagefolder needs --data-path DIR with one sub-folder per class; "
                                    f"{data_path!r} is not a folder")
        # DIR/train and DIR/val if present (ImageNet layout), else DIR itself for both splits
        root = os.path.join(data_path, split) if os.path.isdir(os.path.join(data_path, split)) else data_path
        base = torchvision.datasets.ImageFolder(root)
        if len(base) == 0:
            raise FileNotFoundError(f"no images found under {root}")
        return _Mapped(base, transform, len(base.classes))
    if name == "cifar10":
        root = data_path or "data"
        try:
            base = torchvision.datasets.CIFAR10(root, train=(split == "train"), download=True)
        except Exception as err:  # offline: URLError / RuntimeError from torchvision
            raise FileNotFoundError(f"CIFAR-10 is not in {root!r} and could not be downloaded ({err}). Download "
                               f"cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html into "
                               f"{root}/ (or pass --data-path), or use --data shapes") from err
        return _Mapped(base, lambda im: to_tensor_m11(im.resize((image_size, image_size), Image.BICUBIC))
                       if image_size != 32 else to_tensor_m11(im), 10)
    raise ValueError(f"unknown dataset {name!r}; choose shapes, imagefolder or cifar10")


# =====================================================================================================
# Resumable, distributed data order
# =====================================================================================================


class StepSampler(torch.utils.data.Sampler):
    """Yields this rank's indices, global batch by global batch, starting at any step.

    Epoch e is a permutation seeded by (seed, e); global batch k of it is split into `world_size`
    contiguous slices and rank r takes slice r. The images of a step therefore depend on the step only:
    resuming at step s (even with another number of processes) continues with exactly the same data.
    """

    def __init__(self, dataset_len, global_batch, rank, world_size, seed, start_step=0):
        if global_batch % world_size:
            raise ValueError(f"global batch {global_batch} must be divisible by the number of processes {world_size}")
        if dataset_len < global_batch:
            raise ValueError(f"the dataset has {dataset_len} items, fewer than one global batch of {global_batch}")
        self.n, self.global_batch, self.rank, self.world, self.seed = dataset_len, global_batch, rank, world_size, seed
        self.local_batch = global_batch // world_size
        self.steps_per_epoch = dataset_len // global_batch  # the last partial batch is dropped
        self.start_step = start_step

    def __iter__(self):
        step = self.start_step
        while True:  # endless: the training loop decides when to stop
            epoch, k = divmod(step, self.steps_per_epoch)
            perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
            batch = perm[k * self.global_batch : (k + 1) * self.global_batch]
            yield from batch[self.rank * self.local_batch : (self.rank + 1) * self.local_batch].tolist()
            step += 1


def infinite_loader(dataset, global_batch, rank, world_size, seed, start_step, num_workers, device):
    sampler = StepSampler(len(dataset), global_batch, rank, world_size, seed, start_step)
    loader = torch.utils.data.DataLoader(dataset, batch_size=sampler.local_batch, sampler=sampler,
                                         num_workers=num_workers, pin_memory=device.type == "cuda",
                                         persistent_workers=num_workers > 0)
    for x, y in loader:
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


# =====================================================================================================
# Distributed setup, EMA, RNG state
# =====================================================================================================


def setup_distributed(device_arg="auto"):
    """Returns (rank, world_size, device). Under torchrun (RANK set): NCCL on CUDA, gloo on CPU."""
    use_cuda = torch.cuda.is_available() if device_arg == "auto" else device_arg.startswith("cuda")
    if device_arg != "auto" and use_cuda and not torch.cuda.is_available():
        raise ValueError(f"--device {device_arg} asked for, but CUDA is not available")
    if "RANK" in os.environ:
        rank, world, local_rank = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
        if use_cuda:
            torch.cuda.set_device(local_rank)
            device = torch.device("cuda", local_rank)
        else:
            device = torch.device("cpu")
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", device_id=device if use_cuda else None)
        return rank, world, device
    device = torch.device("cuda" if use_cuda else "cpu") if device_arg == "auto" else torch.device(device_arg)
    return 0, 1, device


def cleanup_distributed():
    """Call once, at the end of a run that went through on every rank (it waits for all of them)."""
    if dist.is_available() and dist.is_initialized():
        # NOTE: a barrier first, so that no rank starts to exit while another still works. Without it, gloo
        # could abort a finished CPU run now and then with "terminate called without an active exception":
        # a gloo worker thread lets go of the tensors of the last all_gather (e.g. the RNG states of the final
        # checkpoint) a moment after the main thread has gone on; on a busy CPU that moment can fall after
        # Python has begun to shut down, and the thread then cannot take the GIL. We saw this in CI and in
        # about 1 in 30 runs of the 2-process test with the CPU loaded. While a rank waits here for the
        # others, its worker threads finish; the barrier's own tensor is made in C++ and needs no GIL.
        dist.barrier()
        dist.destroy_process_group()


def all_reduce_mean(value):
    """Average a float over ranks (for logging)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.float64,
                     device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t)
    return t.item() / dist.get_world_size()


@torch.no_grad()
def check_ranks_in_sync(module):
    """Raise if a module's parameters differ between ranks (DDP keeps them equal; a bug would not).

    Returns the number of ranks compared. Compares float64 sums of every parameter tensor.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    sums = torch.stack([p.detach().double().sum() for p in module.parameters()])
    gathered = [torch.zeros_like(sums) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, sums)
    for r, other in enumerate(gathered):
        if not torch.equal(other, gathered[0]):
            raise RuntimeError(f"rank {r}'s weights differ from rank 0's after training: DDP went out of sync")
    return len(gathered)


@torch.no_grad()
def update_ema(ema_model, model, decay):
    """ema <- decay * ema + (1 - decay) * model, for every floating-point parameter and buffer."""
    ema_sd = ema_model.state_dict()
    for name, value in model.state_dict().items():
        if value.dtype.is_floating_point:
            ema_sd[name].lerp_(value, 1 - decay)


def ema_decay_at(step, decay, warmup):
    """Official DC-Gen EMA warmup: decay * (1 - exp(-step / warmup)), so early averages forget their init."""
    return decay * (1 - math.exp(-step / warmup)) if warmup > 0 else decay


def get_rng_state(extra_generators=None):
    """Every RNG a training step draws from, as tensors and plain values (safe for weights_only loading)."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state()[1].tolist(),
             "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    for name, gen in (extra_generators or {}).items():
        state[name] = gen.get_state()
    return state


def set_rng_state(state, extra_generators=None):
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", np.array(state["numpy"], dtype=np.uint32), 624, 0, 0.0))
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    for name, gen in (extra_generators or {}).items():
        gen.set_state(state[name])


# =====================================================================================================
# Run folders: resume, RNG streams, learning-rate warmup, log lines (train_ae.py and train_dit.py)
# =====================================================================================================


def open_run(args, kind, parser, free_args):
    """The checkpoint to resume from (--resume), or None for a new run.

    With --resume, <out>/last.pt must be a `kind` checkpoint; every flag not in `free_args` takes the run's
    value, and a flag explicitly set to another value is an error (silently changing a run is worse). Without
    --resume, an existing run is never overwritten.
    """
    import dcae15

    last_path = os.path.join(args.out, "last.pt")
    if not args.resume:
        if os.path.exists(last_path):
            raise FileExistsError(f"{last_path} exists: pass --resume to continue that run, or choose another --out")
        return None
    if not os.path.isfile(last_path):
        raise FileNotFoundError(f"--resume: no checkpoint at {last_path}")
    ckpt = dcae15.load_checkpoint(last_path)
    if not isinstance(ckpt, dict) or ckpt.get("kind") != kind:
        raise ValueError(f"--resume: {last_path} is not a {kind} checkpoint")
    defaults = vars(parser.parse_args([]))
    for key, value in ckpt["args"].items():
        if key in free_args or getattr(args, key) == value:
            continue
        if getattr(args, key) != defaults[key]:
            raise ValueError(f"--resume: --{key.replace('_', '-')} {getattr(args, key)} differs from the run's "
                             f"{value}; drop the flag to continue the run as it was")
        setattr(args, key, value)
    return ckpt


def gather_rng_states(generators):
    """Every rank's RNG state (see get_rng_state), gathered to all ranks: a list indexed by rank."""
    state = get_rng_state(generators)
    if not (dist.is_available() and dist.is_initialized()):
        return [state]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, state)
    return gathered


def restore_rng_states(states, rank, generators):
    """Continue this rank's RNG streams (a run resumed on more ranks reuses the last saved stream)."""
    set_rng_state(states[min(rank, len(states) - 1)], generators)


def warmup_lr(optimizer, base_lr, step, warmup_steps):
    """Linear warmup to base_lr over warmup_steps, then constant (the official ConstantLRwithWarmup shape)."""
    lr = base_lr * min(1.0, (step + 1) / warmup_steps) if warmup_steps else base_lr
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


class RunLog:
    """Rank 0's log lines, to stdout (above the tqdm bar) and to <out>/log.txt, and the averages they show.

    `accumulate` adds each step's terms (as tensors: no GPU sync per step); `averages` returns the mean of
    each term over the steps since the last call and over the ranks, then starts a new interval.
    """

    def __init__(self, out, master):
        self.master = master
        self.file = open(os.path.join(out, "log.txt"), "a") if master else None
        self.sums, self.count, self.t0, self.items = {}, 0, time.time(), 0

    def write(self, text, echo=True):
        if self.master:
            from tqdm import tqdm

            if echo:
                tqdm.write(text, file=sys.stdout)
            self.file.write(text + "\n")
            self.file.flush()

    def accumulate(self, terms, items):
        for k, v in terms.items():
            self.sums[k] = self.sums.get(k, 0.0) + v.detach()
        self.count += 1
        self.items += items

    def averages(self):
        """(means of the terms, items per second) since the last call."""
        means = {k: all_reduce_mean(v.item() / self.count) for k, v in self.sums.items()}
        rate = self.items / max(time.time() - self.t0, 1e-9)
        self.sums, self.count, self.t0, self.items = {}, 0, time.time(), 0
        return means, rate

    def close(self):
        if self.file:
            self.file.close()


# =====================================================================================================
# Loading an autoencoder for diffusion: ours or official
# =====================================================================================================


def load_autoencoder(path, ae_config=None, latent_scale=None):
    """Load the autoencoder a diffusion model works in. Returns (ae in eval mode, latent_scale, info).

    `path` is a train_ae.py checkpoint (its EMA weights, config and measured latent scale are used) or an
    official DC-AE file (.safetensors / .pt) with `ae_config` naming its preset. `latent_scale` overrides
    the stored factor; it is required when none is known. `info` is a plain dict that is enough to find
    and rebuild the AE again (it goes into DiT checkpoints).
    """
    import dcae15

    raw = dcae15.read_state_dict(path)
    if raw.get("kind") == "dcae15-ae":
        cfg = dcae15.DCAEConfig.from_dict(raw["config"])
        sd, source = raw["ema"], "dcae15"
        scale = latent_scale if latent_scale is not None else raw.get("latent_scale")
    elif "kind" in raw:
        raise ValueError(f"{path} is a {raw['kind']} checkpoint, not an autoencoder: pass a train_ae.py checkpoint "
                         f"or an official DC-AE file")
    else:
        if ae_config is None:
            raise ValueError(f"{path} is not a train_ae.py checkpoint; for an official DC-AE file also pass its "
                             f"preset with --ae-config (one of {sorted(dcae15.DCAE_CONFIGS)})")
        cfg, sd, source = dcae15.build_dcae_config(ae_config), dcae15.autoencoder_state_dict(raw), "official"
        scale = latent_scale if latent_scale is not None else cfg.scaling_factor
    if scale is None:
        raise ValueError(f"no latent scaling factor is known for {path}: pass --latent-scale S "
                         f"(1 / RMS of its latents; dcae15.measure_latent_scale computes it)")
    ae = dcae15.DCAE(cfg)
    dcae15.check_state_dict(ae, sd)
    ae.load_state_dict(sd, strict=True)
    info = {"path": path, "source": source, "ae_config": ae_config, "config": cfg.to_dict(),
            "fingerprint": fingerprint(sd), "latent_scale": float(scale)}
    return ae.eval().requires_grad_(False), float(scale), info


def fingerprint(state_dict):
    """A short hash of a state dict's names and values: identifies an AE for the latent cache."""
    h = hashlib.sha256()
    for k in sorted(state_dict):
        h.update(k.encode())
        h.update(state_dict[k].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


# =====================================================================================================
# Pictures and metrics
# =====================================================================================================


def to_uint8(x):
    """[-1, 1] float (B, 3, H, W) -> uint8, rounding as the official evaluation does."""
    return (x.float() * 127.5 + 128).clamp(0, 255).to(torch.uint8)


def save_grid(images, path, ncol):
    """Save (N, 3, H, W) images in [-1, 1] as one PNG grid with `ncol` columns and a 2 px white gap."""
    images = to_uint8(images).cpu()
    n, _, h, w = images.shape
    nrow = math.ceil(n / ncol)
    grid = torch.full((3, nrow * (h + 2) + 2, ncol * (w + 2) + 2), 255, dtype=torch.uint8)
    for i in range(n):
        r, c = divmod(i, ncol)
        grid[:, 2 + r * (h + 2) : 2 + r * (h + 2) + h, 2 + c * (w + 2) : 2 + c * (w + 2) + w] = images[i]
    tmp = f"{path}.tmp{os.getpid()}.png"
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(tmp)
    os.replace(tmp, path)


def save_npz(path, **arrays):
    """np.savez, atomically (a temp file in the same folder, then a rename): no half-written file on a crash."""
    tmp = f"{path}.tmp{os.getpid()}.npz"
    try:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def psnr(x, y):
    """Per-image PSNR in dB on uint8-quantised images (official DC-AE evaluation), (B,) tensor."""
    mse = (to_uint8(x).double() - to_uint8(y).double()).pow(2).mean(dim=(1, 2, 3))
    return 10 * torch.log10(255.0**2 / mse.clamp_min(1e-10))
