r"""
Sample class-conditional images from a trained DiT (EMA weights) and decode them with its autoencoder.

    python sample.py --ckpt runs/dit/last.pt                        # a PNG grid beside the checkpoint
    python sample.py --ckpt runs/dit/last.pt --c-prime 8           # only the first c' = 8 channels
    torchrun --nproc_per_node=8 sample.py --ckpt runs/dit/last.pt --num-samples 50000 \
        --npz samples.npz --cfg-scale 1.5 --steps 100

The sampler follows the checkpoint's objective: DDIM for DDPM models, Heun (or Euler, --sampler) for
flow-matching models. Batch b of the samples draws its noise from a generator seeded by (--seed, b),
so the same seed and batch size give the same images, whatever the number of processes.
"""

import argparse
import os

import numpy as np
import torch
import torch.distributed as dist

import dcae15
from dcaelib import cli, distributed, files, pictures, sampling, tiling


def parse_labels(text, num_samples, num_classes):
    """--class-labels "0,3" -> [0, 3, 0, 3, ...] of length num_samples; None cycles all classes."""
    if text is None:
        return [i % num_classes for i in range(num_samples)]
    labels = cli.parse_list(text, int, "--class-labels")
    bad = [v for v in labels if not 0 <= v < num_classes]
    if bad or not labels:
        raise ValueError(f"--class-labels must lie in [0, {num_classes - 1}] for this model, "
                         f"got {bad or labels}")
    return [labels[i % len(labels)] for i in range(num_samples)]  # repeated to --num-samples


def main(args):
    # ------------------------------------------------------------------ check the input, before any work
    model, ae, ckpt = files.load_dit(args.ckpt, args.ae_ckpt)
    config = model.cfg
    labels = parse_labels(args.class_labels, args.num_samples, config.num_classes)
    c_prime = args.c_prime
    if c_prime is not None and not 1 <= c_prime <= config.in_channels:
        raise ValueError(f"--c-prime must be in [1, {config.in_channels}] for this model, "
                         f"got {c_prime}")
    if not 1 <= args.steps <= 1000:
        raise ValueError(f"--steps must be in [1, 1000], got {args.steps}")
    objective = dcae15.build_objective(ckpt["objective"])
    sampler = args.sampler or objective.methods[0]
    if sampler not in objective.methods:
        raise ValueError(f"--sampler {sampler} does not fit this {objective.name} checkpoint; "
                         f"choose {' or '.join(objective.methods)}")
    ae = tiling.tiled_above(ae, args.tile_size)  # a clear error for a size that does not fit the AE
    options = {"eta": args.eta} if sampler == "ddim" else {}
    if args.eta != 0 and sampler != "ddim":
        raise ValueError("--eta applies to the DDIM sampler of DDPM checkpoints only")
    default_out = os.path.join(os.path.dirname(os.path.abspath(args.ckpt)), f"sample_seed{args.seed}.png")
    out = args.out or default_out

    # ------------------------------------------------------------------ sample, each rank its batches
    rank, world, device = distributed.setup_distributed(args.device)
    model.to(device)
    ae.to(device)
    if args.compile:  # the DiT's forward, which every sampler step calls (twice with guidance)
        model.compile()
    size = config.input_size * ae.spatial_compression_ratio
    # Every rank writes its batches into one .npy file as they are made (rows in sample order), so
    # that no process holds them all (50,000 512-px samples are 39 GB). Under several nodes the
    # file must be on storage they share, like the checkpoint.
    rows = f"{args.npz or out}.rows.tmp.npy"
    if rank == 0:
        files.create_npy(rows, (args.num_samples, size, size, 3), np.uint8)
    if world > 1:
        dist.barrier()
    n_batches = (args.num_samples + args.batch_size - 1) // args.batch_size
    mine = list(range(rank, n_batches, world))  # batch b is sampled by rank b % world
    batches = sampling.sample_batches(model, ae, ckpt, args.num_samples, args.batch_size, args.seed,
                                      device, torch.tensor(labels), mine, steps=args.steps,
                                      method=sampler, cfg_scale=args.cfg_scale, c_prime=c_prime,
                                      **options)
    try:
        for b, _, x in cli.progress(batches, total=len(mine), desc="sampling", disable=rank != 0):
            files.write_npy_rows(rows, b * args.batch_size,
                                 pictures.to_uint8(x).permute(0, 2, 3, 1).cpu().numpy())  # (B, H, W, 3)
    except files.WriteError:
        if os.path.exists(rows):
            os.remove(rows)  # nothing half-written stays behind
        raise
    if world > 1:
        dist.barrier()  # every row written

    # ------------------------------------------------------------------ the grid and the .npz (rank 0)
    if rank == 0:
        try:
            with open(rows, "rb") as fh:
                shape, dtype, _ = files.npy_layout(fh)
                first = torch.from_numpy(files.read_npy_rows(fh, shape, dtype, 0, args.grid_max))
            grid = pictures.from_uint8(first.permute(0, 3, 1, 2))
            ncol = min(config.num_classes, 10) if args.class_labels is None else min(len(grid), 10)
            pictures.save_grid(grid, out, ncol=ncol)
            partial = f", first {c_prime} channels" if c_prime else ""
            eta = f", eta {args.eta}" if sampler == "ddim" else ""
            print(f"wrote {out} ({len(grid)} of {args.num_samples} samples, cfg {args.cfg_scale}, "
                  f"{args.steps} {sampler} steps{eta}{partial})")
            if args.npz:  # ADM-style: arr_0 = uint8 (N, H, W, 3), arr_1 = labels; copied in chunks
                label_rows = f"{args.npz}.labels.tmp.npy"
                try:
                    with files.atomic_write(label_rows, ".npy") as tmp:  # a full disk: one line
                        np.save(tmp, np.array(labels, dtype=np.int64))
                    files.npz_from_npy(args.npz, {"arr_0": rows, "arr_1": label_rows})
                finally:
                    if os.path.exists(label_rows):
                        os.remove(label_rows)
                print(f"wrote {args.npz}: arr_0 {tuple(shape)} uint8, arr_1 labels")
        finally:
            os.remove(rows)
    distributed.cleanup_distributed()


