"""
common.py: the run plumbing the four scripts share (train_ae.py, train_dit.py, sample.py, evaluate.py).

- Distributed setup for `python script.py` and `torchrun --nproc_per_node=N script.py`.
- EMA, learning-rate warmup, RNG state capture (for exact resume).
- Run folders: starting or resuming a run, and the log lines.
- Pictures and metrics: uint8 conversion, image grids, PSNR.

Images come from data.py, models, losses and samplers from dcae15.py, file formats from checkpoint.py.
"""

import functools
import math
import os
import random
import sys

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from tqdm import tqdm

import checkpoint
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


def progress(iterable=None, **kwargs):
    """A tqdm bar on stdout. On a terminal it redraws often; redirected to a file (SLURM, nohup) it
    writes at most one update every 30 s, so that a log holds a few progress lines rather than a
    fragment per step."""
    interactive = sys.stdout.isatty()
    interval = 0.1 if interactive else 30.0
    return tqdm(iterable, file=sys.stdout, dynamic_ncols=interactive, mininterval=interval,
                maxinterval=max(10.0, interval), **kwargs)


class StopRun(Exception):
    """A run that cannot go on (it diverged, a checkpoint could not be written): the script ends with
    this one line and a non-zero exit code; the last intact checkpoint stays as it was."""


def command_line(main, parser):
    """Run a script's `main` on its parsed flags. Bad input raises ValueError, FileNotFoundError or
    FileExistsError with a message that says what to do (ImportError: which optional package to
    install), a run that cannot go on StopRun; the user gets that one line, not a traceback."""
    try:
        main(parser.parse_args())
    except (ValueError, FileNotFoundError, FileExistsError, ImportError, StopRun) as err:
        sys.exit(f"{parser.prog}: error: {err}")


def channel_list(text, latent_channels, flag, default):
    """A flag's comma-separated c' values ("8,16,64" -> [8, 16, 64], sorted, each in [1, c]), or
    `default` when the flag is not given."""
    if text is None:
        return default
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated integers, got {text!r}") from None
    try:
        return dcae15.check_channel_choices(values, latent_channels)
    except ValueError as err:
        raise ValueError(f"{flag}: {err}") from None


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
    with checkpoint.atomic_write(path, ".png") as tmp:
        Image.fromarray(grid.permute(1, 2, 0).numpy()).save(tmp)


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


@torch.no_grad()
def partial_reconstructions(ae, x, channel_list):
    """(c', D(E(x)[:, :c'])) for each c' of `channel_list`, clamped to [-1, 1], from one encoder
    pass: the reconstructions from the first c' latent channels (the paper's Figure 3)."""
    z = ae.encode(x)
    for c in channel_list:
        yield c, ae.decode(z[:, :c]).clamp(-1, 1)


def mean_psnr(ae, batches, channel_list):
    """{c': mean PSNR (dB) of the reconstructions from the first c' channels} over batches of
    images in [-1, 1]."""
    sums, n = dict.fromkeys(channel_list, 0.0), 0
    for x in batches:
        for c, rec in partial_reconstructions(ae, x, channel_list):
            sums[c] += psnr(rec, x).sum().item()
        n += x.shape[0]
    return {c: total / n for c, total in sums.items()}


@torch.no_grad()
def save_recon_grid(path, images, models, channel_list):
    """A PNG with a row per image: the original, then each model's reconstruction from the first
    c' channels for each c' of `channel_list` in turn."""
    columns = [images]
    for ae in models:
        columns += [rec for _, rec in partial_reconstructions(ae, images, channel_list)]
    save_grid(torch.stack(columns, dim=1).flatten(0, 1), path, ncol=len(columns))


def psnr(x, y):
    """Per-image PSNR in dB on uint8-quantised images (official DC-AE evaluation), (B,) tensor."""
    mse = (to_uint8(x).double() - to_uint8(y).double()).pow(2).mean(dim=(1, 2, 3))
    return 10 * torch.log10(255.0**2 / mse.clamp_min(1e-10))
