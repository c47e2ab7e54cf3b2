r"""
Train a class-conditional latent DiT with DC-AE 1.5's augmented diffusion training.

    python train_dit.py --ae-ckpt runs/ae/last.pt                 # classroom DiT, flow matching
    python train_dit.py --ae-ckpt runs/ae/last.pt --no-augmented --out runs/dit-plain  # baseline
    python train_dit.py --ae-ckpt runs/ae/last.pt --objective ddpm --out runs/dit-ddpm  # DDPM
    torchrun --nproc_per_node=8 train_dit.py --ae-ckpt model.safetensors --ae-config dc-ae-f64c128-1.5 \
        --data imagefolder --data-path /data/imagenet --image-size 512 --model DiT-XL --batch-size 256 \
        --lr 1e-4

The training images are encoded once into a latent cache (keyed by dataset, resolution, autoencoder
and flip), then the DiT trains on the cached latents multiplied by the latent scaling factor, as the
official code does. --objective picks DDPM (eps-prediction, DiT) or flow matching (velocity, SiT /
USiT, the paper's main models). Each step adds the loss on the first c' channels (DC-AE 1.5 Sec. 3):
loss = (L_full + w * L_masked(c')) / (1 + w), with c' drawn from --aug-channel-choices.
"""

import copy
import os
import shutil
import socket
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import dcae15
from dcaelib import cli, data, distributed, files, models, pictures, trainer, uvit

# Flags that may differ when resuming; the AE may move (its fingerprint is checked instead).
RESUME_FREE_ARGS = trainer.RUN_FREE_ARGS | {"cache_dir", "encode_batch_size", "ae_ckpt", "num_workers"}


# --------------------------------------------------------------------------------------------------
# Latent cache


def cache_key(args, ae_info, num_images):
    """Everything the cached latents depend on; its hash names the cache file."""
    return {
        "data": args.data,
        "data_path": os.path.abspath(args.data_path) if args.data_path else None,
        "image_size": args.image_size,
        "seed": args.data_seed if args.data == "shapes" else None,
        "num_images": num_images,
        "flip": args.flip,
        "ae": ae_info["fingerprint"],
    }


@torch.no_grad()
def encode_into(ae, dataset, rows, flip, chunks, batch_size, num_workers, device, desc=None):
    """Encode the images of `chunks` (chunk k: images k*batch_size ... (k+1)*batch_size - 1) and
    write their unscaled latents (and, with flip, the mirror images' latents, N rows further on)
    into the .npy file `rows` at their dataset positions. Images come through a DataLoader with
    `num_workers` processes; only one batch is in memory at a time."""
    autocast = dcae15.autocast(device)
    n = len(dataset)
    batches = [list(range(k * batch_size, min((k + 1) * batch_size, n))) for k in chunks]
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=num_workers)
    labels = {}
    try:
        for idx, (x, y) in zip(batches, cli.progress(loader, desc=desc, disable=desc is None)):
            x = x.to(device)
            with autocast:
                z = ae.encode(x).float().cpu().numpy()
                files.write_npy_rows(rows, idx[0], z)
                if flip:
                    files.write_npy_rows(rows, n + idx[0], ae.encode(x.flip(3)).float().cpu().numpy())
            labels[idx[0]] = y
            files.release_free_memory()  # keeps the process at one batch's memory (see there)
    except data.BadImageError as err:
        raise data.one_line(err) from None
    return labels


