r"""
Train a DC-AE 1.5 autoencoder with a structured latent space.

    python train_ae.py                                       # classroom AE on the shapes, CPU ok
    python train_ae.py --no-structured --out runs/ae-plain   # the plain DC-AE baseline
    torchrun --nproc_per_node=8 train_ae.py --model dc-ae-f32c128-1.5 --data imagefolder \
        --data-path /data/imagenet --image-size 256 --batch-size 256 --perceptual on

Each step draws c' from the channel list and reconstructs from z * mask_{c,c'} (DC-AE 1.5 Sec. 3); the
loss is L1 + LPIPS, plus a hinge GAN from --gan-start. The run folder gets last.pt, log.txt and
recon_partial.png (rows: validation images; columns: original, then the reconstruction from the first
c' channels for each c' in the list: the paper's Figure 3).

NOTE: the official DC-AE 1.5 training recipe is unreleased; the defaults here are ours (see README).
"""

import copy
import json
import math
import os
from dataclasses import dataclass
from typing import Optional

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

import dcae15
from dcaelib import cli, data, distributed, files, metrics, models, pictures, trainer

# Flags that may differ when resuming (they do not change what is computed); the rest must match.
RESUME_FREE_ARGS = trainer.RUN_FREE_ARGS | {"num_workers"}


def load_init_from(args):
    """--init-from -> (config, AE state dict): one of our checkpoints (its EMA weights and config),
    or an official DC-AE file (.safetensors, or .pt/.pth) for the --model preset."""
    cfg, sd, _, source = files.read_autoencoder(args.init_from, args.model)
    if source == "official":
        try:
            with torch.device("meta"):  # shapes only: no second full-size model in memory
                dcae15.check_state_dict(models.build_autoencoder(cfg), sd)
        except ValueError as err:
            raise ValueError(f"--init-from {args.init_from} does not fit --model {args.model}: "
                             f"{err}") from None
    return cfg, sd


def check_channel_sampling(args):
    """Clear errors for --num-sample-latent-channels and the --always-sample-* flags."""
    k = args.num_sample_latent_channels
    if args.always_sample_max_channel and args.always_sample_min_max_channel:
        raise ValueError("pass only one of --always-sample-max-channel and "
                         "--always-sample-min-max-channel")
    if k < 1 or (args.always_sample_min_max_channel and k < 2):
        need = 2 if args.always_sample_min_max_channel else 1
        raise ValueError(f"--num-sample-latent-channels {k} is too few: at least {need}"
                         + (" with --always-sample-min-max-channel" if need == 2 else ""))
    if args.no_structured and (k > 1 or args.always_sample_max_channel
                               or args.always_sample_min_max_channel):
        raise ValueError("--no-structured always decodes all c channels: drop "
                         "--num-sample-latent-channels and --always-sample-*")


def draw_c_prime(args, choices, C, generator):
    """This step's c' (an int) or c' list (with --num-sample-latent-channels > 1), drawn per rank
    (structured latent space); the plain baseline always uses all C channels."""
    if args.no_structured:
        return C
    c_prime = dcae15.sample_c_primes(choices, args.num_sample_latent_channels,
                                         args.always_sample_max_channel,
                                         args.always_sample_min_max_channel, generator)
    return c_prime[0] if len(c_prime) == 1 else c_prime


def describe_sampling(args, cfg):
    """How c' is drawn, in words, for the first log line."""
    if args.no_structured:
        return f"plain baseline: c = {cfg.latent_channels} only"
    words = "structured"
    if args.num_sample_latent_channels > 1:
        words += f", {args.num_sample_latent_channels} c' per step"
    if args.always_sample_max_channel or args.always_sample_min_max_channel:
        always = "max" if args.always_sample_max_channel else "min and max"
        words += f", the {always} always among them"
    return words


@dataclass
class Training:
    """What one training step needs: the models (and their DDP wrappers), the loss, the optimisers."""

    model: torch.nn.Module  # the autoencoder
    ema: torch.nn.Module
    loss_fn: dcae15.AutoencoderLoss
    opt: torch.optim.Optimizer
    disc: Optional[torch.nn.Module] = None
    opt_disc: Optional[torch.optim.Optimizer] = None
    model_ddp: Optional[torch.nn.Module] = None  # = model on one process
    disc_ddp: Optional[torch.nn.Module] = None


