"""
Evaluate autoencoders and generators: rFID, PSNR, SSIM, LPIPS, the partial-channel sweep, and FID.

    # reconstruction metrics for each c' (the paper's partial-channel comparison), with a baseline
    python evaluate.py recon --ae-ckpt runs/ae/last.pt --baseline-ckpt runs/ae-plain/last.pt
    # reference statistics of a dataset (pytorch-fid .npz: mu, sigma)
    python evaluate.py ref --data imagefolder --data-path /data/imagenet/train --image-size 256 --out ref.npz
    # FID of samples (an .npz from sample.py, an image folder, or a DiT sampled on the fly)
    python evaluate.py fid --samples samples.npz --ref ref.npz
    # how often a DiT's samples show the requested class, as a small CNN (the judge, trained once
    # per dataset and cached under runs/judges) sees them
    python evaluate.py classes --ckpt runs/dit/last.pt
    # quality against training step of DiT runs kept with --save-every, and the speed-up factor
    python evaluate.py curve --run plain=runs/dit-plain --run augmented=runs/dit

FID is pytorch-fid compatible (dcaelib/fid.py: torchvision's Inception v3 with the TF-graph pooling changes
and the FID weights pt_inception-2015-12-05-6726825d.pth; uint8 images, bilinear resize to 299, 2048-d pool
features; statistics accumulated in float64 as running sums, mergeable across ranks).
Run `python evaluate.py SUBCOMMAND --help`.
"""

# The command line. What it measures lives beside it: metrics.py (PSNR, SSIM, sharpness, LPIPS and rFID
# for each c'), fid.py (the Inception, the Fréchet distance), judge.py (the class judge of `classes`)
# and curves.py (the points, speed-ups, CSV and plot of `curve`). Each cmd_* checks its flags, calls
# them and prints.

import argparse
import math
import os

import numpy as np
import torch
from PIL import Image

import dcae15
from dcaelib.fid import (FID_WEIGHTS_FILE, FeatureStats, build_inception, find_inception_weights,
                         frechet_distance, load_stats)
from dcaelib.judge import (dataset_judge, judge_accuracy, judge_samples, judge_stats, reconstructions,
                           validation_images)
from dcaelib.metrics import (TAIL_WAYS, build_lpips_alex, dataset_stats, maybe_inception, num_first,
                             recon_metrics, tail_metrics)
from dcaelib import cli, curves, data, distributed, files, pictures, sampling, tiling


def load_ae(path, ae_config):
    """An autoencoder for evaluation: ours (EMA) or official (needs --ae-config); no latent scale."""
    return files.load_autoencoder(path, ae_config, latent_scale=1.0)


