"""
files.py: every file this project writes and reads, in one room.

- Checkpoints: plain dicts of tensors and plain values, loaded with weights_only=True, told apart by
  their "kind": `ae_checkpoint` (train_ae.py) and `dit_checkpoint` (train_dit.py) say what they hold;
  `load_autoencoder` and `load_dit` read them back, with official DC-AE weight files too.
- Other homes of autoencoders: diffusers' AutoencoderDC folders, written (export.py) and read, and
  Hugging Face Hub ids, fetched (`fetch`).
- Atomic writes: every file goes to a temp file that is renamed into place, so a crash never leaves
  a half-written checkpoint, table or picture under the real name.
- Arrays: .npy files written row by row by several processes (the latent cache, the samples), and
  .npz files read batch by batch (FID of 50,000 samples without holding them).

The networks are dcae15.py's and dcaelib/models.py's; weights load into them with
`DCAE.from_state_dict` (and `from_pretrained`), whatever file they came from.
"""

import contextlib
import errno
import functools
import hashlib
import json
import os
import pickle
import re
import shutil
import subprocess
import warnings
import zipfile

import numpy as np
import torch

import dcae15
from dcaelib import cli, dcae10, models

# --------------------------------------------------------------------------------------------------
# Checkpoints

AE_KIND = "dcae15-ae"  # train_ae.py
DIT_KIND = "dcae15-dit"  # train_dit.py


class WriteError(cli.StopRun):
    """A file that could not be written (a full disk, a quota): the script ends with one line that
    names the file and the cause, not a traceback."""


# What a failed write says: Python and numpy raise OSError; torch's zip writer raises RuntimeError
# ("basic_ios::clear: iostream error", "unexpected pos ... vs ..."); safetensors its own error type.
_WRITE_FAILED = re.compile(r"iostream error|unexpected pos|PytorchStreamWriter|file write failed|"
                           r"No space left|Disk quota|StorageFull", re.I)


def write_failure(path, err):
    """The WriteError for an exception that a write of `path` raised (itself if it is one already),
    or None if it is not one."""
    if isinstance(err, WriteError):
        return err
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        cause = "no space left on the device" if err.errno == errno.ENOSPC else "disk quota exceeded"
    elif isinstance(err, OSError) or _WRITE_FAILED.search(str(err)):
        free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
        first = (getattr(err, "strerror", None) or str(err) or type(err).__name__).splitlines()[0]
        cause = (f"no space left on the device ({free} bytes free; {first})" if free < 16 << 20
                 else first)
    else:
        return None
    return WriteError(f"could not write {path}: {cause}")


