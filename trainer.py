"""
trainer.py: what train_ae.py and train_dit.py share, written once.

- Start or resume a run: `--resume` continues `<out>/last.pt` with the run's own flags; without it a
  finished run is never overwritten.
- The processes and the random streams of a run (the same in both trainers, so both resume exactly).
- The training loop's bookkeeping: the learning rate, log lines averaged over an interval and the
  ranks, periodic saves, step_NNNNNNN.pt files.

What differs stays in each script: the models, `train_step(state, batch, c_prime, step, args)`, what
a checkpoint holds (checkpoint.py) and the pictures.
"""

import argparse
import os
import sys
import time

import torch
from tqdm import tqdm

import checkpoint
import common
import data

# --------------------------------------------------------------------------------------------------
# Start or resume


def start_or_resume(args, kind, parser, free_args, old_defaults=None):
    """The checkpoint to continue (its flags adopted into `args`), or None for a new run.

    `free_args` may differ from the run's (e.g. --max-steps); `old_defaults` fills flags that
    checkpoints written before the flag existed do not have.
    """
    ckpt = checkpoint_to_resume(args, kind)
    if ckpt is not None:
        run_args = {**(old_defaults or {}), **ckpt["args"], "data_seed": data.data_seed(ckpt["args"])}
        adopt_run_flags(args, run_args, parser, free_args)
    return ckpt