def build_training(cfg, args, device, init_sd=None):
    """The autoencoder, its EMA copy, the loss (with LPIPS and the discriminator) and optimisers."""
    torch.manual_seed(args.seed)  # same initial weights on every rank
    ae = models.build_autoencoder(cfg).to(device)
    if init_sd is not None:
        ae.load_state_dict(init_sd, strict=True)
    ema = copy.deepcopy(ae).eval().requires_grad_(False)
    ae.set_grad_checkpointing(args.grad_checkpointing)
    if args.compile:  # in place: the state dict keeps its keys, the EMA copy stays eager
        ae.compile(backend=args.compile_backend)
    trained = dcae15.set_trainable(ae, args.train_parts)  # the rest is frozen: no grads, no state
    disc = None
    if args.gan_weight > 0:
        # PatchGAN with 3 downsampling layers (70x70 patches) where the image allows; fewer if tiny
        n_layers = max(1, min(3, int(math.log2(args.image_size / 3))))
        disc = dcae15.PatchDiscriminator(n_layers=n_layers).to(device)
    perceptual = dcae15.build_lpips(args.perceptual) if args.lpips_weight > 0 else None
    if perceptual is not None:
        perceptual.to(device)
    loss_fn = dcae15.AutoencoderLoss(disc, perceptual, args.l1_weight, args.lpips_weight,
                                     args.gan_weight, args.gan_start, args.gan_adaptive_weight)
    params = dict(ae.named_parameters())
    opt = torch.optim.AdamW([params[n] for n in trained], lr=args.lr, betas=(0.9, 0.999),
                            weight_decay=args.weight_decay)
    opt_disc = None
    if disc is not None:
        opt_disc = torch.optim.AdamW(disc.parameters(), lr=args.disc_lr, betas=(0.5, 0.9))
    return Training(ae, ema, loss_fn, opt, disc, opt_disc)


def wrap_ddp(state, world, device):
    """DistributedDataParallel wrappers for the trained modules (the modules themselves on 1 rank)."""
    ids = [device.index] if device.type == "cuda" else None
    state.model_ddp = DDP(state.model, device_ids=ids) if world > 1 else state.model
    state.disc_ddp = state.disc
    if world > 1 and state.disc is not None:
        state.disc_ddp = DDP(state.disc, device_ids=ids)


def train_step(state, batch, c_prime, step, args):
    """One step: reconstruct the images from their first c' channels, update the AE (and EMA), then
    the discriminator. Returns (the loss terms, the AE's gradient norm, whether both updates were
    applied: a non-finite loss or gradient skips its update, trainer.optimizer_step)."""
    x, _ = batch  # the labels are not used
    autocast = dcae15.autocast(x.device)
    state.model.train()
    if state.disc is not None:
        state.disc.requires_grad_(False)  # the generator pass only needs gradients w.r.t. the image
    if args.compile and not args.no_structured:
        # NOTE: compiled, every c' is a (B,) tensor that masks the full latent: the same shapes at
        # every step, so the compiled AE is not compiled again for each new c' (the slicing of an
        # int c' is cheaper, and what eager runs do; both compute the same reconstruction)
        c_prime = [torch.full((len(x),), c, device=x.device) for c in c_prime] \
            if isinstance(c_prime, list) else torch.full((len(x),), c_prime, device=x.device)
    with autocast:
        # D(E(x) * mask_{c,c'}); for a list of c', one reconstruction each from one encoder pass
        x_rec, _ = state.model_ddp(x, c_prime)
        recs = x_rec if isinstance(x_rec, list) else [x_rec]
        # the loss of each c', averaged (as the official diffusion trainer averages its c' passes)
        last = dcae15.last_decoder_weight(state.model) if args.gan_adaptive_weight else None
        per_c = [state.loss_fn.generator_loss(x, r, step, last) for r in recs]
        loss = sum(c_loss for c_loss, _ in per_c) / len(per_c)
        terms = {k: sum(c_terms[k] for _, c_terms in per_c) / len(per_c) for k in per_c[0][1]}
    trained = [p for p in state.model.parameters() if p.requires_grad]
    grad_norm, applied = trainer.model_step(state, loss, trained, step, args)
    terms = {"loss": loss, **terms}
    if state.loss_fn.gan_active(step):
        state.disc.requires_grad_(True)
        with autocast:  # real images against every reconstruction of the step
            x_real = x.repeat(len(recs), 1, 1, 1)
            d_loss = state.loss_fn.discriminator_loss(x_real, torch.cat(recs), state.disc_ddp)
        _, disc_applied = trainer.optimizer_step(state.opt_disc, d_loss, state.disc.parameters())
        applied = applied and disc_applied
        terms["d_loss"] = d_loss
    return terms, grad_norm, applied


def validate(ae, val_set, choices, device, num_images=256, batch_size=64):
    """PSNR (dB) of full and partial-channel reconstructions of the first validation images, and
    1/RMS(z), the latent scaling factor."""
    n = min(num_images, len(val_set))

    def batches():
        for start in range(0, n, batch_size):
            yield torch.stack([val_set[i][0] for i in range(start, min(start + batch_size, n))]).to(device)

    return metrics.mean_psnr(ae, batches(), choices), dcae15.measure_latent_scale(ae, batches())