@contextlib.contextmanager
def atomic_write(path, suffix=""):
    """Yields a temp file name in the folder of `path` (ending in `suffix`, for writers that go by
    the extension); when the block ends without an error, the temp file is renamed over `path`.
    A crash or a failed write leaves the previous file intact and no temp file behind; a failed
    write (a full disk, a quota) raises WriteError."""
    tmp = f"{path}.tmp{os.getpid()}{suffix}"  # same folder: os.replace is an atomic rename
    try:
        yield tmp
        os.replace(tmp, path)
    except Exception as err:
        failure = write_failure(path, err)
        if failure is None:
            raise
        raise failure from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_checkpoint(obj, path):
    """torch.save atomically (`atomic_write`).

    `obj` must hold only tensors and plain Python values (dicts, lists, numbers, strings), so that
    it loads with weights_only=True.
    """
    with atomic_write(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path):
    """torch.load onto the CPU with weights_only=True (tensors and plain values: no pickled code
    runs). A missing, truncated or corrupt file, or one that needs unpickling, raises an error of
    one line that names the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load's errors for a short, corrupt or foreign file vary
        if isinstance(err, pickle.UnpicklingError) and "Weights only load failed" in str(err):
            raise ValueError(f"{path} holds pickled Python objects, which loading with "
                             f"weights_only=True refuses to run; it was not written by this "
                             f"project") from None
        reason = str(err) or type(err).__name__
    raise ValueError(f"{path} cannot be read (truncated or corrupt?): {reason.splitlines()[0]}")


@functools.lru_cache(maxsize=None)
def provenance():
    """What made a file, beyond its flags: the commit of the code (with "+dirty" when tracked files
    differed from it), the torch version and the CPU threads, as the process found them at its first
    save. A CPU training repeats bit for bit only with all three the same (another thread count
    splits the sums differently)."""
    here = os.path.dirname(os.path.abspath(__file__))

    def git(*words):
        try:
            return subprocess.run(["git", *words], cwd=here, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):  # no git, or not a clone
            return ""

    commit = git("rev-parse", "HEAD")
    if commit and git("status", "--porcelain", "--untracked-files=no"):
        commit += "+dirty"
    return {"commit": commit or None, "torch": str(torch.__version__),
            "threads": torch.get_num_threads()}


def ae_checkpoint(cfg, model, ema, opt, step, args, rng, latent_scale, channel_choices, val_psnr,
                  disc=None, opt_disc=None):
    """The checkpoint train_ae.py writes: all it takes to resume exactly, and the EMA weights."""
    return {
        "kind": AE_KIND,
        "config": cfg.to_dict(),
        "model": model.state_dict(),
        "ema": ema.state_dict(),  # what every reader of an AE checkpoint loads
        "disc": disc.state_dict() if disc is not None else None,
        "opt": opt.state_dict(),
        "opt_disc": opt_disc.state_dict() if opt_disc is not None else None,
        "step": step,
        "args": vars(args),  # the flags of the run; --resume checks them
        "latent_scale": latent_scale,  # 1 / RMS of the EMA latents on validation images
        "channel_choices": channel_choices,
        "val_psnr": {str(c): v for c, v in val_psnr.items()},
        "rng": rng,  # every rank's RNG states (trainer.gather_rng_states)
        "provenance": provenance(),
    }


def dit_checkpoint(cfg, weights, step, args, rng, ae_info, latent_scale, num_classes,
                   aug_channel_choices, objective, class_names=None):
    """The checkpoint train_dit.py writes; `weights` holds the whole "model", "ema" and "opt" state
    dicts (trainer.whole_state_dicts), `ae_info` (from load_autoencoder) names its AE and
    `objective` ("ddpm" or "flow") says what the model predicts, hence how to sample it."""
    return {
        "kind": DIT_KIND,
        "backbone": models.backbone_name(cfg),  # "DiT" or "UViT": what `config` builds
        "objective": objective,
        "config": cfg.to_dict(),
        "model": weights["model"],
        "ema": weights["ema"],  # what sample.py and evaluate.py load
        "opt": weights["opt"],
        "step": step,
        "args": vars(args),
        "ae": ae_info,
        "latent_scale": latent_scale,
        "num_classes": num_classes,
        "aug_channel_choices": aug_channel_choices,
        "class_names": class_names,
        "rng": rng,
        "provenance": provenance(),
    }


def weights_sha256(state_dict):
    """The sha256 of a state dict's names and values (not of a file, which also holds the run's
    flags and paths): two trainings gave the same weights exactly when their hashes are equal."""
    h = hashlib.sha256()
    for k in sorted(state_dict):
        h.update(k.encode())
        h.update(state_dict[k].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def key_digest(key, length=16):
    """A short hash of a plain dict (sorted JSON): the name of a cache file for everything that
    decides its content (a latent cache, a judge, an evaluated point)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:length]


def fingerprint(state_dict):
    """weights_sha256, shortened: identifies an AE in cache keys and DiT checkpoints."""
    return weights_sha256(state_dict)[:16]


