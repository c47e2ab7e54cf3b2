"""
common.py: the run plumbing the four scripts share (train_ae.py, train_dit.py, sample.py, evaluate.py).

- Distributed setup for `python script.py` and `torchrun --nproc_per_node=N script.py`.
- EMA, learning-rate warmup, RNG state capture (for exact resume).
- Run folders: starting or resuming a run, and the log lines.
- Pictures and metrics: uint8 conversion, image grids, atomic .npz files, PSNR.

Images come from data.py; models, losses, samplers and checkpoint formats from dcae15.py.
"""

import functools
import json
import math
import os
import random
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from tqdm import tqdm

import dcae15

# ==================================================================================================
# Distributed setup
# ==================================================================================================


def setup_distributed(device_arg="auto"):
    """Returns (rank, world_size, device). Under torchrun (RANK set): NCCL on CUDA, gloo on CPU.

    On the CPU it also flushes denormal floats to zero (`torch.set_flush_denormal`)."""
    rank, world, device = _setup_distributed(device_arg)
    if device.type == "cpu":
        # NOTE: numbers below ~1e-38 (float32 denormals) can take a CPU's slow path, many times
        # slower per operation; GAN training makes some (the discriminator's tiny gradients, Adam's
        # moments). When the GAN option was first tried, a classroom GAN run slid from 60 to 20 img/s
        # without this and held 31 img/s with it, the losses equal to 4 decimals. Measured later as
        # CPU time on an AMD EPYC (no other effect there): 300 GAN steps 479 s without, 476 s with;
        # 150 AE steps 166 / 162 s; 300 DiT steps 128 / 126 s. It never costs, so every CPU run of
        # every script gets it here; flushing a value below 1e-38 to 0 changes no result that matters.
        torch.set_flush_denormal(True)
    return rank, world, device


def _setup_distributed(device_arg):
    use_cuda = torch.cuda.is_available() if device_arg == "auto" else device_arg.startswith("cuda")
    if device_arg != "auto" and use_cuda and not torch.cuda.is_available():
        raise ValueError(f"--device {device_arg} asked for, but CUDA is not available")
    if "RANK" not in os.environ:
        device = torch.device("cuda" if use_cuda else "cpu")
        return 0, 1, device if device_arg == "auto" else torch.device(device_arg)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"this process has local rank {local_rank}, but this node shows only "
                             f"{torch.cuda.device_count()} GPU(s): start at most that many processes a node "
                             f"(torchrun --nproc_per_node), or pass --device cpu")
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    dist.init_process_group(backend="nccl" if use_cuda else "gloo",
                            device_id=device if use_cuda else None)
    return rank, world, device


def cleanup_distributed():
    """Call once, at the end of a run that went through on every rank (it waits for all of them)."""
    if dist.is_available() and dist.is_initialized():
        # NOTE: a barrier first, so that no rank starts to exit while another still works. Without
        # it, gloo could abort a finished CPU run now and then with "terminate called without an
        # active exception": a gloo worker thread lets go of the tensors of the last all_gather
        # (e.g. the RNG states of the final checkpoint) a moment after the main thread has gone on;
        # on a busy CPU that moment can fall after Python has begun to shut down, and the thread
        # then cannot take the GIL. We saw this in CI and in about 1 in 30 runs of the 2-process
        # test with the CPU loaded. While a rank waits here for the others, its worker threads
        # finish; the barrier's own tensor is made in C++ and needs no GIL.
        dist.barrier()
        dist.destroy_process_group()


def all_reduce_mean(value):
    """Average a float over ranks (for logging)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([value], dtype=torch.float64, device=device)
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
            raise RuntimeError(f"rank {r}'s weights differ from rank 0's after training: DDP went "
                               f"out of sync")
    return len(gathered)


# ==================================================================================================
# EMA, learning rate, RNG state
# ==================================================================================================


@torch.no_grad()
def update_ema(ema_model, model, decay):
    """ema <- decay * ema + (1 - decay) * model, for every floating-point parameter and buffer but
    the frozen parameters (requires_grad False: a training phase that trains a part only), whose
    EMA stays exactly as it was."""
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    ema_sd = ema_model.state_dict()
    for name, value in model.state_dict().items():
        if value.dtype.is_floating_point and name not in frozen:
            ema_sd[name].lerp_(value, 1 - decay)


def ema_decay_at(step, decay, warmup):
    """Official DC-Gen EMA warmup: decay * (1 - exp(-step / warmup)), so early averages forget."""
    return decay * (1 - math.exp(-step / warmup)) if warmup > 0 else decay


def warmup_lr(optimizer, base_lr, step, warmup_steps):
    """Linear warmup to base_lr, then constant (the official ConstantLRwithWarmup shape)."""
    lr = base_lr * min(1.0, (step + 1) / warmup_steps) if warmup_steps else base_lr
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def get_rng_state(extra_generators=None):
    """Every RNG a training step draws from, as tensors and plain values (weights_only-safe)."""
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state()[1].tolist(),
        "python": list(random.getstate()[1]),
    }
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


def gather_rng_states(generators):
    """Every rank's RNG state (see get_rng_state), gathered to all ranks: a list indexed by rank."""
    state = get_rng_state(generators)
    if not (dist.is_available() and dist.is_initialized()):
        return [state]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, state)
    return gathered