# ==================================================================================================
# recon: reconstruction metrics for each c'
# ==================================================================================================


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
    # codes images above --tile-size in tiles (a clear error for a size that does not fit an AE)
    ae = tiling.tiled_above(ae, args.tile_size)
    baseline = tiling.tiled_above(baseline, args.tile_size) if baseline is not None else None
    C = ae.latent_channels
    channel_list = cli.parse_c_prime_choices(args.c_primes, C, "--c-primes",
                                       dcae15.default_c_prime_choices(C))
    if baseline is not None and baseline.latent_channels != C:
        raise ValueError(f"--baseline-ckpt has {baseline.latent_channels} latent channels, "
                         f"--ae-ckpt {C}")
    if not 0 <= args.tail_from < C:
        raise ValueError(f"--tail-from {args.tail_from}: the channels after the first K, with K below "
                         f"the {C} latent channels")
    if args.tail_from and world > 1:
        raise ValueError("--tail-from runs in one process; start evaluate.py recon with python")
    check_folder("--grid", args.grid)
    dataset = data.build_dataset(args.data, args.split, args.image_size, args.data_path, args.seed,
                                 skip_bad=args.skip_bad_images)
    ae.cfg.check_image_size(args.image_size, "--image-size")
    inception = maybe_inception(args.fid, args.inception_weights, device, "rFID")
    ref_stats = None
    if inception is not None:  # rFID compares reconstructions with the originals' statistics
        ref_stats = dataset_stats(dataset, args.num_images, args.batch_size, inception, device, rank,
                                  world, "reference features").mu_sigma()
    lpips_net = build_lpips_alex(args.lpips)
    if lpips_net is not None:
        lpips_net.to(device)
    columns = {}
    for name, model in (("model", ae), ("baseline", baseline)):
        if model is not None:
            columns[name] = recon_metrics(model.to(device), dataset, channel_list, args.num_images,
                                          args.batch_size, device, inception, ref_stats, lpips_net,
                                          rank, world, name)
    if rank == 0:
        n = num_first(args.num_images, dataset)
        tiles = ""
        if args.tile_size and args.image_size > args.tile_size:
            tiles = f", coded in {args.tile_size} px tiles overlapping by {ae.overlap} px"
        print(recon_table(columns, channel_list, f"reconstruction from the first c' latent channels, "
                                                 f"{n} {args.data} {args.split} images at "
                                                 f"{args.image_size}px{tiles}"))
        if args.grid:
            images = torch.stack([dataset[i][0] for i in range(min(8, n))]).to(device)
            models = [m for m in (ae, baseline) if m is not None]
            pictures.save_recon_grid(args.grid, images, models, channel_list)
            print(f"wrote {args.grid}: rows = images; columns = the original, then "
                  + ", then ".join(f"{name} at c' = {','.join(map(str, channel_list))}"
                                   for name in columns))
        results = {name: {str(c): row for c, row in col.items()} for name, col in columns.items()}
        out = {"command": "recon", "ae_ckpt": args.ae_ckpt, "baseline_ckpt": args.baseline_ckpt,
               "num_images": n, "tile_size": args.tile_size, "results": results}
        if args.tail_from:
            out["tail"] = tail_table(args, {"model": ae, "baseline": baseline}, dataset, lpips_net, n, device)
        return out


def tail_table(args, models, dataset, lpips_net, n, device):
    """recon --tail-from K: the table and results of `metrics.tail_metrics` for each model."""
    k = args.tail_from
    tail = {name: tail_metrics(m, dataset, k, args.num_images, args.batch_size, device, lpips_net,
                                       args.seed)
            for name, m in models.items() if m is not None}
    print(f"the full latent with channels {k + 1}-{next(iter(models.values())).latent_channels} kept, "
          f"zeroed, replaced by their mean over the {n} images, or shuffled between them:")
    keys = list(next(iter(next(iter(tail.values())).values())))
    print(f"{'':>10} | " + " | ".join(f"{name} {key:>6}" for name in tail for key in keys))
    for way in TAIL_WAYS:
        print(f"{way:>10} | " + " | ".join(f"{tail[name][way][key]:>{len(name) + 7}.4f}"
                                           for name in tail for key in keys))
    return tail


# ==================================================================================================
# ref and fid: FID statistics of a dataset, FID of samples
# ==================================================================================================


def cmd_ref(args, rank, world, device):
    dataset = data.build_dataset(args.data, args.split, args.image_size, args.data_path, args.seed,
                                 skip_bad=args.skip_bad_images)
    inception = build_inception(find_inception_weights(args.inception_weights), device)
    stats = dataset_stats(dataset, args.num_images, args.batch_size, inception, device, rank, world,
                          "reference features")
    if rank == 0:
        mu, sigma = stats.mu_sigma()
        files.save_npz(args.out, mu=mu, sigma=sigma)  # pytorch-fid format
        print(f"wrote {args.out}: statistics of {stats.n} images")
        return {"command": "ref", "out": args.out, "num_images": stats.n}