def read_autoencoder(path, ae_config=None):
    """What an autoencoder holds: (config, state dict, stored latent scale or None, source).

    `path` is a train_ae.py checkpoint (its EMA weights and config; source "dcae15"), an official
    DC-AE file (.safetensors / .pt) whose preset `ae_config` names (source "official"), a diffusers
    AutoencoderDC folder (source "diffusers"; its config.json says what it is), or a Hugging Face
    Hub id of either kind of repo (`fetch`).
    """
    local = fetch(path)
    if os.path.isdir(local):
        return read_folder(local, path, ae_config)
    raw = dcae15.read_weights(local)
    kind = raw.get("kind")
    if kind == AE_KIND:
        cfg = dcae15.DCAEConfig.from_dict(raw["config"])
        return cfg, raw["ema"], raw.get("latent_scale"), "dcae15"
    if kind is not None:
        raise ValueError(f"{path} is a {kind} checkpoint, not an autoencoder: pass a train_ae.py "
                         f"checkpoint or an official DC-AE file")
    if ae_config is None:
        raise ValueError(f"{path} is not a train_ae.py checkpoint; for an official DC-AE file also "
                         f"pass its preset with --ae-config (one of {sorted(models.AUTOENCODER_CONFIGS)})")
    cfg = models.autoencoder_config(ae_config)
    return cfg, dcae15.autoencoder_state_dict(raw), cfg.scaling_factor, "official"


def read_folder(folder, path, ae_config=None):
    """read_autoencoder for a folder: a diffusers AutoencoderDC, or an official Hub repo's files
    (model.safetensors; its config.json may name the preset as "model_name")."""
    config = {}
    if os.path.isfile(os.path.join(folder, "config.json")):
        with open(os.path.join(folder, "config.json")) as fh:
            config = json.load(fh)
    if "_class_name" in config:  # written by diffusers (or export.py)
        cfg, sd, scale = read_diffusers(folder)
        if ae_config is not None:
            preset = models.autoencoder_config(ae_config)
            preset.scaling_factor = cfg.scaling_factor
            if preset != cfg:
                raise ValueError(f"{path} holds another autoencoder than the preset {ae_config}; "
                                 f"leave out --ae-config for a diffusers folder (its config.json "
                                 f"says what it holds)")
        return cfg, sd, scale, "diffusers"
    official = os.path.join(folder, "model.safetensors")
    if os.path.isfile(official):
        return read_autoencoder(official, ae_config or config.get("model_name"))
    raise ValueError(f"{path} is a folder without autoencoder weights: expected a diffusers "
                     f"AutoencoderDC (config.json and {DIFFUSERS_WEIGHTS}) or an official "
                     f"model.safetensors")


def load_autoencoder(path, ae_config=None, latent_scale=None):
    """The autoencoder a diffusion model works in: (ae in eval mode, latent_scale, info).

    `path` as in `read_autoencoder`. `latent_scale` overrides the stored factor; it is required when
    none is known. `info` is a plain dict that is enough to find and rebuild the AE again (it goes
    into DiT checkpoints).
    """
    cfg, sd, stored_scale, source = read_autoencoder(path, ae_config)
    scale = latent_scale if latent_scale is not None else stored_scale
    if scale is None:
        raise ValueError(f"no latent scaling factor is known for {path}: pass --latent-scale S "
                         f"(1 / RMS of its latents; dcae15.measure_latent_scale computes it)")
    ae = models.autoencoder_class(cfg).from_state_dict(cfg, sd)
    sha256 = weights_sha256(sd)  # hashed once: the fingerprint is its head
    info = {"path": path, "source": source, "ae_config": ae_config, "config": cfg.to_dict(),
            "fingerprint": sha256[:16], "sha256": sha256, "latent_scale": float(scale)}
    return ae.eval().requires_grad_(False), float(scale), info


def dit_config(ckpt):
    """The config of the network a train_dit.py checkpoint holds, of the type that builds it (its
    "backbone": "DiT" or "UViT")."""
    return models.backbone_config(ckpt["backbone"], ckpt["config"])


