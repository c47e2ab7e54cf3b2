"""
data.py: every image the scripts read comes from here.

- `ShapesDataset`: the built-in procedural set (no download, no files): one object per image, class = shape.
- `build_dataset`: shapes, an ImageNet-style image folder, or CIFAR-10; items are (image in [-1, 1], label).
- `adm_center_crop`: the ADM / DiT / official DC-AE centre crop.
- `StepSampler` and `infinite_loader`: the resumable, distributed data order. The global batch of a step
  depends only on (seed, step), not on the number of processes, so a run can stop and resume exactly.

To train on your own images, use `--data imagefolder --data-path DIR`; to change the shapes, edit
`shape_mask` (the outlines) or `ShapesDataset.__getitem__` (position, size, colour, texture).
"""

import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from dcaelib import pictures

DATASETS = ("shapes", "imagefolder", "cifar10")

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
        vertical = (u.abs() < 0.25) & (v.abs() < 0.85)
        return vertical | ((v.abs() < 0.25) & (u.abs() < 0.85))
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
        stem = (u > -0.7) & (u < -0.2) & (v.abs() < 0.8)
        return stem | ((u > -0.7) & (u < 0.7) & (v > 0.3) & (v < 0.8))
    raise ValueError(f"unknown shape class {cls}")


class ShapesDataset(torch.utils.data.Dataset):
    """Procedural, class-labelled images: no download, no files, deterministic per (seed, split, index).

    Each image holds one object whose class is its shape, at a random position (near the centre),
    size, tilt (up to 20 degrees) and colour. The object carries bold horizontal or vertical stripes
    and the background fine noise and a faint checker, so there is detail for later latent channels
    to add on top of the structure (where the object is, what shape and colour it is). Label = index
    % 10, so every class is equally frequent. Returns (image in [-1, 1], label).
    """

    SPLIT_OFFSET = {"train": 0, "val": 1_000_003}  # disjoint random streams for the two splits

    def __init__(self, split="train", size=None, image_size=64, seed=0):
        if split not in self.SPLIT_OFFSET:
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        self.split, self.image_size, self.seed = split, image_size, seed
        self.size = size if size is not None else (50_000 if split == "train" else 1_000)
        self.num_classes = len(SHAPE_CLASSES)
        # pixel-centre coordinates in [-1, 1] at 2x resolution: rendered at 2x, then 2x2-averaged
        # (anti-aliasing)
        n = 2 * image_size
        coords = (torch.arange(n, dtype=torch.float32) + 0.5) / n * 2 - 1
        self.gy, self.gx = torch.meshgrid(coords, coords, indexing="ij")

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        if not 0 <= index < self.size:
            raise IndexError(index)
        seed = self.seed * 2_000_003 + self.SPLIT_OFFSET[self.split] + index
        g = torch.Generator().manual_seed(seed)
        r = lambda *shape: torch.rand(shape, generator=g)  # noqa: E731
        cls = index % self.num_classes
        # NOTE: the ranges are narrow on purpose. With objects anywhere in the frame (radius
        # 0.45-0.8, tilt up to 30 degrees) the 5-minute classroom DiT drew the requested class in
        # only ~27% of its samples (a small CNN's verdict; chance is 10%); with these ranges and the
        # same judge, in ~65%. The AE's story holds either way: front channels give the object,
        # later channels sharpen it.
        scale = 0.55 + 0.25 * r().item()  # object radius as a fraction of the half-width
        # jitter around the centre, inside the frame
        cx, cy = ((r(2) * 2 - 1) * (1 - scale) * 0.3).tolist()
        angle = (r().item() * 2 - 1) * math.pi / 9  # a tilt of up to 20 degrees either way
        # object frame: translate, rotate, scale
        dx, dy = (self.gx - cx) / scale, (self.gy - cy) / scale
        ca, sa = math.cos(angle), math.sin(angle)
        u, v = ca * dx + sa * dy, -sa * dx + ca * dy
        inside = shape_mask(cls, u, v).float()

        bg_color, obj_color = r(3), r(3)
        lum = torch.tensor([0.299, 0.587, 0.114])
        if ((obj_color - bg_color) @ lum).abs() < 0.3:  # keep the object visible
            bg_lum = bg_color @ lum
            obj_color = 1 - bg_color if bg_lum < 0.35 or bg_lum > 0.65 else (bg_color + 0.5) % 1
        n = 2 * self.image_size
        # texture: bold stripes on the object, horizontal or vertical at random, 8 px period on the
        # pixel grid, darker on light objects and lighter on dark ones. A decoder can draw them
        # quickly. The structured classroom AE puts their direction in its first 8 channels already;
        # the later channels make them crisp.
        # NOTE: bold and axis-aligned on purpose: a short classroom run learns them, so the picture
        # can show the later channels sharpening them (finer, tilted stripes stay a blur).
        pix = torch.arange(n) // 2  # output-pixel index of each 2x-resolution row / column
        stripes = ((pix[:, None] if r().item() < 0.5 else pix[None, :]) // 4 % 2).float() * 2 - 1
        obj_rgb = obj_color[:, None, None]
        obj = obj_rgb + 0.3 * stripes * (1 - 2 * (obj_rgb > 0.5).float())
        checker = ((torch.arange(n)[:, None] // 4 + torch.arange(n)[None] // 4) % 2).float() * 2 - 1
        noise = r(3, n // 2, n // 2).repeat_interleave(2, 1).repeat_interleave(2, 2) - 0.5
        bg = bg_color[:, None, None] * (1 + 0.08 * checker) + 0.08 * noise
        img = inside * obj + (1 - inside) * bg
        img = F.avg_pool2d(img[None], 2)[0].clamp(0, 1)  # (3, H, W) in [0, 1]
        return img * 2 - 1, cls


# =====================================================================================================
# Image files: ImageNet-style folders and CIFAR-10
# =====================================================================================================


def adm_center_crop(pil_image, image_size):
    """ADM / DiT / official DC-AE centre crop: halve with BOX while >= 2x too big, BICUBIC resize, crop."""
    while min(*pil_image.size) >= 2 * image_size:
        half = tuple(x // 2 for x in pil_image.size)
        pil_image = pil_image.resize(half, resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    new_size = tuple(round(x * scale) for x in pil_image.size)
    pil_image = pil_image.resize(new_size, resample=Image.BICUBIC)
    arr = np.array(pil_image)
    top, left = (arr.shape[0] - image_size) // 2, (arr.shape[1] - image_size) // 2
    return Image.fromarray(arr[top : top + image_size, left : left + image_size])


def pil_to_tensor(pil_image):
    """PIL image -> (3, H, W) float in [-1, 1], the image range of every model here."""
    arr = np.array(pil_image.convert("RGB"), dtype=np.uint8)
    return pictures.from_uint8(torch.from_numpy(arr).permute(2, 0, 1))


class TransformedDataset(torch.utils.data.Dataset):
    """Items (transform(image), label) of a torchvision dataset that yields (PIL image, label)."""

    def __init__(self, base, transform, num_classes):
        self.base, self.transform, self.num_classes = base, transform, num_classes

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        img, label = self.base[i]
        return self.transform(img), label


def add_dataset_flags(parser, data_help="training images"):
    """--data, --data-path and --skip-bad-images, as every script that reads images takes them."""
    parser.add_argument("--data", default="shapes", choices=DATASETS,
                        help=f"{data_help}: shapes = the built-in procedural set (no files); "
                             f"imagefolder = --data-path with class folders; cifar10 = "
                             f"torchvision's CIFAR-10 under --data-path")
    parser.add_argument("--data-path", default=None, help="dataset folder (imagefolder, cifar10)")
    parser.add_argument("--skip-bad-images", action="store_true",
                        help="skip unreadable files of an image folder (a warning names each) "
                             "instead of stopping at the first")


def build_dataset(name, split, image_size, data_path=None, seed=0, size=None, skip_bad=False):
    """The dataset `name` ('shapes' | 'imagefolder' | 'cifar10'); items are (image in [-1, 1], label).

    Raises a clear error (before any training) for a missing folder or an offline CIFAR-10 download.
    skip_bad: an image folder's unreadable files are skipped and counted instead of stopping the run.
    """
    if name == "shapes":
        return ShapesDataset(split, size=size, image_size=image_size, seed=seed)
    if name == "imagefolder":
        return image_folder(data_path, split, image_size, skip_bad)
    if name == "cifar10":
        return cifar10(data_path or "data", split, image_size)
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


class BadImageError(ValueError):
    """An image file that cannot be read: truncated, corrupt, or not an image."""


class ImageFiles(TransformedDataset):
    """The items of an image folder. A file that cannot be read stops the run with a one-line error
    that names it; with skip_bad, it is replaced by the next readable file, and a warning on stderr
    names it and counts the files this process has skipped."""

    def __init__(self, base, transform, num_classes, skip_bad=False):
        super().__init__(base, transform, num_classes)
        self.skip_bad, self.skipped = skip_bad, set()

    def __getitem__(self, i):
        for k in range(i, i + len(self)):
            k %= len(self)
            path = self.base.samples[k][0]
            try:
                return super().__getitem__(k)
            except (OSError, SyntaxError, ValueError) as err:  # what PIL raises for a broken file
                if not self.skip_bad:
                    raise BadImageError(f"cannot read image {path} ({err}); repair or delete it, or "
                                        f"pass --skip-bad-images to skip such files") from None
                if path not in self.skipped:
                    self.skipped.add(path)
                    print(f"warning: skipped unreadable image {path} ({err}); "
                          f"{len(self.skipped)} skipped by this process", file=sys.stderr)
        raise BadImageError(f"no readable image under {self.base.root}")


def one_line(err):
    """A BadImageError raised in a DataLoader worker reaches the main process with the worker's
    traceback in its text: keep the last line, the message itself."""
    text = str(err).strip().splitlines()[-1]
    return BadImageError(text.split("BadImageError: ", 1)[-1])


def image_folder(data_path, split, image_size, skip_bad=False):
    """DIR/<split>/<class>/*.jpg if DIR/<split> exists (the ImageNet layout), else DIR/<class>/*.jpg."""
    if not data_path or not os.path.isdir(data_path):
        raise FileNotFoundError(f"--data imagefolder needs --data-path DIR with one sub-folder per class; "
                                f"{data_path!r} is not a folder")
    root = os.path.join(data_path, split)
    root = root if os.path.isdir(root) else data_path
    import torchvision  # here, not at the top: its import takes seconds, and shapes runs need none

    base = torchvision.datasets.ImageFolder(root)
    if len(base) == 0:
        raise FileNotFoundError(f"no images found under {root}")

    def transform(im):
        return pil_to_tensor(adm_center_crop(im.convert("RGB"), image_size))

    return ImageFiles(base, transform, len(base.classes), skip_bad)


def cifar10(root, split, image_size):
    """torchvision's CIFAR-10 (downloaded into `root` if it is not there), resized bicubically."""
    import torchvision

    try:
        base = torchvision.datasets.CIFAR10(root, train=(split == "train"), download=True)
    except Exception as err:  # offline: URLError / RuntimeError from torchvision
        raise FileNotFoundError(
            f"CIFAR-10 is not in {root!r} and could not be downloaded ({err}). Download "
            f"cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html into {root}/ "
            f"(or pass --data-path), or use --data shapes") from err

    def transform(im):
        if image_size != 32:
            im = im.resize((image_size, image_size), Image.BICUBIC)
        return pil_to_tensor(im)

    return TransformedDataset(base, transform, 10)


# =====================================================================================================
# Resumable, distributed data order
# =====================================================================================================


class StepSampler(torch.utils.data.Sampler):
    """Yields this rank's indices, global batch by global batch, starting at any step.

    Epoch e is a permutation seeded by (seed, e); global batch k of it is split into `world_size`
    contiguous slices and rank r takes slice r. The images of a step therefore depend on the step
    only: resuming at step s (even with another number of processes) continues with exactly the same
    data.
    """

    def __init__(self, dataset_len, global_batch, rank, world_size, seed, start_step=0):
        if global_batch % world_size:
            raise ValueError(f"global batch {global_batch} must be divisible by the number of processes "
                             f"{world_size}")
        if dataset_len < global_batch:
            raise ValueError(f"the dataset has {dataset_len} items, fewer than one global batch of "
                             f"{global_batch}")
        self.n, self.global_batch, self.seed = dataset_len, global_batch, seed
        self.rank, self.world = rank, world_size
        self.local_batch = global_batch // world_size
        self.steps_per_epoch = dataset_len // global_batch  # the last partial batch is dropped
        self.start_step = start_step

    def __iter__(self):
        step = self.start_step
        while True:  # endless: the training loop decides when to stop
            epoch, k = divmod(step, self.steps_per_epoch)
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            batch = torch.randperm(self.n, generator=g)[k * self.global_batch : (k + 1) * self.global_batch]
            mine = batch[self.rank * self.local_batch : (self.rank + 1) * self.local_batch]
            yield from mine.tolist()
            step += 1


def infinite_loader(dataset, global_batch, rank, world_size, seed, start_step, num_workers, device):
    """(images, labels) batches on `device`, this rank's share of each global batch, from `start_step` on."""
    sampler = StepSampler(len(dataset), global_batch, rank, world_size, seed, start_step)
    loader = torch.utils.data.DataLoader(dataset, batch_size=sampler.local_batch, sampler=sampler,
                                         num_workers=num_workers, pin_memory=device.type == "cuda",
                                         persistent_workers=num_workers > 0)
    try:
        for x, y in loader:
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    except BadImageError as err:
        raise one_line(err) from None