def restore_rng_states(states, rank, generators):
    """Continue this rank's RNG streams (a run resumed on more ranks reuses the last saved one)."""
    set_rng_state(states[min(rank, len(states) - 1)], generators)


# ==================================================================================================
# Run folders: start or resume, log lines
# ==================================================================================================


def checkpoint_to_resume(args, kind):
    """The checkpoint `<out>/last.pt` to continue (with --resume), or None for a new run.

    With --resume it must be a `kind` checkpoint (dcae15.AE_KIND or dcae15.DIT_KIND). Without
    --resume, an existing run is never overwritten.
    """
    last_path = os.path.join(args.out, "last.pt")
    if not args.resume:
        if os.path.exists(last_path):
            raise FileExistsError(f"{last_path} exists: pass --resume to continue that run, or choose "
                                  f"another --out")
        return None
    if not os.path.isfile(last_path):
        raise FileNotFoundError(f"--resume: no checkpoint at {last_path}")
    ckpt = dcae15.load_checkpoint(last_path)
    if not isinstance(ckpt, dict) or ckpt.get("kind") != kind:
        raise ValueError(f"--resume: {last_path} is not a {kind} checkpoint")
    return ckpt


def adopt_run_flags(args, run_args, parser, free_args):
    """Continue a run with its own flags: set each flag of `args` to the run's value, in place.

    A flag in `free_args` may change (e.g. --max-steps); a flag left at its default takes the run's
    value; a flag explicitly set to another value is an error (silently changing a run is worse).
    """
    defaults = vars(parser.parse_args([]))
    for key, value in run_args.items():
        if key in free_args or getattr(args, key) == value:
            continue
        if getattr(args, key) != defaults[key]:
            raise ValueError(f"--resume: --{key.replace('_', '-')} {getattr(args, key)} differs from "
                             f"the run's {value}; drop the flag to continue the run as it was")
        setattr(args, key, value)


def progress(iterable=None, **kwargs):
    """A tqdm bar on stdout. On a terminal it redraws often; redirected to a file (SLURM, nohup) it
    writes at most one update every 30 s, so that a log holds a few progress lines rather than a
    fragment per step."""
    interactive = sys.stdout.isatty()
    interval = 0.1 if interactive else 30.0
    return tqdm(iterable, file=sys.stdout, dynamic_ncols=interactive, mininterval=interval,
                maxinterval=max(10.0, interval), **kwargs)


class RunLog:
    """Rank 0's log lines, to stdout (above the tqdm bar) and to <out>/log.txt, and their averages.

    `accumulate` adds each step's terms (as tensors: no GPU sync per step); `averages` returns the
    mean of each term over the steps since the last call and over the ranks, then starts anew.
    """

    def __init__(self, out, master):
        self.master = master
        self.file = open(os.path.join(out, "log.txt"), "a") if master else None
        self.sums, self.count, self.t0, self.items = {}, 0, time.time(), 0

    def write(self, text, echo=True):
        if self.master:
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


def check_positive(args, names):
    """A clear error for a flag among `names` (e.g. "max_steps") that is not > 0."""
    for name in names:
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive")


# ==================================================================================================
# Pictures and metrics
# ==================================================================================================


def to_uint8(x):
    """[-1, 1] float (B, 3, H, W) -> uint8, rounding as the official evaluation does."""
    return (x.float() * 127.5 + 128).clamp(0, 255).to(torch.uint8)


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
    with dcae15.atomic_write(path, ".png") as tmp:
        Image.fromarray(grid.permute(1, 2, 0).numpy()).save(tmp)