def build_latent_cache(args, ae, ae_info, train_set, rank, world, device):
    """Encode the training images once (split over ranks), reuse the cache afterwards.

    Returns (latents, labels); latents are unscaled, (N, C, h, w) float32, memory-mapped from the
    file (N = 2 x images with --flip: the mirrored images follow the originals). The cache is a
    folder of .npy files in dataset order that every rank writes its rows into as it encodes, so
    memory stays one batch whatever the dataset's size; `done.json`, written last (atomically),
    marks it complete. The rows are written into a private folder, renamed to the cache's name
    when complete (`publish_cache`): a killed run leaves no half-written cache under that name,
    and two runs that need the same cache at once (two terminals) never write into each other's
    files.
    NOTE: float32 storage, not bf16: the DiT sees exactly the encoder's output, at 4 bytes a value
    (ImageNet at 512 px with f32c128: 168 GB on disk, nothing of it held in memory).
    """
    num_images = len(train_set) if args.max_images <= 0 else min(args.max_images, len(train_set))
    key = cache_key(args, ae_info, num_images)
    digest = files.key_digest(key)
    folder = os.path.join(args.cache_dir, f"latents-{digest}")
    if not os.path.isfile(os.path.join(folder, "done.json")):
        t0 = time.time()
        subset = torch.utils.data.Subset(train_set, range(num_images))
        C, f = ae.latent_channels, ae.spatial_compression_ratio
        h = args.image_size // f
        total = num_images * (2 if args.flip else 1)
        work = [None]  # this run's private folder, named by rank 0 and written by every rank
        if rank == 0:
            remove_dead_partials(folder)
            work[0] = f"{partial_prefix(folder)}{os.getpid()}"
            try:
                os.makedirs(work[0], exist_ok=True)
                files.create_npy(os.path.join(work[0], "latents.npy"), (total, C, h, h), "float32")
            except (OSError, files.WriteError) as err:  # a full disk: nothing half-made stays
                shutil.rmtree(work[0], ignore_errors=True)
                raise files.write_failure(work[0], err) from None
        if world > 1:
            dist.broadcast_object_list(work, src=0)
        work = work[0]
        n_chunks = (num_images + args.encode_batch_size - 1) // args.encode_batch_size
        desc = f"encoding {num_images} images" if rank == 0 else None
        try:
            mine = encode_into(ae.to(device), subset, os.path.join(work, "latents.npy"), args.flip,
                               range(rank, n_chunks, world), args.encode_batch_size,
                               args.num_workers, device, desc)
        except files.WriteError:
            shutil.rmtree(work, ignore_errors=True)  # a full disk: nothing half-written stays
            raise
        # the labels are small (8 bytes an image): gather them, rank 0 writes them
        gathered = [mine]
        if world > 1:
            gathered = [None] * world
            dist.all_gather_object(gathered, mine)
        if rank == 0:
            starts = {s: y for part in gathered for s, y in part.items()}
            labels = torch.cat([starts[s] for s in sorted(starts)])
            if args.flip:
                labels = torch.cat([labels, labels])
            np.save(os.path.join(work, "labels.npy"), labels.numpy().astype(np.int64))
            files.write_json(os.path.join(work, "done.json"),
                              {"key": key, "num_images": num_images, "rows": total})
            publish_cache(work, folder)
            print(f"latent cache: encoded {num_images} images in {time.time() - t0:.0f} s -> {folder}")
        if world > 1:
            dist.barrier()
    elif rank == 0:
        print(f"latent cache: reusing {folder}")
    # copy-on-write memory maps: the ranks share the pages, nothing is read before it is needed
    latents = torch.from_numpy(np.load(os.path.join(folder, "latents.npy"), mmap_mode="c"))
    labels = torch.from_numpy(np.load(os.path.join(folder, "labels.npy"), mmap_mode="c"))
    return latents, labels


def publish_cache(work, folder):
    """Rename the complete private folder `work` to the cache's name `folder`. If another run
    published the same cache meanwhile, its copy (the same latents) stays and ours is deleted."""
    if os.path.isdir(folder) and not os.path.isfile(os.path.join(folder, "done.json")):
        # a cache folder is renamed into place whole, so one without done.json has been damaged
        print(f"latent cache: {folder} is incomplete; replacing it")
        shutil.rmtree(folder, ignore_errors=True)
    try:
        os.rename(work, folder)  # atomic; fails if `folder` exists (and is not empty)
    except OSError:
        if not os.path.isfile(os.path.join(folder, "done.json")):
            raise
        shutil.rmtree(work)


def partial_prefix(folder):
    """The name of a run's private folder for the cache `folder`, less the run's process id."""
    return f"{folder}.partial-{socket.gethostname()}-"


def remove_dead_partials(folder):
    """Delete the private folders of this cache that runs on this machine left when killed."""
    prefix = os.path.basename(partial_prefix(folder))
    parent = os.path.dirname(folder) or "."
    for name in os.listdir(parent) if os.path.isdir(parent) else []:
        pid = name[len(prefix):]
        if name.startswith(prefix) and pid.isdigit() and not process_alive(int(pid)):
            print(f"latent cache: deleting {name}, left by a run that was stopped")
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def process_alive(pid):
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    return True


# --------------------------------------------------------------------------------------------------
# Model, one training step, samples