def load_dit(path, ae_path=None):
    """A train_dit.py checkpoint, ready to sample: (EMA DiT or U-ViT in eval mode, its AE, the
    checkpoint).

    The autoencoder is the one the checkpoint names, or `ae_path` if it has moved; a different AE
    (another fingerprint) is loaded with a warning, since its latents do not match the DiT's.
    """
    ckpt = load_checkpoint(path)
    kind = ckpt.get("kind") if isinstance(ckpt, dict) else None
    if kind != DIT_KIND:
        what = "not a DiT checkpoint"
        if kind == AE_KIND:
            what = "an autoencoder checkpoint (train_ae.py)"
        raise ValueError(f"{path} is {what}; pass a DiT checkpoint written by train_dit.py")
    model = models.build_backbone(dit_config(ckpt))
    model.load_state_dict(dcae15.unwrapped(ckpt["ema"]), strict=True)  # a compiled model's keys too
    info = ckpt["ae"]
    ae_path = ae_path or info["path"]
    try:
        ae, _, new_info = load_autoencoder(ae_path, info["ae_config"], ckpt["latent_scale"])
    except FileNotFoundError as err:
        raise FileNotFoundError(f"the autoencoder this DiT was trained with is missing; pass its "
                                f"new location with --ae-ckpt ({err})") from None
    if new_info["fingerprint"] != info["fingerprint"]:
        warnings.warn(f"{ae_path} is not the autoencoder this DiT was trained with (its weights "
                      f"differ); the samples will not decode correctly")
    return model.eval().requires_grad_(False), ae, ckpt


# --------------------------------------------------------------------------------------------------
# Weights by Hugging Face Hub id

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?")
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


def fetch(path):
    """A local file or folder for a weights path: `path` itself when it exists, else a Hugging
    Face Hub id `org/name` or `org/name@revision`, downloaded (its .json and .safetensors files)
    with the optional package huggingface_hub into its usual cache, and that snapshot's folder.
    Offline, a download that is not cached yet fails with one line that says what to do."""
    if os.path.exists(path):
        return path
    if not HUB_ID.fullmatch(path) or path.endswith(WEIGHT_SUFFIXES):
        raise FileNotFoundError(f"autoencoder weights not found: {path}")
    repo, _, revision = path.partition("@")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ImportError(f"{path} is not a local file or folder; to fetch it as a Hugging Face Hub "
                          f"id, pip install huggingface_hub, or download the repo's files into a "
                          f"folder and pass that folder") from None
    try:
        return snapshot_download(repo, revision=revision or None,
                                 allow_patterns=["*.json", "*.safetensors"])
    except Exception as err:  # offline, unknown repo or revision, no access: huggingface_hub's own
        reason = (str(err) or type(err).__name__).splitlines()[0]
        raise FileNotFoundError(f"{path} is not a local file or folder, and fetching it from the "
                                f"Hugging Face Hub failed ({type(err).__name__}: {reason}); where "
                                f"there is internet, `hf download {repo}` puts it in the cache "
                                f"(`huggingface-cli download` before huggingface_hub 1.0), or "
                                f"download its files into a folder and pass that folder") from None


# --------------------------------------------------------------------------------------------------
# diffusers' AutoencoderDC folders (config.json + diffusion_pytorch_model.safetensors), both ways
#
# diffusers names the same modules differently: the stages are down_blocks / up_blocks, a conv
# with a norm is two siblings, the attention's qkv conv is three linear layers. diffusers has no
# partial latents: encode gives all c channels; decode the first c' by zero-filling the rest, which
# is what the adaptive input conv computes (DCAE.decode). NOTE: the mapping is diffusers'
# AutoencoderDC of version 0.35 and later, the first with the flags of the 1.5 form
# (encoder_out_shortcut, decoder_in_shortcut, decoder_conv_act_fn); an older one ignores them and
# builds the 1.0 shortcuts.