def save_npz(path, **arrays):
    """np.savez, atomically (`dcae15.atomic_write`)."""
    with dcae15.atomic_write(path, ".npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def create_npy(path, shape, dtype):
    """An .npy file of the given shape, its rows still zero (a sparse file): processes then write
    their rows with write_npy_rows, and no process ever holds the whole array."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
              "shape": tuple(shape)}
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_2_0(fh, header)
        fh.truncate(fh.tell() + int(np.prod(shape)) * np.dtype(dtype).itemsize)


def npy_layout(fh):
    """(shape, dtype, offset of the data) of an open .npy file (or zip member)."""
    version = np.lib.format.read_magic(fh)
    read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    if read_header is None:
        raise ValueError(f"unsupported .npy format version {version}")
    shape, fortran, dtype = read_header(fh)
    if fortran:
        raise ValueError("Fortran-ordered .npy arrays are not supported")
    return shape, dtype, fh.tell()


def release_free_memory():
    """Give the C heap's free pages back to the system (glibc's malloc_trim); True if it could.

    NOTE: without this, building a latent cache on the CPU grew with the data set although only one
    batch is ever held: glibc keeps freed blocks in its heaps, and once a second thread is alive (the
    progress bar's monitor, a data loader's) the batches' buffers come from several heaps and leave
    holes it apparently never returns. Measured with dc-ae-tiny at 64 px, 15,000 images, another
    thread alive: the process grew by 125 MB while encoding, and by 15 MB when this ran after each
    batch (glibc's mallopt(M_ARENA_MAX, 1) called from inside the process made it worse: +365 MB).
    Elsewhere (macOS, Windows, musl) it does nothing.
    """
    libc = _libc_with_malloc_trim()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


@functools.lru_cache(maxsize=None)
def _libc_with_malloc_trim():
    """The C library if it has malloc_trim (glibc), else None; loaded once."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None


def write_npy_rows(path, start, rows):
    """Write `rows` (a numpy array) into the .npy file at `path` from row `start` on, in place."""
    with open(path, "r+b") as fh:
        shape, dtype, offset = npy_layout(fh)
        if rows.shape[1:] != tuple(shape[1:]) or rows.dtype != dtype or start + len(rows) > shape[0]:
            raise ValueError(f"rows {rows.dtype} {rows.shape} at {start} do not fit {path} "
                             f"({dtype} {shape})")
        fh.seek(offset + start * rows[0].nbytes)
        fh.write(np.ascontiguousarray(rows).tobytes())


def read_npy_rows(fh, shape, dtype, start, count):
    """Rows [start, start + count) of an .npy file open at its data offset + start's position."""
    count = min(count, shape[0] - start)
    row = int(np.prod(shape[1:])) * dtype.itemsize
    return np.frombuffer(fh.read(count * row), dtype=dtype).reshape(count, *shape[1:])


def npz_from_npy(path, members, chunk=1 << 26):
    """An .npz (uncompressed, as np.savez writes) whose arrays are the .npy files `members`
    ({name: .npy path}), copied in chunks of `chunk` bytes; written atomically."""
    import shutil
    import zipfile

    with dcae15.atomic_write(path, ".npz") as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, src in members.items():
                with open(src, "rb") as fin, zf.open(f"{name}.npy", "w", force_zip64=True) as fout:
                    shutil.copyfileobj(fin, fout, chunk)


def npz_batches(path, name="arr_0", batch_size=64, rank=0, world=1):
    """Batches of the array `name` of an .npz, read from the file as they are needed (never the
    whole array in memory), this rank's share (batch k goes to rank k % world); with the shape."""
    import zipfile

    with zipfile.ZipFile(path) as zf:
        if f"{name}.npy" not in zf.namelist():
            raise ValueError(f"{path} has no array {name!r}")
        with zf.open(f"{name}.npy") as fh:
            shape, dtype, _ = npy_layout(fh)
            for k, start in enumerate(range(0, shape[0], batch_size)):
                rows = read_npy_rows(fh, shape, dtype, start, batch_size)  # read in order, always
                if k % world == rank:
                    yield rows


def write_json(path, obj):
    """json.dump, atomically (`dcae15.atomic_write`)."""
    with dcae15.atomic_write(path) as tmp, open(tmp, "w") as fh:
        json.dump(obj, fh, indent=1)


def psnr(x, y):
    """Per-image PSNR in dB on uint8-quantised images (official DC-AE evaluation), (B,) tensor."""
    mse = (to_uint8(x).double() - to_uint8(y).double()).pow(2).mean(dim=(1, 2, 3))
    return 10 * torch.log10(255.0**2 / mse.clamp_min(1e-10))