def final_report(report, scale, n_images, n_ranks, paths):
    """The lines printed at the end of a run."""
    lines = [f"validation PSNR of the EMA autoencoder ({n_images} images), reconstructing from the "
             f"first c' channels:"]
    lines += [f"  c' = {c:4d}: {v:6.2f} dB" for c, v in report.items()]
    lines += [f"latent scaling factor (1 / RMS of the EMA latents): {scale:.4f}",
              f"wrote {' and '.join(paths)}"]
    if n_ranks > 1:
        lines.append(f"DDP check: weights identical on all {n_ranks} ranks")
    return "\n".join(lines)


def main(args):
    # ------------------------------------------------------------------ check the input, before any work
    if args.resume and args.init_from:
        raise ValueError("--resume continues a run and --init-from starts a new one from weights: "
                         "pass only one")
    resume_ckpt = trainer.start_or_resume(args, files.AE_KIND, build_parser(), RESUME_FREE_ARGS)
    init_sd = None
    if resume_ckpt is not None:
        cfg = dcae15.DCAEConfig.from_dict(resume_ckpt["config"])
    elif args.init_from:
        cfg, init_sd = load_init_from(args)
    else:
        cfg = models.autoencoder_config(args.model)
    choices = cli.parse_c_prime_choices(args.latent_channel_choices, cfg.latent_channels,
                                  "--latent-channel-choices",
                                  dcae15.default_c_prime_choices(cfg.latent_channels))
    check_channel_sampling(args)
    if args.gan_adaptive_weight and args.gan_weight > 0 and args.train_parts == "middle":
        raise ValueError("--gan-adaptive-weight compares gradients at the decoder's last layer, "
                         "which --train-parts middle freezes; train all or head with the GAN")
    cfg.check_image_size(args.image_size, "--image-size")

    # ------------------------------------------------------------------ processes and data
    rank, world, device = trainer.setup_processes(args)
    master = rank == 0
    train_set = data.build_dataset(args.data, "train", args.image_size, args.data_path,
                                   args.data_seed, skip_bad=args.skip_bad_images)
    val_set = data.build_dataset(args.data, "val", args.image_size, args.data_path, args.data_seed,
                                 skip_bad=args.skip_bad_images)

    # ------------------------------------------------------------------ models, losses, optimisers
    state = build_training(cfg, args, device, init_sd)
    channel_gen = trainer.random_streams(args, rank)
    step = trainer.restore(state, resume_ckpt, ["model", "ema", "opt"]
                           + (["disc", "opt_disc"] if state.disc is not None else []),
                           rank, channel_gen)
    wrap_ddp(state, world, device)
    loader = data.infinite_loader(train_set, args.batch_size, rank, world, args.seed, step,
                                  args.num_workers, device)

    # ------------------------------------------------------------------ outputs (the input is valid)
    last_path = os.path.join(args.out, "last.pt")
    picture_path = os.path.join(args.out, "recon_partial.png")
    log = trainer.RunLog(args.out, master, step, args.tensorboard)
    ae = state.model
    n_params = sum(p.numel() for p in ae.parameters()) / 1e6
    h = args.image_size // cfg.spatial_compression_ratio
    perceptual = "on" if state.loss_fn.perceptual else "off"
    log.write(f"{'resuming at step ' + str(step) if step else 'training'} {n_params:.2f}M-param AE, "
              f"latent {cfg.latent_channels}x{h}x{h}, c' in {choices} "
              f"({describe_sampling(args, cfg)}), {world} process(es) on {device}, "
              f"perceptual {perceptual}")
    if args.train_parts != "all":
        n_trained = sum(p.numel() for p in ae.parameters() if p.requires_grad) / 1e6
        log.write(f"training only the {args.train_parts} ({n_trained:.2f}M params: "
                  f"{', '.join(dcae15.train_part_prefixes(ae, args.train_parts))}); the rest is "
                  f"frozen")
    val_images = torch.stack([val_set[i][0] for i in range(min(8, len(val_set)))]).to(device)

    def save(step, final=False, picture=True):
        """Checkpoint (rank 0 writes it atomically) and, with picture, the partial-channel picture."""
        rng = trainer.gather_rng_states({"channel": channel_gen})  # every rank's streams
        if not master:
            return None
        # a quick look for periodic saves; the full report at the end and in a step_NNNNNNN.pt,
        # so that a step file is what a run that ended at that step writes, latent scale and all
        full = final or trainer.step_file_due(args, step)
        report, scale = validate(state.ema, val_set, choices, device, num_images=256 if full else 64)
        ckpt = files.ae_checkpoint(cfg, ae, state.ema, state.opt, step, args, rng, scale,
                                        choices, report, state.disc, state.opt_disc)
        trainer.write_checkpoint(ckpt, args, step, final)
        log.record(step, {"val_psnr": {str(c): v for c, v in report.items()}, "latent_scale": scale})
        if picture or final:
            pictures.save_recon_grid(picture_path, val_images, [state.ema], choices)
        return report, scale

    # ------------------------------------------------------------------ training loop
    step = trainer.train_loop(state, args, step, world, log, loader,
                              lambda: draw_c_prime(args, choices, cfg.latent_channels, channel_gen),
                              train_step, save, unit="img")

    # ------------------------------------------------------------------ final report (EMA weights)
    n_ranks = distributed.check_ranks_in_sync(ae)
    result = save(step, final=True)
    if master:
        report, scale = result
        log.write(final_report(report, scale, min(256, len(val_set)), n_ranks,
                               [last_path, picture_path]))
        log.write(json.dumps({"final_psnr": {str(c): v for c, v in report.items()},
                              "latent_scale": scale}), echo=False)
    trainer.finish(log)