def checkpoint_to_resume(args, kind):
    """The checkpoint `<out>/last.pt` to continue (with --resume), or None for a new run.

    With --resume it must be a `kind` checkpoint (checkpoint.AE_KIND or checkpoint.DIT_KIND). Without
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
    ckpt = checkpoint.load_checkpoint(last_path)
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


class RunLog:
    """Rank 0's log lines, to stdout (above the tqdm bar) and to <out>/log.txt, and their averages.

    `accumulate` adds each step's terms (as tensors: no GPU sync per step); `averages` returns the
    mean of each term over the steps since the last call and over the ranks, then starts anew.
    """

    def __init__(self, out, master):
        self.master = master
        if master:
            os.makedirs(out, exist_ok=True)
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
        means = {k: common.all_reduce_mean(v.item() / self.count) for k, v in self.sums.items()}
        rate = self.items / max(time.time() - self.t0, 1e-9)
        self.sums, self.count, self.t0, self.items = {}, 0, time.time(), 0
        return means, rate

    def close(self):
        if self.file:
            self.file.close()


def run_parser(description, out, batch_size, max_steps, warmup_steps, log_every, sample_every,
               picture):
    """An argument parser with the flags that both trainers take (the data, the run folder, the
    step counts, the optimiser's common settings, EMA), at each trainer's defaults."""
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    data.add_dataset_flags(p)
    p.add_argument("--out", default=out, help=f"run folder: last.pt, log.txt, {picture}")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out exactly where last.pt left it")
    p.add_argument("--batch-size", type=int, default=batch_size,
                   help="global batch size (split over processes)")
    p.add_argument("--max-steps", type=int, default=max_steps, help="training steps")
    p.add_argument("--warmup-steps", type=int, default=warmup_steps,
                   help="linear learning-rate warmup")
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (official: 0)")
    p.add_argument("--grad-clip", type=float, default=1.0, help="clip the gradient norm to this")
    p.add_argument("--ema-decay", type=float, default=0.995,
                   help="EMA decay; short classroom runs need a short average (official runs: 0.9999)")
    p.add_argument("--ema-warmup", type=int, default=200,
                   help="EMA warmup: decay * (1 - exp(-step / warmup))")
    p.add_argument("--log-every", type=int, default=log_every, help="steps between log lines")
    p.add_argument("--sample-every", type=int, default=sample_every,
                   help=f"steps between last.pt + {picture} updates")
    p.add_argument("--save-every", type=int, default=0,
                   help="also keep step_NNNNNNN.pt every N steps (0: never)")
    p.add_argument("--data-seed", type=int, default=0,
                   help="seed of the shapes images themselves (the same set for every --seed)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda")
    return p


# --------------------------------------------------------------------------------------------------
# Processes, random streams, restoring the training state


def setup_processes(args):
    """(rank, world, device) after the checks both trainers make of their step flags."""
    common.check_positive(args, ("batch_size", "max_steps", "log_every", "sample_every"))
    rank, world, device = common.setup_distributed(args.device)
    if args.batch_size % world:
        raise ValueError(f"--batch-size {args.batch_size} (global) must be divisible by the {world} "
                         f"processes")
    return rank, world, device


def random_streams(args, rank):
    """The generator that draws c', and the per-rank torch stream for everything else random (the
    noise, t, label dropout), both seeded per rank as the official trainers do (ranks differ)."""
    channel_gen = torch.Generator().manual_seed(args.seed * 1000 + rank)
    torch.manual_seed(args.seed * 1000 + rank)
    return channel_gen


def restore(state, ckpt, names, rank, channel_gen):
    """Load the modules and optimisers `names` of `state` from a checkpoint and continue its random
    streams; returns the step to continue from (0 for a new run, ckpt None)."""
    if ckpt is None:
        return 0
    for name in names:
        getattr(state, name).load_state_dict(ckpt[name])
    common.restore_rng_states(ckpt["rng"], rank, {"channel": channel_gen})
    return ckpt["step"]


def optimizer_step(state, loss, params, step, args):
    """Backward, clip the gradient norm of `params` to --grad-clip, AdamW step, then the EMA update
    (with the official warmup); returns the gradient norm before clipping."""
    state.opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, args.grad_clip)
    state.opt.step()
    decay = common.ema_decay_at(step + 1, args.ema_decay, args.ema_warmup)
    common.update_ema(state.ema, state.model, decay)
    return grad_norm


def finish(log):
    """The end of a run that went through on every rank."""
    log.close()
    common.cleanup_distributed()


def write_checkpoint(ckpt, args, step, final):
    """last.pt, and step_NNNNNNN.pt every --save-every steps (and at the end)."""
    checkpoint.save_checkpoint(ckpt, os.path.join(args.out, "last.pt"))
    if args.save_every and (step % args.save_every == 0 or final):
        checkpoint.save_checkpoint(ckpt, os.path.join(args.out, f"step_{step:07d}.pt"))


# --------------------------------------------------------------------------------------------------
# The training loop


def train_loop(state, args, step, world, log, batches, draw_c_prime, train_step, save, unit):
    """Train from `step` to --max-steps: each step takes a batch, draws c', sets the learning rate
    and calls `train_step(state, batch, c_prime, step, args)` -> (loss terms, gradient norm). Every
    --log-every steps one log line; every --sample-every steps (and every --save-every) `save(step,
    picture)`; the final save is the caller's. Returns the last step."""
    pbar = common.progress(total=args.max_steps, initial=step, disable=not log.master)
    while step < args.max_steps:
        batch = next(batches)
        c_prime = draw_c_prime()
        lr = common.warmup_lr(state.opt, args.lr, step, args.warmup_steps)
        terms, grad_norm = train_step(state, batch, c_prime, step, args)
        step += 1
        pbar.update(1)
        log.accumulate(terms, batch[0].shape[0] * world)
        if step % args.log_every == 0 or step == args.max_steps:
            values, rate = log.averages()  # over the interval and the ranks, not one noisy batch
            log.write(f"step {step:6d} | " + " | ".join(f"{k} {v:.4f}" for k, v in values.items())
                      + f" | c' {'-' if c_prime is None else c_prime}"
                      + f" | grad {grad_norm.item():.3f} | lr {lr:.2e} | {rate:.1f} {unit}/s")
        keep = args.save_every and step % args.save_every == 0  # a step_NNNNNNN.pt is due
        if (step % args.sample_every == 0 or keep) and step < args.max_steps:  # the last: the caller's
            save(step, picture=step % args.sample_every == 0)
    pbar.close()
    return step