def default_aug_channels(C):
    # NOTE: a guess, as for the AE: multiples of c/8 below c (c itself is the full-channel pass)
    return [c for c in dcae15.default_c_prime_choices(C) if c < C] or [C]


@dataclass
class Training:
    """What one training step needs: the DiT or U-ViT (and its DDP wrapper), its EMA copy, the
    optimiser and the diffusion objective."""

    model: torch.nn.Module
    ema: torch.nn.Module
    opt: torch.optim.Optimizer
    objective: object  # dcae15.GaussianDiffusion or dcae15.FlowMatching
    model_ddp: Optional[torch.nn.Module] = None  # = model on one process


def build_training(cfg, args, device, resume_ckpt=None):
    """The DiT or U-ViT (by the config's type), its EMA copy, AdamW (no weight decay on biases and
    norm weights, as official) and the objective; with the checkpoint's weights and optimiser
    state when resuming. --fsdp shards the model and its EMA, one block a unit."""
    torch.manual_seed(args.seed)  # same initial weights on every rank
    model = models.build_backbone(cfg).to(device)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    if resume_ckpt is not None:  # whole weights into the whole model, before any sharding
        model.load_state_dict(resume_ckpt["model"])
        ema.load_state_dict(resume_ckpt["ema"])
    model.set_grad_checkpointing(args.grad_checkpointing)
    if args.fsdp:
        for module in (model, ema):
            trainer.fully_shard_blocks(module, (dcae15.DiTBlock, uvit.UViTBlock), device)
    if args.compile:  # in place: the state dict keeps its keys, the EMA copy stays eager
        model.compile(backend=args.compile_backend)

    def decays(name, p):
        return p.dim() >= 2 and "embedding" not in name

    decay = [p for n, p in model.named_parameters() if decays(n, p)]
    no_decay = [p for n, p in model.named_parameters() if not decays(n, p)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=tuple(args.adam_betas))
    if resume_ckpt is not None:
        trainer.load_optimizer_state(model, opt, resume_ckpt["opt"], args.fsdp)
    return Training(model, ema, opt, dcae15.build_objective(args.objective))


def latent_batches(latents, labels, sampler, local_batch, latent_scale, device):
    """This rank's batches (scaled latents, labels) in the order of the step sampler."""
    while True:
        idx = torch.tensor([next(sampler) for _ in range(local_batch)])
        x = latents[idx].to(device, non_blocking=True).float() * latent_scale  # as the official code
        yield x, labels[idx].to(device, non_blocking=True)


def train_step(state, batch, c_prime, step, args):
    """One step of (augmented) diffusion training; returns (the loss terms, the gradient norm,
    whether the update was applied: a non-finite loss or gradient skips it)."""
    x, y = batch
    state.model.train()
    with dcae15.autocast(x.device):
        loss, terms = state.objective.training_loss(state.model_ddp, x, y, c_prime=c_prime,
                                                aug_weight=args.aug_weight)
    grad_norm, applied = trainer.model_step(state, loss, state.model.parameters(), step, args)
    return {"loss": loss, **terms}, grad_norm, applied


def sample_grid(model, ae, latent_scale, num_classes, per_class, device, seed, objective, steps,
                cfg_scale):
    """per_class samples of each of the first <= 10 classes, decoded to images; rows are classes."""
    y = torch.arange(min(num_classes, 10), device=device).repeat_interleave(per_class)
    generator = torch.Generator(device).manual_seed(seed)
    return dcae15.generate(model, ae, latent_scale, y, generator, objective, steps,
                           cfg_scale=cfg_scale)


