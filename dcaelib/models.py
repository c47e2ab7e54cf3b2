"""
models.py: every network the scripts can build, by preset name or by config: the autoencoders
(DC-AE 1.5 from dcae15.py, DC-AE 1.0 from dcae10.py) and the diffusion backbones (DiT from dcae15.py,
U-ViT from uvit.py). A checkpoint stores a config; these turn it back into the right network.
"""

import dcae15
from dcaelib import dcae10, uvit

# NOTE: ours, for the channel trade-off study (experiments/channel_tradeoff.sh, the paper's Fig. 1b in
# miniature): the classroom AE with fewer latent channels, which reconstruct worse and are easier
# for a diffusion model to learn.
_CLASSROOM = dcae15.DCAE_CONFIGS["dc-ae-f16c64-classroom"]
STUDY_CONFIGS = {f"dc-ae-f16c{c}-classroom": dcae15.DCAEConfig.from_dict(
    {**_CLASSROOM.to_dict(), "latent_channels": c}) for c in (32, 16)}

# NOTE: ours, for the README's first look (experiments/first_look.sh): the classroom AE at half its
# width (2.1 M parameters, about a quarter of its FLOPs) with the same 64 x 4 x 4 latent, so that it
# draws the shapes within minutes (RESULTS.md, "First look").
_HALF = {part: {**_CLASSROOM.to_dict()[part], "width_list": (8, 16, 32, 64, 128)}
         for part in ("encoder", "decoder")}
STUDY_CONFIGS["dc-ae-f16c64-mini"] = dcae15.DCAEConfig.from_dict({**_CLASSROOM.to_dict(), **_HALF})

AUTOENCODER_CONFIGS = {**dcae15.DCAE_CONFIGS, **STUDY_CONFIGS, **dcae10.DCAE10_CONFIGS}


def autoencoder_config(name):
    """A fresh copy of any autoencoder preset (1.5, 1.0 or a study's)."""
    if name not in AUTOENCODER_CONFIGS:
        raise ValueError(f"unknown autoencoder preset {name!r}; choose one of "
                         f"{sorted(AUTOENCODER_CONFIGS)}")
    return dcae15.DCAEConfig.from_dict(AUTOENCODER_CONFIGS[name].to_dict())


def autoencoder_class(cfg):
    """dcae15.DCAE for the 1.5 form, dcae10.DCAE10 for a config with DC-AE 1.0's parts."""
    try:
        dcae15.DCAE.check_config(cfg)
    except ValueError:
        return dcae10.DCAE10
    return dcae15.DCAE


def build_autoencoder(cfg):
    return autoencoder_class(cfg)(cfg)


# NOTE: ours, for the scaling study (experiments/scaling.sh): the classroom DiT and U-ViT at half and
# twice their width (about 1/4 and 4x the parameters), heads of 32 channels.
DIT_STUDY_CONFIGS = {"DiT-classroom-S": dict(depth=6, hidden_size=64, num_heads=2),
                     "DiT-classroom-L": dict(depth=6, hidden_size=256, num_heads=8)}

# The diffusion backbones: name -> (config type, network, presets). A train_dit.py checkpoint
# stores the name ("backbone") and the config.
BACKBONES = {"DiT": (dcae15.DiTConfig, dcae15.DiT, {**dcae15.DiT_CONFIGS, **DIT_STUDY_CONFIGS}),
             "UViT": (uvit.UViTConfig, uvit.UViT, uvit.UVIT_CONFIGS)}
BACKBONE_PRESETS = [name for _, _, presets in BACKBONES.values() for name in presets]


def build_backbone_config(name, **kwargs):
    """The config of a DiT or U-ViT preset (DiT-XL, UViT-2B, ...), with keyword overrides."""
    for config_type, _, presets in BACKBONES.values():
        if name in presets:
            return config_type(**{**presets[name], **kwargs})
    raise ValueError(f"unknown diffusion model {name!r}; choose one of {sorted(BACKBONE_PRESETS)}")


def backbone_name(cfg):
    """"DiT" or "UViT": the network a config builds (by its exact type)."""
    return next(name for name, (config_type, _, _) in BACKBONES.items() if type(cfg) is config_type)


def build_backbone(cfg):
    return BACKBONES[backbone_name(cfg)][1](cfg)


def backbone_config(name, config_dict):
    """A stored config (a checkpoint's "config") back as the config type of the network `name`."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    return BACKBONES[name][0].from_dict(config_dict)