def sample_batches(args, rank, world, device):
    """uint8 (B, 3, H, W) batches of the samples: an .npz (arr_0 NHWC), an image folder, or a DiT
    checkpoint sampled on the fly."""
    if args.samples and args.samples.endswith(".npz"):  # read batch by batch, never all at once
        for arr in files.npz_batches(args.samples, "arr_0", args.batch_size, rank, world):
            if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
                raise ValueError(f"{args.samples}: arr_0 must be uint8 (N, H, W, 3), got "
                                 f"{arr.dtype} {arr.shape[1:]} per sample")
            yield torch.from_numpy(arr.copy()).permute(0, 3, 1, 2)  # frombuffer is read-only
    elif args.samples:
        if not os.path.isdir(args.samples):
            raise FileNotFoundError(f"--samples {args.samples} is neither an .npz nor a folder")
        extensions = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
        paths = sorted(os.path.join(dp, f) for dp, _, fs in os.walk(args.samples) for f in fs
                       if f.lower().endswith(extensions))
        if not paths:
            raise FileNotFoundError(f"no images in {args.samples}")
        for start in list(range(0, len(paths), args.batch_size))[rank::world]:
            chunk = paths[start : start + args.batch_size]
            ims = [np.array(Image.open(f).convert("RGB")) for f in chunk]
            yield torch.from_numpy(np.stack(ims)).permute(0, 3, 1, 2)
    else:
        model, ae, ckpt = files.load_dit(args.ckpt)
        model.to(device)
        ae.to(device)
        n_batches = math.ceil(args.num_samples / args.batch_size)
        for _, _, images in sampling.sample_batches(  # random labels, as the official evaluation
                model, ae, ckpt, args.num_samples, args.batch_size, args.seed, device,
                batches=list(range(n_batches))[rank::world], steps=args.steps,
                cfg_scale=args.cfg_scale):
            yield pictures.to_uint8(images)


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
        ref = dataset_stats(dataset, args.num_images, args.batch_size, inception, device, rank,
                            world, "reference features").mu_sigma()
    stats = FeatureStats()
    batches = sample_batches(args, rank, world, device)
    for x in cli.progress(batches, desc="sample features", disable=rank != 0):
        stats.add(inception(x.to(device)))
    stats.all_reduce()
    fid = frechet_distance(*stats.mu_sigma(), *ref)
    if rank == 0:
        print(f"FID {fid:.4f} ({stats.n} samples, pytorch-fid compatible Inception)")
        return {"command": "fid", "fid": fid, "num_samples": stats.n,
                "ref": args.ref or args.ref_data}


# ==================================================================================================
# classes and curve: the class judge (judge.py) and the convergence curves (curves.py)
# ==================================================================================================


def check_judge_flags(args, world):
    if world > 1:
        raise ValueError(f"evaluate.py {args.command} runs in one process; start it with python, "
                         f"not torchrun")
    if args.num_samples < 2:  # a Fréchet distance needs two samples (the types check the rest)
        raise ValueError(f"--num-samples must be at least 2, got {args.num_samples}")


def cmd_classes(args, rank, world, device):
    """How often a DiT's samples show the requested class, and how far their judge features are from
    the validation images' (a Fréchet distance in the judge's feature space; not FID)."""
    check_judge_flags(args, world)
    cfg_scales = cli.parse_list(args.cfg_scales, float, "--cfg-scales")
    model, ae, ckpt = files.load_dit(args.ckpt, args.ae_ckpt)
    model.to(device)
    ae.to(device)
    run = ckpt["args"]  # the DiT's own data: its classes are the ones to judge
    num_classes = model.cfg.num_classes
    judge, judge_path, _ = dataset_judge(run, num_classes, args.num_images, args.judge_steps,
                                         args.judge_cache, args.batch_size, device)
    xv, yv = validation_images(run, args.num_val, args.batch_size)
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