def build_parser():
    p = argparse.ArgumentParser(description="Sample images from a train_dit.py checkpoint.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--ckpt", required=True, help="train_dit.py checkpoint (its EMA weights are used)")
    p.add_argument("--ae-ckpt", default=None,
                   help="the autoencoder, if it moved since training (default: as stored)")
    p.add_argument("--num-samples", type=cli.positive_int, default=40, help="number of samples")
    p.add_argument("--class-labels", default=None,
                   help="comma-separated labels, repeated (default: cycle all classes)")
    p.add_argument("--cfg-scale", type=cli.finite, default=4.0,
                   help="classifier-free guidance scale (1 = none)")
    p.add_argument("--steps", type=cli.positive_int, default=50,
                   help="sampler steps (DDIM steps, or ODE intervals for flow: Heun makes 2 model "
                        "calls per interval)")
    p.add_argument("--sampler", default=None, choices=["ddim", "euler", "heun"],
                   help="ddim for DDPM checkpoints; euler or heun for flow-matching checkpoints "
                        "(default: ddim / heun, from the checkpoint's objective)")
    p.add_argument("--eta", type=cli.fraction, default=0.0,
                   help="DDIM eta: 0 deterministic, 1 ancestral (DDPM checkpoints only)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise")
    p.add_argument("--c-prime", type=cli.positive_int, default=None,
                   help="generate only the first c' latent channels (the rest zero): what the object "
                        "channels hold")
    p.add_argument("--out", default=None,
                   help="PNG grid path (default: sample_seed<SEED>.png beside the checkpoint)")
    p.add_argument("--grid-max", type=cli.count, default=100, help="at most this many samples go into the grid")
    p.add_argument("--npz", default=None, help="also write all samples as an ADM-style .npz (for FID)")
    p.add_argument("--batch-size", type=cli.positive_int, default=64, help="samples per batch (per process)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the DiT (worth it for many samples; the first batch compiles)")
    p.add_argument("--tile-size", type=cli.every("never"), default=1024,
                   help="decode images larger than this many pixels in tiles of this size, a "
                        "quarter tile overlapping (dcaelib/tiling.py; 0: never)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda")
    return p


if __name__ == "__main__":
    cli.command_line(main, build_parser())