DIFFUSERS_CLASS = "AutoencoderDC"
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
DIFFUSERS_VERSION = "0.35.0"
_BLOCKS = {"ResBlock": "ResBlock", "EViTGLU": "EfficientViTBlock"}  # ours: diffusers'
_NORMS = {"trms2d": "rms_norm", "bn2d": "batch_norm"}
_ACTS = ("silu", "relu")
# AutoencoderDC's defaults, for a config.json that leaves a key out
_DIFFUSERS_DEFAULTS = {
    "in_channels": 3, "latent_channels": 32, "attention_head_dim": 32,
    "encoder_block_types": "ResBlock", "decoder_block_types": "ResBlock",
    "encoder_block_out_channels": (128, 256, 512, 512, 1024, 1024),
    "decoder_block_out_channels": (128, 256, 512, 512, 1024, 1024),
    "encoder_layers_per_block": (2, 2, 2, 3, 3, 3), "decoder_layers_per_block": (3, 3, 3, 3, 3, 3),
    "encoder_qkv_multiscales": ((), (), (), (5,), (5,), (5,)),
    "decoder_qkv_multiscales": ((), (), (), (5,), (5,), (5,)),
    "upsample_block_type": "pixel_shuffle", "downsample_block_type": "pixel_unshuffle",
    "decoder_norm_types": "rms_norm", "decoder_act_fns": "silu", "encoder_out_shortcut": True,
    "decoder_in_shortcut": True, "decoder_conv_act_fn": "relu", "scaling_factor": 1.0}
# our state-dict name -> diffusers', applied in order
_DIFFUSERS_NAMES = [
    # the stem and the head: a ConvLayer (depth_list[0] > 0) is a bare conv in diffusers, a pixel
    # (un)shuffle layer keeps its conv under .conv
    (r"^encoder\.project_in\.conv\.", "encoder.conv_in."),
    (r"^decoder\.project_out\.op_list\.2\.conv\.", "decoder.conv_out."),
    (r"^encoder\.stages\.(\d+)\.op_list\.", r"encoder.down_blocks.\1."),
    (r"^decoder\.stages\.(\d+)\.op_list\.", r"decoder.up_blocks.\1."),
    (r"\.main\.", "."),  # a residual block's body
    (r"\.(conv1|conv2|conv|qkv|proj|inverted_conv|depth_conv|point_conv)\.conv\.", r".\1."),
    (r"\.(conv2|point_conv)\.norm\.", ".norm."),  # the norm after a conv: its sibling in diffusers
    (r"\.proj\.norm\.", ".norm_out."),
    (r"\.context_module\.", ".attn."), (r"\.local_module\.", ".conv_out."),
    (r"\.inverted_conv\.", ".conv_inverted."), (r"\.depth_conv\.", ".conv_depth."),
    (r"\.point_conv\.", ".conv_point."), (r"\.proj\.weight$", ".to_out.weight"),
    (r"^encoder\.project_out\.op_list\.0\.conv\.", "encoder.conv_out."),
    (r"^decoder\.project_in\.conv\.", "decoder.conv_in."),
    (r"^decoder\.project_out\.op_list\.0\.", "decoder.norm_out."),
]


def diffusers_name(name):
    """The diffusers name of one of our state-dict entries (the qkv weight: see to_diffusers)."""
    for pattern, replacement in _DIFFUSERS_NAMES:
        name = re.sub(pattern, replacement, name)
    return name