def cmd_curve(args, rank, world, device):
    """Quality against training step for one or more DiT runs (their step_*.pt and last.pt), the
    speed-up of each over the baseline, as a table, a CSV and a plot."""
    cfg_scales = cli.parse_list(args.cfg_scales, float, "--cfg-scales")
    if args.from_csv:
        rows, metrics = curves.read_curve_csv(args.from_csv)
        rows = curves.rows_within_budget(rows, args.max_step, args.from_csv)
    else:
        check_judge_flags(args, world)
        if not args.run:
            raise ValueError("pass --run LABEL=DIR[,DIR...] (one or more), or --from-csv FILE")
        runs = curves.parse_runs(args.run)
        meta = {label: [(f, *curves.run_points(f, args.max_step)) for f in folders]
                for label, folders in runs.items()}
        curves.check_runs(meta)
        metrics = [curves.metric_name(k, s) for s in cfg_scales for k in ("share", "fd")]
    labels = list(dict.fromkeys(r["label"] for r in rows)) if args.from_csv else list(runs)
    joined = None  # the comparison these runs join (--add-to), read once
    if not args.from_csv and args.add_to and os.path.isfile(args.add_to):
        joined = curves.read_curve_csv(args.add_to)
        labels = list(dict.fromkeys([*(r["label"] for r in joined[0]), *labels]))
    baseline = args.baseline or labels[0]  # its baseline may be there only (a new arm, added alone)
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
        rows, result["autoencoders"] = curves.evaluate_runs(args, meta, cfg_scales, device)
        metrics = [m for m in rows[0]  # with fid_g* when FID was on
                   if m not in curves.CURVE_KEYS + curves.PROVENANCE_KEYS]
        if joined is not None:
            old, old_metrics = joined
            if old_metrics != metrics:
                raise ValueError(f"--add-to {args.add_to} has the columns {old_metrics}, these runs "
                                 f"{metrics}: measure them with the same --cfg-scales and --fid")
            rows = curves.join_rows(old, rows, args.add_to)
        curves.write_curve_csv(rows, args.csv)
    summary = curves.summarise(rows, metrics)
    speed = curves.speedups(summary, baseline, args.speedup_metric)
    print(curves.curve_text(summary, metrics, speed, baseline, args.speedup_metric))
    if not args.from_csv:
        print(f"wrote {args.csv}")
    if curves.plot_curves(summary, metrics, args.plot):
        print(f"wrote {args.plot}")
    result.update(rows=rows, speedups=speed, baseline=baseline, metric=args.speedup_metric)
    return result