def build_parser():
    p = trainer.run_parser("Train a DC-AE 1.5 autoencoder with a structured latent space.",
                           out="runs/ae", batch_size=16, max_steps=2200, warmup_steps=50,
                           log_every=100, sample_every=500, picture="recon_partial.png")
    p.add_argument("--model", default="dc-ae-f16c64-classroom",
                   help=f"preset: {', '.join(models.AUTOENCODER_CONFIGS)}")
    p.add_argument("--image-size", type=cli.positive_int, default=64,
                   help="training resolution (a multiple of the compression)")
    p.add_argument("--init-from", default=None,
                   help="start from weights: a train_ae.py checkpoint (its EMA), an official "
                        "DC-AE file (.safetensors / .pt), a diffusers folder or a Hub id, matching "
                        "--model")
    p.add_argument("--latent-channel-choices", default=None,
                   help="comma-separated c' values to sample from (default: multiples of c/8 up to c)")
    p.add_argument("--num-sample-latent-channels", type=cli.positive_int, default=1,
                   help="c' values per step: one encoder pass, one decoder pass and loss per c', the "
                        "losses averaged (official trainer option of the same name)")
    p.add_argument("--always-sample-max-channel", action="store_true",
                   help="the first c' of every step is the largest choice (the full latent)")
    p.add_argument("--always-sample-min-max-channel", action="store_true",
                   help="the first two c' of every step are the smallest and the largest choice")
    p.add_argument("--train-parts", default="all", choices=dcae15.TRAIN_PARTS,
                   help="which layers train, the rest frozen (DC-AE's phases: all = phase 1, "
                        "middle = phase 2's high-resolution latent adaptation, head = phase 3's GAN "
                        "refinement of the decoder's last layers; dcae15.train_part_prefixes)")
    p.add_argument("--no-structured", action="store_true",
                   help="plain DC-AE baseline: always decode all c channels")
    p.add_argument("--lr", type=cli.positive, default=2e-4, help="AdamW learning rate of the autoencoder")
    p.add_argument("--l1-weight", type=cli.nonnegative, default=1.0, help="weight of the L1 reconstruction loss")
    p.add_argument("--lpips-weight", type=cli.nonnegative, default=0.5,
                   help="weight of the LPIPS loss (0 disables it)")
    p.add_argument("--perceptual", default="auto", choices=["auto", "on", "off"],
                   help="LPIPS-VGG: auto = use it if the VGG16 weights can be had, else warn and go on "
                        "without")
    p.add_argument("--gan-weight", type=cli.nonnegative, default=0.0,
                   help="weight of the hinge GAN loss; 0 = off. DC-AE adds the GAN only in a last "
                        "phase, after the reconstruction has converged (e.g. --gan-weight 0.1 "
                        "--gan-start 100000 on a real run)")
    p.add_argument("--gan-start", type=cli.count, default=0, help="step at which the GAN loss starts")
    p.add_argument("--gan-adaptive-weight", action="store_true",
                   help="multiply --gan-weight by VQGAN's adaptive weight (the ratio of the "
                        "reconstruction and GAN gradient norms at the decoder's last layer)")
    p.add_argument("--disc-lr", type=cli.positive, default=2e-4, help="learning rate of the discriminator")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights, the data order and c'")
    p.add_argument("--num-workers", type=cli.count, default=0, help="data-loader worker processes")
    return p


if __name__ == "__main__":
    cli.command_line(main, build_parser())