def diffusers_config(cfg, scaling_factor):
    """The config.json of diffusers' AutoencoderDC for our DCAEConfig; ValueError naming what
    diffusers cannot express."""
    enc, dec = cfg.encoder, cfg.decoder
    n_enc, n_dec = len(enc.width_list), len(dec.width_list)
    enc_blocks = [dcae10.per_stage(enc.block_type, i) for i in range(n_enc)]
    dec_blocks = [dcae10.per_stage(dec.block_type, i) for i in range(n_dec)]
    dec_norms = [dcae10.per_stage(dec.norm, i) for i in range(n_dec)]
    dec_acts = [dcae10.per_stage(dec.act, i) for i in range(n_dec)]
    problems = []
    if any(dcae10.per_stage(enc.norm, i) != "trms2d" for i in range(n_enc)) or enc.act != "silu":
        problems.append("its encoder has another norm or activation than trms2d / silu")
    if dec.out_norm != "trms2d":
        problems.append(f"its decoder's last norm is {dec.out_norm}, not trms2d")
    for i, block in enumerate(dec_blocks):  # diffusers' GLUMBConv: always RMSNorm and SiLU
        if block == "EViTGLU" and (dec_norms[i], dec_acts[i]) != ("trms2d", "silu"):
            problems.append(f"its decoder's EfficientViT stage {i} has {dec_norms[i]} / "
                            f"{dec_acts[i]}, not trms2d / silu")
    if problems:
        raise ValueError("this autoencoder cannot be written as a diffusers AutoencoderDC: "
                         + "; ".join(problems))
    return {
        "_class_name": DIFFUSERS_CLASS, "_diffusers_version": DIFFUSERS_VERSION,
        "in_channels": cfg.in_channels, "latent_channels": cfg.latent_channels,
        "attention_head_dim": 32,  # dcae10.LiteMLA's head width
        "encoder_block_types": [_BLOCKS[b] for b in enc_blocks],
        "decoder_block_types": [_BLOCKS[b] for b in dec_blocks],
        "encoder_block_out_channels": list(enc.width_list),
        "decoder_block_out_channels": list(dec.width_list),
        "encoder_layers_per_block": list(enc.depth_list),
        "decoder_layers_per_block": list(dec.depth_list),
        "encoder_qkv_multiscales": [[]] * n_enc, "decoder_qkv_multiscales": [[]] * n_dec,
        "upsample_block_type": "pixel_shuffle", "downsample_block_type": "pixel_unshuffle",
        "decoder_norm_types": [_NORMS[n] for n in dec_norms], "decoder_act_fns": dec_acts,
        "encoder_out_shortcut": enc.out_shortcut is not None,
        "decoder_in_shortcut": dec.in_shortcut is not None,
        "decoder_conv_act_fn": dec.out_act,
        "scaling_factor": scaling_factor,
    }


def config_from_diffusers(config, where):
    """Our DCAEConfig for a diffusers AutoencoderDC config (a dict of its config.json); ValueError
    naming what this project does not implement."""
    c = {**_DIFFUSERS_DEFAULTS, **config}
    enc_w, dec_w = tuple(c["encoder_block_out_channels"]), tuple(c["decoder_block_out_channels"])

    def stages(value, n):
        return [value] * n if isinstance(value, str) else list(value)

    blocks = {v: k for k, v in _BLOCKS.items()}
    norms = {v: k for k, v in _NORMS.items()}
    enc_blocks = stages(c["encoder_block_types"], len(enc_w))
    dec_blocks = stages(c["decoder_block_types"], len(dec_w))
    dec_norms = stages(c["decoder_norm_types"], len(dec_w))
    dec_acts = stages(c["decoder_act_fns"], len(dec_w))
    problems = [f"{key} {c[key]!r}" for key, ok in (
        ("attention_head_dim", c["attention_head_dim"] == 32),
        ("downsample_block_type", c["downsample_block_type"] == "pixel_unshuffle"),
        ("upsample_block_type", c["upsample_block_type"] == "pixel_shuffle"),
        ("decoder_conv_act_fn", c["decoder_conv_act_fn"] in _ACTS),
        ("encoder_block_types", all(b in blocks for b in enc_blocks)),
        ("decoder_block_types", all(b in blocks for b in dec_blocks)),
        ("decoder_norm_types", all(n in norms for n in dec_norms)),
        ("decoder_act_fns", all(a in _ACTS for a in dec_acts))) if not ok]
    for side, kinds in (("encoder", enc_blocks), ("decoder", dec_blocks)):
        scales = c[f"{side}_qkv_multiscales"]  # the multi-scale attention branches (EViTS5GLU)
        if any(kind == "EfficientViTBlock" and tuple(scales[i]) for i, kind in enumerate(kinds)):
            problems.append(f"{side}_qkv_multiscales {scales!r} (multi-scale attention)")
    if problems:
        raise ValueError(f"{where}: this diffusers AutoencoderDC uses what dcae15 does not "
                         f"implement: {'; '.join(problems)}")
    return dcae15.DCAEConfig(
        in_channels=c["in_channels"], latent_channels=c["latent_channels"],
        scaling_factor=config.get("scaling_factor"),
        encoder=dcae15.EncoderConfig(
            enc_w, tuple(c["encoder_layers_per_block"]), block_type=same(
                [blocks[b] for b in enc_blocks]),
            out_shortcut="averaging" if c["encoder_out_shortcut"] else None),
        decoder=dcae15.DecoderConfig(
            dec_w, tuple(c["decoder_layers_per_block"]),
            block_type=same([blocks[b] for b in dec_blocks]),
            norm=same([norms[n] for n in dec_norms]), act=same(dec_acts),
            out_act=c["decoder_conv_act_fn"],
            in_shortcut="duplicating" if c["decoder_in_shortcut"] else None))


