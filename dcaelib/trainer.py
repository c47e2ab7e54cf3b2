"""
trainer.py: what train_ae.py and train_dit.py share, written once.

- Start or resume a run: `--resume` continues `<out>/last.pt` with the run's own flags; without it a
  finished run is never overwritten.
- The processes and the random streams of a run (the same in both trainers, so both resume exactly).
- The training loop's bookkeeping: the learning rate, EMA, log lines averaged over an interval and the
  ranks, periodic saves, step_NNNNNNN.pt files, and the random-number state an exact resume restores.

What differs stays in each script: the models, `train_step(state, batch, c_prime, step, args)`, what
a checkpoint holds (files.py) and the pictures.
"""

import argparse
import json
import math
import os
import random
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from dcaelib import cli, data, distributed, files


# --------------------------------------------------------------------------------------------------
# Start or resume


def start_or_resume(args, kind, parser, free_args):
    """The checkpoint to continue (its flags adopted into `args`), or None for a new run.

    `free_args` may differ from the run's (e.g. --max-steps).
    """
    ckpt = checkpoint_to_resume(args, kind)
    if ckpt is not None:
        adopt_run_flags(args, ckpt["args"], parser, free_args)
    return ckpt


def checkpoint_to_resume(args, kind):
    """The checkpoint `<out>/last.pt` to continue (with --resume), or None for a new run.

    With --resume it must be a `kind` checkpoint (files.AE_KIND or files.DIT_KIND). Without
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
    ckpt = files.load_checkpoint(last_path)
    if not isinstance(ckpt, dict) or ckpt.get("kind") != kind:
        raise ValueError(f"--resume: {last_path} is not a {kind} checkpoint")
    return ckpt


def given_flags(parser, argv=None):
    """The flags (their dest names) that the command line sets, whatever their value: a flag given
    at its default value is given too."""
    unset = object()
    namespace = argparse.Namespace(**{a.dest: unset for a in parser._actions})
    parser.parse_known_args(sys.argv[1:] if argv is None else argv, namespace)  # sets only those given
    return {k for k, v in vars(namespace).items() if v is not unset}


def adopt_run_flags(args, run_args, parser, free_args):
    """Continue a run with its own flags: set each flag of `args` to the run's value, in place.

    A flag in `free_args` may change (e.g. --max-steps); a flag given on the command line with
    another value than the run's is an error (silently changing a run is worse); the run's own value
    of every other flag is kept, and one line says which of them differ from the defaults (the
    run's model, objective, ...), so that a resumed run never surprises.
    """
    given, defaults, kept = given_flags(parser), vars(parser.parse_args([])), []
    for key, value in run_args.items():
        if key in free_args or getattr(args, key) == value:
            continue
        if key in given:
            raise ValueError(f"--resume: --{key.replace('_', '-')} {getattr(args, key)} differs from "
                             f"the run's {value}; drop the flag to continue the run as it was")
        if value != defaults.get(key):
            kept.append(f"--{key.replace('_', '-')} {value}")
        setattr(args, key, value)
    if kept:
        print(f"--resume: continuing with the run's own {', '.join(kept)}")


class RunLog:
    """Rank 0's record of a run: log lines to stdout (above the tqdm bar) and to <out>/log.txt, the
    same numbers as one JSON object a line in <out>/metrics.jsonl (kept across --resume), and, with
    --tensorboard, as TensorBoard scalars.

    `accumulate` adds each step's terms (as tensors: no GPU sync per step); `step_line` writes the
    mean of each term over the applied steps since the last line and over the ranks, then starts
    anew. `record` adds other figures (validation) to metrics.jsonl.
    """

    def __init__(self, out, master, start_step=0, tensorboard=False):
        self.master, self.tensorboard, self.out = master, None, out
        self.sums, self.count, self.skipped, self.t0, self.items = {}, 0, 0, time.time(), 0
        if not master:
            return
        os.makedirs(out, exist_ok=True)
        self.log_path = os.path.join(out, "log.txt")
        self.metrics_path = os.path.join(out, "metrics.jsonl")
        keep_metrics_until(self.metrics_path, start_step)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self.write("--tensorboard: the tensorboard package is not installed (pip install "
                           "tensorboard); the scalars go to metrics.jsonl only")
            else:
                self.tensorboard = SummaryWriter(os.path.join(out, "tensorboard"))

    def write(self, text, echo=True):
        if self.master:
            if echo:
                tqdm.write(text, file=sys.stdout)
            self.append(self.log_path, text + "\n")

    def append(self, path, text):
        """Append `text` to the run's log file `path` (log.txt, metrics.jsonl); a full disk ends the
        run with one line, as a checkpoint's does."""
        try:
            with open(path, "a") as fh:
                fh.write(text)
        except OSError as err:
            raise cli.StopRun(f"{files.write_failure(path, err)}; {last_intact(self.out)}") from None

    def record(self, step, values):
        """One line of metrics.jsonl (and TensorBoard scalars for the numbers among `values`)."""
        if not self.master:
            return
        # strict JSON has no NaN or Infinity: a non-finite number is written as null
        values = {k: None if isinstance(v, float) and not math.isfinite(v) else v
                  for k, v in values.items()}
        line = {"step": step, "time": round(time.time(), 3), **values}
        self.append(self.metrics_path, json.dumps(line) + "\n")
        if self.tensorboard is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self.tensorboard.add_scalar(key, value, step)
            self.tensorboard.flush()

    def accumulate(self, terms, items, applied=True):
        self.items += items
        if not applied:  # its terms are not finite: they would make the interval's means NaN
            self.skipped += 1
            return
        for k, v in terms.items():
            self.sums[k] = self.sums.get(k, 0.0) + v.detach()
        self.count += 1

    def averages(self):
        """(means of the terms, items per second, steps skipped) since the last call."""
        means = {k: distributed.all_reduce_mean(v.item() / self.count) for k, v in self.sums.items()}
        rate = self.items / max(time.time() - self.t0, 1e-9)
        skipped = self.skipped
        self.sums, self.count, self.skipped, self.t0, self.items = {}, 0, 0, time.time(), 0
        return means, rate, skipped

    def step_line(self, step, c_prime, grad_norm, lr, unit):
        """The log line of an interval (over its steps and the ranks, not one noisy batch)."""
        values, rate, skipped = self.averages()
        grad = grad_norm.item()
        self.write(f"step {step:6d} | " + " | ".join(f"{k} {v:.4f}" for k, v in values.items())
                   + f" | c' {'-' if c_prime is None else c_prime} | grad {grad:.3f} | lr {lr:.2e}"
                   + f" | {rate:.1f} {unit}/s" + (f" | skipped {skipped}" if skipped else ""))
        c_prime = c_prime if c_prime is None or isinstance(c_prime, int) else list(c_prime)
        self.record(step, {**values, "c_prime": c_prime, "grad_norm": grad, "lr": lr,
                           f"{unit}_per_s": rate, "skipped": skipped})

    def close(self):
        if self.master and self.tensorboard is not None:
            self.tensorboard.close()


def keep_metrics_until(path, step):
    """A resumed run continues metrics.jsonl from its checkpoint's step: lines of later steps (made
    after the last save by the run that was stopped) are dropped; a new run starts it empty."""
    lines = []
    if step > 0 and os.path.isfile(path):
        with open(path) as fh:
            lines = [line for line in fh if line.strip() and json.loads(line)["step"] <= step]
    with files.atomic_write(path) as tmp, open(tmp, "w") as fh:
        fh.writelines(lines)


# Flags of run_parser that change how a run computes (its memory, speed, logging, when it gives up),
# not what it computes: runs that differ only in them are the same run.
HOW_ARGS = {"max_skipped_steps", "tensorboard", "grad_checkpointing", "compile", "compile_backend",
            "fsdp"}  # train_dit.py's
# The flags of run_parser that a resumed run may set anew.
RUN_FREE_ARGS = {"resume", "max_steps", "log_every", "sample_every", "save_every", "device",
                 "skip_bad_images"} | HOW_ARGS


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
    p.add_argument("--batch-size", type=cli.positive_int, default=batch_size,
                   help="global batch size (split over processes)")
    p.add_argument("--max-steps", type=cli.positive_int, default=max_steps, help="training steps")
    p.add_argument("--warmup-steps", type=cli.count, default=warmup_steps,
                   help="linear learning-rate warmup")
    p.add_argument("--weight-decay", type=cli.nonnegative, default=0.0, help="AdamW weight decay (official: 0)")
    p.add_argument("--grad-clip", type=cli.nonnegative, default=1.0, help="clip the gradient norm to this (0: no clipping)")
    p.add_argument("--ema-decay", type=cli.fraction, default=0.995,
                   help="EMA decay; short classroom runs need a short average (official runs: 0.9999)")
    p.add_argument("--ema-warmup", type=cli.count, default=200,
                   help="EMA warmup: decay * (1 - exp(-step / warmup))")
    p.add_argument("--log-every", type=cli.positive_int, default=log_every, help="steps between log lines")
    p.add_argument("--sample-every", type=cli.positive_int, default=sample_every,
                   help=f"steps between last.pt + {picture} updates")
    p.add_argument("--save-every", type=cli.every("never"), default=0,
                   help="also keep step_NNNNNNN.pt every N steps (0: never)")
    p.add_argument("--data-seed", type=int, default=0,
                   help="seed of the shapes images themselves (the same set for every --seed)")
    p.add_argument("--max-skipped-steps", type=cli.positive_int, default=10,
                   help="stop the run after this many steps in a row whose loss or gradient norm is "
                        "not finite (each is skipped: no weight changes)")
    p.add_argument("--grad-checkpointing", action="store_true",
                   help="recompute each block's activations in backward instead of keeping them: "
                        "less memory (a larger batch fits), one more forward pass a step")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the trained model's forward (in place: checkpoints keep plain "
                        "keys); the first steps take longer while it compiles")
    p.add_argument("--compile-backend", default="inductor",
                   help="torch.compile backend: inductor (fast code), or aot_eager / eager to tell "
                        "a compiler problem from a model problem")
    p.add_argument("--tensorboard", action="store_true",
                   help="also write the logged scalars for TensorBoard (<out>/tensorboard; needs the "
                        "tensorboard package)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda")
    return p