# ==================================================================================================
# The command line
# ==================================================================================================


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
        q.add_argument("--image-size", type=cli.positive_int, default=64, help="resolution (ADM centre crop)")
        q.add_argument("--num-images", type=cli.every("all"), default=1000,
                       help="evaluate the first N images (0: all)")
        q.add_argument("--seed", type=int, default=0, help="seed of the shapes dataset")

    def common_flags(q):
        q.add_argument("--batch-size", type=cli.positive_int, default=50, help="images per batch (per process)")
        q.add_argument("--inception-weights", default=None,
                       help=f"path of {FID_WEIGHTS_FILE} (default: torch hub cache, else download)")
        q.add_argument("--json", default=None, help="also write the results to this JSON file")
        q.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda")

    r = sub.add_parser("recon", help="PSNR / SSIM / LPIPS / rFID of reconstructions for each c'",
                       formatter_class=defaults)
    r.add_argument("--ae-ckpt", required=True,
                   help="train_ae.py checkpoint, an official DC-AE file, a diffusers folder or a "
                        "Hub id")
    r.add_argument("--ae-config", default=None, help="preset of an official AE file")
    r.add_argument("--baseline-ckpt", default=None,
                   help="a second AE (e.g. trained with --no-structured) as a column")
    r.add_argument("--tile-size", type=cli.every("never"), default=1024,
                   help="encode and decode images larger than this many pixels in tiles of this "
                        "size, a quarter tile overlapping (dcaelib/tiling.py; 0: never)")
    r.add_argument("--c-primes", default=None,
                   help="comma-separated c' values (default: multiples of c/8)")
    r.add_argument("--fid", default="auto", choices=["auto", "on", "off"],
                   help="rFID (needs the Inception weights)")
    r.add_argument("--lpips", default="auto", choices=["auto", "on", "off"],
                   help="LPIPS-AlexNet (needs its weights)")
    r.add_argument("--tail-from", type=cli.count, default=0,
                   help="also: the full latent with the channels after the first K kept, zeroed, "
                        "replaced by their mean over the images, or shuffled between images (0: off)")
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
    f.add_argument("--num-samples", type=cli.positive_int, default=10000, help="with --ckpt: how many samples")
    f.add_argument("--steps", type=cli.positive_int, default=50,
                   help="with --ckpt: sampler steps (DDIM, or Heun for flow checkpoints)")
    f.add_argument("--cfg-scale", type=cli.finite, default=1.5,
                   help="with --ckpt: guidance scale (official FID: 1.5)")
    f.add_argument("--ref", default=None, help="reference statistics .npz (mu, sigma)")
    f.add_argument("--ref-data", default=None, choices=data.DATASETS,
                   help="or compute the reference from this dataset")
    f.add_argument("--data-path", default=None, help="folder of --ref-data")
    f.add_argument("--split", default="train", choices=["train", "val"], help="split of --ref-data")
    f.add_argument("--image-size", type=cli.positive_int, default=64, help="resolution of --ref-data")
    f.add_argument("--num-images", type=cli.every("all"), default=10000, help="images of --ref-data (0: all)")
    f.add_argument("--seed", type=int, default=0, help="seed of the samples / the shapes dataset")
    common_flags(f)

    def judge_flags(q):
        q.add_argument("--num-samples", type=cli.positive_int, default=200,
                       help="samples per guidance scale (classes in turn)")
        q.add_argument("--cfg-scales", default="1,4", help="comma-separated guidance scales")
        q.add_argument("--steps", type=cli.positive_int, default=50,
                       help="sampler steps (DDIM, or Heun for flow checkpoints)")
        q.add_argument("--num-images", type=cli.positive_int, default=20000,
                       help="training images the judge learns from")
        q.add_argument("--judge-steps", type=cli.positive_int, default=1200,
                       help="training steps of the judge (batch 64)")
        q.add_argument("--judge-cache", default=os.path.join("runs", "judges"),
                       help="folder of the trained judges (one per dataset, trained on first use)")
        q.add_argument("--num-val", type=cli.positive_int, default=1000,
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
    v.add_argument("--baseline", default=None,
                   help="label of the baseline (default: the first label; the --add-to CSV's first where given)")
    v.add_argument("--max-step", type=cli.positive_int, default=None,
                   help="only the points up to this step (a fixed training budget)")
    v.add_argument("--speedup-metric", default="fd_g1",
                   help="metric of the speed-up: share_gS or fd_gS (S a guidance scale)")
    v.add_argument("--csv", default=os.path.join("runs", "curve.csv"), help="table of every point")
    v.add_argument("--plot", default=os.path.join("runs", "curve.png"),
                   help="the curves (needs matplotlib)")
    v.add_argument("--add-to", default=None, metavar="CSV",
                   help="grow a comparison over sessions: keep this curve CSV's rows (a run of the "
                        "same label and folder is measured anew) and add the runs of --run; a run "
                        "whose autoencoder, judge or judging differs from the rows there (their "
                        "sha256 and protocol columns) is refused")
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


def check_folder(flag, path):
    """A clear error before any work for an output file whose folder does not exist."""
    if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        raise ValueError(f"{flag} {path}: its folder does not exist; create it first")


def main(args):
    check_folder("--json", args.json)
    rank, world, device = distributed.setup_distributed(args.device)
    commands = {"recon": cmd_recon, "ref": cmd_ref, "fid": cmd_fid, "classes": cmd_classes,
                "curve": cmd_curve}
    result = commands[args.command](args, rank, world, device)
    if rank == 0 and args.json and result is not None:
        files.write_json(args.json, result)
        print(f"wrote {args.json}")
    distributed.cleanup_distributed()


if __name__ == "__main__":
    cli.command_line(main, build_parser())