def main(args):
    # ------------------------------------------------------------------ check the input, before any work
    resume_ckpt = trainer.start_or_resume(args, files.DIT_KIND, build_parser(), RESUME_FREE_ARGS)
    if args.ae_ckpt is None:
        raise ValueError("--ae-ckpt is required: a train_ae.py checkpoint, an official DC-AE file "
                         "with --ae-config, or a diffusers AutoencoderDC folder")
    ae, latent_scale, ae_info = files.load_autoencoder(args.ae_ckpt, args.ae_config,
                                                            args.latent_scale)
    if resume_ckpt is not None and ae_info["fingerprint"] != resume_ckpt["ae"]["fingerprint"]:
        raise ValueError(f"--resume: {args.ae_ckpt} is not the autoencoder this run was trained with")
    ae.cfg.check_image_size(args.image_size, "--image-size")
    C = ae.latent_channels
    choices = cli.parse_c_prime_choices(args.aug_channel_choices, C, "--aug-channel-choices",
                                  default_aug_channels(C))

    # ------------------------------------------------------------------ processes, data, latent cache
    rank, world, device = trainer.setup_processes(args)
    if args.fsdp and world < 2:
        raise ValueError("--fsdp shards the model over processes: launch with torchrun "
                         "--nproc_per_node=N (N >= 2), or leave --fsdp out")
    master = rank == 0
    train_set = data.build_dataset(args.data, "train", args.image_size, args.data_path,
                                   args.data_seed, skip_bad=args.skip_bad_images)
    num_classes = train_set.num_classes
    latents, labels = build_latent_cache(args, ae, ae_info, train_set, rank, world, device)
    ae.to(device)  # kept for the sample grids

    # ------------------------------------------------------------------ model, optimiser
    h = args.image_size // ae.spatial_compression_ratio
    config = models.build_backbone_config(args.model, input_size=h, in_channels=C,
                                          num_classes=num_classes, patch_size=args.patch_size)
    if resume_ckpt is not None:
        config = files.dit_config(resume_ckpt)
    state = build_training(config, args, device, resume_ckpt)
    channel_gen = trainer.random_streams(args, rank)
    step = trainer.restore(state, resume_ckpt, [], rank, channel_gen)  # the weights are in already
    ddp_ids = [device.index] if device.type == "cuda" else None
    use_ddp = world > 1 and not args.fsdp  # FSDP averages the gradients itself
    state.model_ddp = DDP(state.model, device_ids=ddp_ids) if use_ddp else state.model
    sampler = iter(data.StepSampler(len(latents), args.batch_size, rank, world, args.seed, step))
    batches = latent_batches(latents, labels, sampler, args.batch_size // world, latent_scale, device)

    # ------------------------------------------------------------------ outputs (the input is valid)
    last_path = os.path.join(args.out, "last.pt")
    grid_path = os.path.join(args.out, "samples.png")
    log = trainer.RunLog(args.out, master, step, args.tensorboard)
    n_params = sum(p.numel() for p in state.model.parameters()) / 1e6
    augmentation = "plain (no augmented training)"
    if not args.no_augmented:
        augmentation = f"augmented with c' in {choices}, weight {args.aug_weight}"
    log.write(f"{'resuming at step ' + str(step) if step else 'training'} {args.model} "
              f"({n_params:.2f}M params) on {len(latents)} latents "
              f"{C}x{config.input_size}x{config.input_size} x {latent_scale:.4f}, objective "
              f"{args.objective}, {augmentation}, {world} process(es){' (FSDP)' if args.fsdp else ''} "
              f"on {device}")

    def save(step, final=False, picture=True):
        """Checkpoint (rank 0 writes it atomically) and, with picture, the sample grid."""
        rng = trainer.gather_rng_states({"channel": channel_gen})  # every rank's streams
        weights = trainer.whole_state_dicts(state.model, state.ema, state.opt, args.fsdp)
        if not master:
            return
        class_names = data.SHAPE_CLASSES if args.data == "shapes" else None
        ckpt = files.dit_checkpoint(config, weights, step, args, rng, ae_info, latent_scale,
                                         num_classes, choices, args.objective, class_names)
        trainer.write_checkpoint(ckpt, args, step, final)
        if picture or final:
            ema = state.ema
            if args.fsdp:  # a whole copy on rank 0 for the grid (the sharded EMA runs on all ranks),
                cuda = [device.index or 0] if device.type == "cuda" else []  # built without
                with torch.random.fork_rng(devices=cuda), torch.device(device):  # using the streams
                    ema = models.build_backbone(config)
                ema.load_state_dict(weights["ema"])
                ema.eval()
            images = sample_grid(ema, ae, latent_scale, num_classes, 8, device, args.seed,
                                 args.objective, args.sample_steps, args.cfg_scale)
            pictures.save_grid(images, grid_path, ncol=8)

    # ------------------------------------------------------------------ training loop
    def draw_c_prime():  # the c' of the augmented pass, or None for the plain objective
        if args.no_augmented:
            return None
        return dcae15.sample_c_prime(choices, generator=channel_gen)

    step = trainer.train_loop(state, args, step, world, log, batches, draw_c_prime, train_step, save,
                              unit="latents")
    n_ranks = 1 if args.fsdp else distributed.check_ranks_in_sync(state.model)  # FSDP: each has a shard
    save(step, final=True)
    done = f"wrote {last_path} and {grid_path}"
    if n_ranks > 1:
        done += f"\nDDP check: weights identical on all {n_ranks} ranks"
    log.write(done)
    trainer.finish(log)


def build_parser():
    p = trainer.run_parser("Train a latent DiT with DC-AE 1.5 augmented diffusion training.",
                           out="runs/dit", batch_size=32, max_steps=4400, warmup_steps=100,
                           log_every=400, sample_every=2000, picture="samples.png")
    p.add_argument("--ae-ckpt", default=None,
                   help="train_ae.py checkpoint, an official DC-AE file (+ --ae-config), a "
                        "diffusers AutoencoderDC folder, or a Hub id of either (org/name[@rev])")
    p.add_argument("--ae-config", default=None,
                   help=f"preset of an official AE file: {', '.join(models.AUTOENCODER_CONFIGS)}")
    p.add_argument("--latent-scale", type=cli.positive, default=None,
                   help="latent scaling factor (default: the one stored with the AE / the official one)")
    p.add_argument("--model", default="DiT-classroom", metavar="PRESET",
                   choices=models.BACKBONE_PRESETS,
                   help=f"the diffusion model: a DiT ({', '.join(dcae15.DiT_CONFIGS)}) or a U-ViT "
                        f"({', '.join(uvit.UVIT_CONFIGS)}; with the flow objective: USiT)")
    p.add_argument("--fsdp", action="store_true",
                   help="shard weights, gradients and optimiser state over the processes (FSDP2, one "
                        "block a unit), for models whose optimiser state does not fit one card; "
                        "checkpoints stay whole")
    p.add_argument("--patch-size", type=cli.positive_int, default=1,
                   help="patch size (1 for DC-AE latents, as official)")
    p.add_argument("--image-size", type=cli.positive_int, default=64,
                   help="image resolution (latent size = this / compression)")
    p.add_argument("--max-images", type=cli.every("all"), default=10000,
                   help="encode at most this many training images (0: all)")
    p.add_argument("--flip", action="store_true",
                   help="also train on mirrored images (the official code does not)")
    p.add_argument("--cache-dir", default="runs/latent_cache",
                   help="where latent caches are kept and reused")
    p.add_argument("--encode-batch-size", type=cli.positive_int, default=64, help="batch size of the one-off encoding")
    p.add_argument("--num-workers", type=cli.count, default=0,
                   help="data-loader processes that read and decode the images for the encoding")
    p.add_argument("--objective", default="flow", choices=sorted(dcae15.OBJECTIVES),
                   help="flow: flow matching with the linear interpolant (SiT / USiT, the paper's "
                        "headline models), sampled with Heun; ddpm: eps-prediction (DiT), sampled "
                        "with DDIM. The classroom default is flow: see the README's quick start")
    p.add_argument("--aug-channel-choices", default=None,
                   help="comma-separated c' values for the augmented loss (default: multiples of c/8 "
                        "below c)")
    p.add_argument("--aug-weight", type=cli.nonnegative, default=1.0,
                   help="w in (L_full + w L_masked) / (1 + w); 1 = the official mean of the two passes")
    p.add_argument("--no-augmented", action="store_true",
                   help="plain diffusion objective (the baseline)")
    p.add_argument("--lr", type=cli.positive, default=1e-3,
                   help="AdamW learning rate; 1e-3 suits the small classroom DiT (official DiT-XL: "
                        "1e-4 at batch 256)")
    p.add_argument("--adam-betas", type=cli.betas, default=[0.9, 0.999],
                   help="AdamW's (beta1, beta2): DiT's 0.9,0.999 (the official U-ViT / USiT: 0.99,0.99, "
                        "made for far longer runs; at 4400 classroom steps 0.9,0.999 trains the U-ViT better)")
    p.add_argument("--sample-steps", type=cli.positive_int, default=50,
                   help="sampler steps of the periodic sample grid (DDIM, or Heun for flow)")
    p.add_argument("--cfg-scale", type=cli.finite, default=4.0,
                   help="guidance scale of the periodic sample grid")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights, data order, c', noise and t")
    return p


if __name__ == "__main__":
    cli.command_line(main, build_parser())