def same(names):
    """One name for every stage when they are all the same (as the presets write it), else a tuple."""
    return names[0] if len(set(names)) == 1 else tuple(names)


def to_diffusers(state_dict):
    """Our autoencoder state dict in diffusers' names and shapes."""
    out = {}
    for name, value in state_dict.items():
        new = diffusers_name(name)
        if new.endswith(".attn.qkv.weight"):  # one 1x1 conv -> three linear layers, q k v
            for part, chunk in zip("qkv", value.flatten(1).chunk(3, dim=0)):
                out[new.replace(".qkv.", f".to_{part}.")] = chunk
        elif new.endswith(".attn.to_out.weight"):
            out[new] = value.flatten(1)
        else:
            out[new] = value
    return out


def from_diffusers(cfg, weights, where):
    """A diffusers AutoencoderDC state dict in our names and shapes, for the model `cfg` builds."""
    with torch.device("meta"):  # shapes only
        own = models.build_autoencoder(cfg).state_dict()
    out, missing, shapes, used = {}, [], [], set()
    for name, like in own.items():
        new = diffusers_name(name)
        parts = [new.replace(".qkv.", f".to_{p}.") for p in "qkv"] if ".attn.qkv." in new else [new]
        used.update(parts)
        if any(p not in weights for p in parts):
            missing += [p for p in parts if p not in weights]
            continue
        value = torch.cat([weights[p] for p in parts]) if len(parts) > 1 else weights[new]
        if value.numel() != like.numel():
            shapes.append(f"{new} {tuple(value.shape)}")
            continue
        out[name] = value.reshape(like.shape)
    unexpected = sorted(set(weights) - used)
    if missing or unexpected or shapes:
        raise ValueError(f"{where} does not match its config.json: {len(missing)} missing "
                         f"{missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}, "
                         f"{len(shapes)} of another shape {shapes[:3]}")
    return out


def save_diffusers(folder, cfg, state_dict, scaling_factor):
    """Write an AutoencoderDC folder: config.json and diffusion_pytorch_model.safetensors (each
    atomically). Needs the optional package safetensors."""
    config = diffusers_config(cfg, scaling_factor)  # before anything is written
    try:
        from safetensors.torch import save_file
    except ImportError:
        raise ImportError("writing a diffusers folder needs the optional package safetensors: "
                          "pip install safetensors") from None
    os.makedirs(folder, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous().clone() for k, v in to_diffusers(state_dict).items()}
    with atomic_write(os.path.join(folder, DIFFUSERS_WEIGHTS), ".safetensors") as tmp:
        save_file(weights, tmp, metadata={"format": "pt"})
    write_json(os.path.join(folder, "config.json"), config)
    return config