# --------------------------------------------------------------------------------------------------
# EMA, learning rate, random-number state (what an exact resume restores)


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


# --------------------------------------------------------------------------------------------------
# Processes, random streams, restoring the training state


def setup_processes(args):
    """(rank, world, device); the global batch must split evenly over the processes."""
    rank, world, device = distributed.setup_distributed(args.device)
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
    restore_rng_states(ckpt["rng"], rank, {"channel": channel_gen})
    return ckpt["step"]


def local(t):
    """A plain tensor: an FSDP DTensor's full value (a replicated gradient norm), else t itself."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def all_finite(*tensors):
    """True if every value of every tensor is finite, on every rank (one device sync)."""
    ok = torch.stack([torch.isfinite(local(t).detach()).all() for t in tensors]).all().double()
    return distributed.all_reduce_mean(ok.item()) == 1.0


def optimizer_step(opt, loss, params, max_norm=float("inf")):
    """Backward, clip the gradient norm of `params` to `max_norm`, step `opt`. A step whose loss or
    gradient norm is not finite (on any rank) is not applied: no weight and no optimiser state
    changes. Returns (the gradient norm before clipping, whether the step was applied).

    NOTE: this costs one device sync a step. It is worth it: one non-finite gradient applied makes
    every weight NaN for good (Adam's moments keep it), and checking only at the log line would let
    it through.
    """
    opt.zero_grad(set_to_none=True)
    loss.backward()
    params = list(params)
    grad_norm = local(torch.nn.utils.clip_grad_norm_(params, max_norm))
    if not all_finite(loss, grad_norm):
        opt.zero_grad(set_to_none=True)
        return grad_norm, False
    opt.step()
    return grad_norm, True


# NOTE: the CUDA habits that peers turn on (fused AdamW, TF32 matmuls for the fp32 parts,
# channels_last for the AE's convolutions) stay off until a GPU measurement shows that each helps:
# TF32 also changes results, which the exact-resume and equivalence tests pin down.
def model_step(state, loss, params, step, args):
    """`optimizer_step` for the trained model, clipped to --grad-clip, then its EMA update (with the
    official warmup) if the step was applied. Returns (gradient norm, applied)."""
    grad_norm, applied = optimizer_step(state.opt, loss, params, args.grad_clip or float("inf"))
    if applied:
        decay = ema_decay_at(step + 1, args.ema_decay, args.ema_warmup)
        update_ema(state.ema, state.model, decay)
    return grad_norm, applied


# --------------------------------------------------------------------------------------------------
# FSDP (train_dit.py --fsdp): the weights, gradients and optimiser state sharded over the processes;
# checkpoints hold them whole, in the same format as without FSDP.

def fully_shard_blocks(model, block_types, device):
    """Shard `model` over all processes with torch's FSDP2 `fully_shard`: each block (a module of
    `block_types`) is one unit, gathered just before it runs and freed after; the rest is the root
    unit. In place; the parameters become DTensors (create the optimiser afterwards)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    for block in [m for m in model.modules() if isinstance(m, block_types)]:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _param_names(model, opt):
    """The names of the optimiser's parameters, in the order its state dict numbers them."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    return [name_of[id(p)] for group in opt.param_groups for p in group["params"]]


def whole_state_dicts(model, ema, opt, fsdp):
    """{"model", "ema", "opt"} state dicts, whole. Under FSDP the shards are gathered (every rank
    must call this; rank 0 gets the tensors, on the CPU) and the optimiser's state is numbered as
    torch numbers it without FSDP, so a checkpoint does not say how its run was trained."""
    if not fsdp:
        return {"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict()}
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)
    whole = StateDictOptions(full_state_dict=True, cpu_offload=True)
    osd = get_optimizer_state_dict(model, opt, options=whole)
    index = {name: i for i, name in enumerate(_param_names(model, opt))}
    osd = {"state": {index[n]: s for n, s in osd.get("state", {}).items()},
           "param_groups": [{**g, "params": [index[n] for n in g["params"]]}
                            for g in osd.get("param_groups", [])]}
    return {"model": get_model_state_dict(model, options=whole),
            "ema": get_model_state_dict(ema, options=whole), "opt": osd}


def load_optimizer_state(model, opt, osd, fsdp):
    """opt.load_state_dict(osd) for a whole state dict, also into an FSDP-sharded optimiser."""
    if not fsdp:
        return opt.load_state_dict(osd)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    names = _param_names(model, opt)
    osd = {"state": {names[i]: s for i, s in osd["state"].items()},
           "param_groups": [{**g, "params": [names[i] for i in g["params"]]}
                            for g in osd["param_groups"]]}
    set_optimizer_state_dict(model, opt, osd, options=StateDictOptions(full_state_dict=True))


def finish(log):
    """The end of a run that went through on every rank."""
    log.close()
    distributed.cleanup_distributed()


def last_intact(out):
    """Words naming the intact last.pt of the run folder `out` (the atomic writes never leave a
    broken one)."""
    path = os.path.join(out, "last.pt")
    if not os.path.isfile(path):
        return "no checkpoint was written yet"
    return f"the last intact checkpoint is {path} (step {files.load_checkpoint(path)['step']})"


def step_file_due(args, step, final=False):
    """Whether this save also keeps a step_NNNNNNN.pt (every --save-every steps, and at the end)."""
    return bool(args.save_every) and (step % args.save_every == 0 or final)


def write_checkpoint(ckpt, args, step, final):
    """last.pt, and step_NNNNNNN.pt every --save-every steps (and at the end). Weights that are not
    finite are never written, and a write that fails (a full disk, a quota) ends the run with one
    line; either way the previous last.pt stays intact."""
    weights = [v for part in ("model", "ema") for v in ckpt[part].values() if v.is_floating_point()]
    if not all(torch.isfinite(v).all() for v in weights):
        raise cli.StopRun(f"step {step}: the weights are not finite, so no checkpoint was "
                             f"written; {last_intact(args.out)}")
    paths = [os.path.join(args.out, "last.pt")]
    if step_file_due(args, step, final):
        paths.append(os.path.join(args.out, f"step_{step:07d}.pt"))
    for path in paths:
        try:
            files.save_checkpoint(ckpt, path)
        except files.WriteError as err:
            raise cli.StopRun(f"step {step}: {err}; {last_intact(args.out)}") from None


# --------------------------------------------------------------------------------------------------
# The training loop


def train_loop(state, args, step, world, log, batches, draw_c_prime, train_step, save, unit):
    """Train from `step` to --max-steps: each step takes a batch, draws c', sets the learning rate
    and calls `train_step(state, batch, c_prime, step, args)` -> (loss terms, gradient norm,
    applied). Every --log-every steps one log line (and its record in metrics.jsonl); every
    --sample-every steps (and every --save-every) `save(step, picture)`; the final save is the
    caller's. Steps that were not applied (a non-finite loss or gradient) are counted in the log
    line; --max-skipped-steps of them in a row stop the run (cli.StopRun). Returns the last step."""
    pbar = cli.progress(total=args.max_steps, initial=step, disable=not log.master)
    skipped_in_a_row = 0
    while step < args.max_steps:
        batch = next(batches)
        c_prime = draw_c_prime()
        lr = warmup_lr(state.opt, args.lr, step, args.warmup_steps)
        terms, grad_norm, applied = train_step(state, batch, c_prime, step, args)
        step += 1
        pbar.update(1)
        skipped_in_a_row = 0 if applied else skipped_in_a_row + 1
        log.accumulate(terms, batch[0].shape[0] * world, applied)
        if skipped_in_a_row >= args.max_skipped_steps:
            message = (f"step {step}: {skipped_in_a_row} steps in a row had a non-finite loss or "
                       f"gradient norm (the run diverged) and were not applied; "
                       f"{last_intact(args.out)}. Lower --lr or --grad-clip and continue with "
                       f"--resume, or start again")
            log.write(message, echo=False)  # the terminal gets it once, as the script's error
            raise cli.StopRun(message)
        if step % args.log_every == 0 or step == args.max_steps:
            log.step_line(step, c_prime, grad_norm, lr, unit)
        keep = step_file_due(args, step)
        if (step % args.sample_every == 0 or keep) and step < args.max_steps:  # the last: the caller's
            save(step, picture=step % args.sample_every == 0)
    pbar.close()
    return step
