"""
checkpoint.py: every file this project writes and reads, in one room.

- Checkpoints: plain dicts of tensors and plain values, loaded with weights_only=True, told apart by
  their "kind": `ae_checkpoint` (train_ae.py) and `dit_checkpoint` (train_dit.py) say what they hold;
  `load_autoencoder` and `load_dit` read them back, with official DC-AE weight files too.
- Atomic writes: every file goes to a temp file that is renamed into place, so a crash never leaves
  a half-written checkpoint, table or picture under the real name.
- Arrays: .npy files written row by row by several processes (the latent cache, the samples), and
  .npz files read batch by batch (FID of 50,000 samples without holding them).

The models themselves are dcae15.py's; official state dicts load through dcae15.load_official_dcae.
"""

import contextlib
import hashlib
import json
import os
import pickle
import shutil
import warnings
import zipfile

import numpy as np
import torch

import dcae15

# --------------------------------------------------------------------------------------------------
# Checkpoints

AE_KIND = "dcae15-ae"  # train_ae.py
DIT_KIND = "dcae15-dit"  # train_dit.py


@contextlib.contextmanager
def atomic_write(path, suffix=""):
    """Yields a temp file name in the folder of `path` (ending in `suffix`, for writers that go by
    the extension); when the block ends without an error, the temp file is renamed over `path`.
    A crash mid-write leaves the previous file intact and no temp file behind."""
    tmp = f"{path}.tmp{os.getpid()}{suffix}"  # same folder: os.replace is an atomic rename
    try:
        yield tmp
        os.replace(tmp, path)
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
    """Load a checkpoint safely (weights_only=True: no pickled code runs) onto the CPU.

    A missing, truncated or corrupt file, or one that needs unpickling, raises an error of one line
    that names the file.
    """
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
        "rng": rng,  # every rank's RNG states (common.gather_rng_states)
    }


def dit_checkpoint(cfg, weights, step, args, rng, ae_info, latent_scale, num_classes,
                   aug_channel_choices, objective, class_names=None):
    """The checkpoint train_dit.py writes; `weights` holds the whole "model", "ema" and "opt" state
    dicts (trainer.whole_state_dicts), `ae_info` (from load_autoencoder) names its AE and
    `objective` ("ddpm" or "flow") says what the model predicts, hence how to sample it."""
    return {
        "kind": DIT_KIND,
        "backbone": dcae15.BACKBONES[type(cfg)].__name__,  # "DiT" or "UViT": what `config` builds
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
    }


def read_state_dict(path):
    """The tensors of a weights file: .safetensors, or .pt/.pth holding {"state_dict": ...}, a state
    dict, or one of our checkpoints (returned whole)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"autoencoder weights not found: {path}")
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError as err:
            raise ImportError(f"reading {path} needs the optional package safetensors: "
                              f"pip install safetensors") from err
        try:
            return load_file(path, device="cpu")
        except Exception as err:  # safetensors' own error type for a bad header or a short file
            raise ValueError(f"{path} cannot be read (truncated or corrupt?): {err}") from None
    sd = load_checkpoint(path)
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ValueError(f"{path} holds a {type(sd).__name__}, not a state dict")
    return sd


def fingerprint(state_dict):
    """A short hash of a state dict's names and values: identifies an AE (cache key, DiT pair)."""
    h = hashlib.sha256()
    for k in sorted(state_dict):
        h.update(k.encode())
        h.update(state_dict[k].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()[:16]


def read_autoencoder(path, ae_config=None):
    """What an autoencoder file holds: (config, state dict, stored latent scale or None, source).

    `path` is a train_ae.py checkpoint (its EMA weights and config; source "dcae15") or an official
    DC-AE file (.safetensors / .pt) whose preset `ae_config` names (source "official").
    """
    raw = read_state_dict(path)
    kind = raw.get("kind")
    if kind == AE_KIND:
        cfg = dcae15.DCAEConfig.from_dict(raw["config"])
        return cfg, raw["ema"], raw.get("latent_scale"), "dcae15"
    if kind is not None:
        raise ValueError(f"{path} is a {kind} checkpoint, not an autoencoder: pass a train_ae.py "
                         f"checkpoint or an official DC-AE file")
    if ae_config is None:
        raise ValueError(f"{path} is not a train_ae.py checkpoint; for an official DC-AE file also "
                         f"pass its preset with --ae-config (one of {sorted(dcae15.DCAE_CONFIGS)})")
    cfg = dcae15.build_dcae_config(ae_config)
    return cfg, dcae15.autoencoder_state_dict(raw), cfg.scaling_factor, "official"


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
    ae = dcae15.DCAE(cfg)
    dcae15.check_state_dict(ae, sd)
    ae.load_state_dict(sd, strict=True)
    info = {"path": path, "source": source, "ae_config": ae_config, "config": cfg.to_dict(),
            "fingerprint": fingerprint(sd), "latent_scale": float(scale)}
    return ae.eval().requires_grad_(False), float(scale), info


def dit_config(ckpt):
    """The config of the network a train_dit.py checkpoint holds, of the type that builds it: its
    "backbone" names the network ("DiT" or "UViT"; checkpoints written before the U-ViT: a DiT)."""
    kinds = {model.__name__: config for config, model in dcae15.BACKBONES.items()}
    backbone = ckpt.get("backbone", "DiT")
    if backbone not in kinds:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {sorted(kinds)}")
    return kinds[backbone].from_dict(ckpt["config"])


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
    ckpt.setdefault("objective", "ddpm")  # checkpoints written before flow matching existed
    model = dcae15.build_backbone(dit_config(ckpt))
    # a state dict of a torch.compile'd (or DDP) model has its keys under "_orig_mod." ("module.")
    ema = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in ckpt["ema"].items()}
    model.load_state_dict(ema, strict=True)
    info = ckpt["ae"]
    ae_path = ae_path or info["path"]
    if not os.path.isfile(ae_path):
        raise FileNotFoundError(f"the autoencoder this DiT was trained with, {ae_path}, is "
                                f"missing; pass its new location with --ae-ckpt")
    ae, _, new_info = load_autoencoder(ae_path, info["ae_config"], ckpt["latent_scale"])
    if new_info["fingerprint"] != info["fingerprint"]:
        warnings.warn(f"{ae_path} is not the autoencoder this DiT was trained with (its weights "
                      f"differ); the samples will not decode correctly")
    return model.eval().requires_grad_(False), ae, ckpt


# --------------------------------------------------------------------------------------------------
# JSON and arrays

def save_npz(path, **arrays):
    """np.savez, atomically (`atomic_write`)."""
    with atomic_write(path, ".npz") as tmp, open(tmp, "wb") as fh:
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