def read_diffusers(folder):
    """(config, state dict, scaling factor or None) of an AutoencoderDC folder; another diffusers
    class, or a folder without weights, is a one-line error."""
    with open(os.path.join(folder, "config.json")) as fh:
        config = json.load(fh)
    if config.get("_class_name") != DIFFUSERS_CLASS:
        raise ValueError(f"{folder} holds a diffusers {config.get('_class_name')}, not an "
                         f"{DIFFUSERS_CLASS}: dcae15 reads DC-AE autoencoders only")
    cfg = config_from_diffusers(config, folder)
    index = os.path.join(folder, DIFFUSERS_WEIGHTS + ".index.json")
    if os.path.isfile(index):  # sharded: the index names the file of every tensor
        with open(index) as fh:
            files = sorted(set(json.load(fh)["weight_map"].values()))
    else:
        files = [DIFFUSERS_WEIGHTS]
    weights = {}
    for name in files:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{folder} has a diffusers config.json but no {name}")
        weights.update(dcae15.read_weights(path))
    return cfg, from_diffusers(cfg, weights, folder), config.get("scaling_factor")


# --------------------------------------------------------------------------------------------------
# JSON and arrays

def release_free_memory():
    """Give the C heap's free pages back to the system (glibc's malloc_trim); True if it could.

    NOTE: building a latent cache holds one batch at a time, yet without this the process grows with
    the data set on the CPU: glibc keeps freed blocks in its heaps, and once a second thread is alive
    (the progress bar's monitor, a data loader's) the batches' buffers come from several heaps and
    leave holes it does not return by itself. Elsewhere (macOS, Windows, musl) it does nothing.
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


def save_npz(path, **arrays):
    """np.savez, atomically (`atomic_write`)."""
    with atomic_write(path, ".npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def create_npy(path, shape, dtype):
    """An .npy file of the given shape, its rows still zero (a sparse file): processes then write
    their rows with write_npy_rows, and no process ever holds the whole array."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
              "shape": tuple(shape)}
    try:
        with open(path, "wb") as fh:
            np.lib.format.write_array_header_2_0(fh, header)
            fh.truncate(fh.tell() + int(np.prod(shape)) * np.dtype(dtype).itemsize)
    except OSError as err:
        if os.path.exists(path):
            os.remove(path)
        raise write_failure(path, err) from None


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


def write_npy_rows(path, start, rows):
    """Write `rows` (a numpy array) into the .npy file at `path` from row `start` on, in place (a
    full disk: WriteError; the caller deletes the unfinished file)."""
    try:
        with open(path, "r+b") as fh:
            shape, dtype, offset = npy_layout(fh)
            if rows.shape[1:] != tuple(shape[1:]) or rows.dtype != dtype or start + len(rows) > shape[0]:
                raise ValueError(f"rows {rows.dtype} {rows.shape} at {start} do not fit {path} "
                                 f"({dtype} {shape})")
            fh.seek(offset + start * rows[0].nbytes)
            fh.write(np.ascontiguousarray(rows).tobytes())
    except OSError as err:
        raise write_failure(path, err) from None


def read_npy_rows(fh, shape, dtype, start, count):
    """Rows [start, start + count) of an .npy file open at its data offset + start's position."""
    count = min(count, shape[0] - start)
    row = int(np.prod(shape[1:])) * dtype.itemsize
    # a bytearray, not bytes: the rows stay writable, as torch.from_numpy expects
    return np.frombuffer(bytearray(fh.read(count * row)), dtype=dtype).reshape(count, *shape[1:])


def npz_from_npy(path, members, chunk=1 << 26):
    """An .npz (uncompressed, as np.savez writes) whose arrays are the .npy files `members`
    ({name: .npy path}), copied in chunks of `chunk` bytes; written atomically."""
    with atomic_write(path, ".npz") as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, src in members.items():
                with open(src, "rb") as fin, zf.open(f"{name}.npy", "w", force_zip64=True) as fout:
                    shutil.copyfileobj(fin, fout, chunk)


def npz_batches(path, name="arr_0", batch_size=64, rank=0, world=1):
    """Batches of the array `name` of an .npz, read from the file as they are needed (never the
    whole array in memory), this rank's share (batch k goes to rank k % world); with the shape."""
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
    """json.dump, atomically (`atomic_write`)."""
    with atomic_write(path) as tmp, open(tmp, "w") as fh:
        json.dump(obj, fh, indent=1)
