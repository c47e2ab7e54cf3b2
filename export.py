"""
Write an autoencoder in another project's format.

    python export.py diffusers --ae-ckpt runs/ae/last.pt --out runs/ae-diffusers
    python export.py diffusers --ae-ckpt model.safetensors --ae-config dc-ae-f64c128-1.5 --out DIR

`diffusers` writes a folder that diffusers' AutoencoderDC.from_pretrained loads (diffusers 0.35 or
later): config.json (with the latent scale as scaling_factor) and diffusion_pytorch_model.safetensors
(needs the optional package safetensors). What --ae-ckpt accepts is what every script accepts: a
train_ae.py checkpoint, an official DC-AE file with its preset, a diffusers folder or a Hub id. The
folder reads back into this project wherever an autoencoder goes (--ae-ckpt DIR).
"""

import argparse

import dcae15
from dcaelib import cli, files, models


def main(args):
    cfg, sd, stored_scale, source = files.read_autoencoder(args.ae_ckpt, args.ae_config)
    scale = args.latent_scale if args.latent_scale is not None else stored_scale
    if scale is None:
        raise ValueError(f"no latent scaling factor is known for {args.ae_ckpt}: pass "
                         f"--latent-scale S (1 / RMS of its latents; dcae15.measure_latent_scale)")
    dcae15.check_state_dict(models.build_autoencoder(cfg), sd)
    config = files.save_diffusers(args.out, cfg, sd, scale)
    # read it back: the folder must give this project the same weights, bit for bit
    _, back, _ = files.read_diffusers(args.out)
    if back.keys() != sd.keys() or any(not back[k].equal(sd[k]) for k in sd):
        raise RuntimeError(f"{args.out} does not read back as the weights it was written from")
    c = cfg.latent_channels
    print(f"wrote {args.out}: a diffusers AutoencoderDC ({source} weights, {len(sd)} tensors, "
          f"{c} latent channels, scaling_factor {config['scaling_factor']:.4f})\n"
          f"  ae = diffusers.AutoencoderDC.from_pretrained({args.out!r})\n"
          f"  z = ae.encode(x).latent[:, :c_prime]  # x in [-1, 1]; the first c' of {c} channels\n"
          f"  x_rec = ae.decode(torch.nn.functional.pad(z, (0, 0, 0, 0, 0, {c} - c_prime)))"
          f".sample  # zero-filled")


def build_parser():
    p = argparse.ArgumentParser(description="Write an autoencoder in another project's format.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = p.add_subparsers(dest="format", required=True)
    d = sub.add_parser("diffusers", help="a diffusers AutoencoderDC folder",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d.add_argument("--ae-ckpt", required=True,
                   help="the autoencoder: a train_ae.py checkpoint, an official DC-AE file (with "
                        "--ae-config), a diffusers folder or a Hugging Face Hub id")
    d.add_argument("--ae-config", default=None, choices=sorted(models.AUTOENCODER_CONFIGS),
                   help="the preset of an official DC-AE file")
    d.add_argument("--latent-scale", type=cli.positive, default=None,
                   help="scaling_factor to write (default: the checkpoint's, or the preset's)")
    d.add_argument("--out", required=True, help="the folder to write (created if missing)")
    return p


if __name__ == "__main__":
    cli.command_line(main, build_parser())
