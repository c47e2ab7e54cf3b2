"""dcae15.py: DC-AE 1.5 in one file. The autoencoder, its structured latent space, its loss and training
phases, a DiT, the diffusion objectives with augmented diffusion training and their samplers, and the
official weights. Needs only torch (lpips for the perceptual loss, safetensors for .safetensors files):
copied alone into a notebook, all of it works.

Papers:
  DC-AE      Chen et al., "Deep Compression Autoencoder for Efficient High-Resolution Diffusion
             Models", arXiv 2410.10733
  DC-AE 1.5  Chen et al., "DC-AE 1.5: Accelerating Diffusion Model Convergence with Structured
             Latent Space", ICCV 2025, arXiv 2508.00413
  DiT        Peebles & Xie, "Scalable Diffusion Models with Transformers", arXiv 2212.09748
  SiT        Ma et al., "SiT: Exploring Flow and Diffusion-based Generative Models with Scalable
             Interpolant Transformers", arXiv 2401.08740
  DDPM/DDIM  Ho et al., arXiv 2006.11239; Song et al., arXiv 2010.02502

Map of this file (section -> paper):
  1. Configs                       -> DC-AE 1.5 model zoo (f32c128 / f64c128), DC-AE Sec. 3
  2. Autoencoder building blocks   -> DC-AE Sec. 3.2 "residual autoencoding" (space-to-channel)
  3. Encoder / Decoder / DCAE      -> DC-AE Fig. 4; DC-AE 1.5 adaptive in/out convs
  4. Structured latent space       -> DC-AE 1.5 Sec. 3 "Structured Latent Space": mask_{c,c'}, c'
  5. Autoencoder loss and phases   -> DC-AE Sec. 3.3: L1 + perceptual (LPIPS) + GAN, three phases
  6. DiT                           -> DiT Sec. 3 (adaLN-Zero blocks)
  7. Diffusion objectives          -> DDPM eq. 14 (eps-prediction), SiT's linear flow, DC-AE 1.5 Sec. 3
                                      "Augmented Diffusion Training", DDIM eq. 12, Heun, guidance
  8. Weights and the latent scale  -> the official checkpoints, the latent scaling factor

Conventions: images are (B, 3, H, W) in [-1, 1]; latents are (B, C, H/f, W/f) with f the spatial
compression; c is the number of latent channels (`latent_channels`) and c' <= c the number a partial
latent keeps (`c_prime`). Module and parameter names follow the official DC-Gen code, so official state
dicts load key for key. dcaelib/ holds DC-AE 1.0, the U-ViT, tiled coding and what the scripts share.
"""

import math
import os
import warnings
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint


# 1. Configs ---------------------------------------------------------------------------------------

# block_type, norm and act: one name for every stage, or a tuple of one per stage (DC-AE 1.0).
@dataclass
class EncoderConfig:
    width_list: tuple = (128, 256, 512, 512, 1024, 1024)  # channels of stage i (at H / 2^i)
    depth_list: tuple = (0, 5, 10, 4, 4, 4)  # blocks per stage; depth 0 at stage 0 = pixel-unshuffle stem
    block_type: object = "ResBlock"  # or "EViTGLU" (DC-AE 1.0's deep stages)
    norm: object = "trms2d"  # channel RMSNorm with weight and bias (official name "trms2d")
    act: str = "silu"
    out_shortcut: Optional[str] = None  # DC-AE 1.0 adds a channel-averaging shortcut around the last conv


@dataclass
class DecoderConfig:
    width_list: tuple = (128, 256, 512, 512, 1024, 1024)
    depth_list: tuple = (0, 5, 10, 4, 4, 4)
    block_type: object = "ResBlock"
    norm: object = "trms2d"  # 1.0: "bn2d" (BatchNorm) in the shallow stages
    act: object = "silu"
    out_norm: str = "trms2d"  # norm and act before the last (pixel-shuffle) conv
    out_act: str = "silu"  # DC-AE 1.5 uses SiLU here; DC-AE 1.0 used ReLU
    in_shortcut: Optional[str] = None  # DC-AE 1.0 adds a channel-duplicating shortcut around the first conv


@dataclass
class DCAEConfig:
    in_channels: int = 3
    latent_channels: int = 128  # c (the official encode(x, latent_channels=c') means c': here `c_prime`)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    scaling_factor: Optional[float] = None  # latents x this before diffusion (~1 / RMS); None: measure it

    @classmethod
    def from_dict(cls, d):
        d = dict(d)
        def tuples(part):  # lists (as a checkpoint may hold them) back to tuples
            return {k: tuple(v) if isinstance(v, list) else v for k, v in part.items()}
        enc = EncoderConfig(**tuples(d.pop("encoder")))
        dec = DecoderConfig(**tuples(d.pop("decoder")))
        return cls(encoder=enc, decoder=dec, **d)

    def to_dict(self):
        return asdict(self)  # plain ints, floats, strings and tuples: safe for torch.load(weights_only=True)

    @property
    def spatial_compression_ratio(self):
        return 2 ** (len(self.encoder.width_list) - 1)  # a halving per stage but the last: f32 has 6, f64 7

    def check_image_size(self, size, what="image size"):
        """A clear error for a size (an int, or "HxW" with both sides checked) not a multiple of f."""
        f = self.spatial_compression_ratio
        if any(int(side) % f for side in str(size).split("x")):
            raise ValueError(f"{what} {size} is not divisible by the spatial compression {f} of "
                             f"this autoencoder; resize or crop to a multiple of {f}")


def _dcae_config(width_list, depth_list, latent_channels, scaling_factor=None):
    return DCAEConfig(latent_channels=latent_channels, scaling_factor=scaling_factor,
                      encoder=EncoderConfig(tuple(width_list), tuple(depth_list)),
                      decoder=DecoderConfig(tuple(width_list), tuple(depth_list)))


DCAE_CONFIGS = {
    # The two official DC-AE 1.5 autoencoders (DC-Gen `dc_ae_f32_1_5` / `dc_ae_f64_1_5`).
    "dc-ae-f32c128-1.5": _dcae_config([128, 256, 512, 512, 1024, 1024], [0, 5, 10, 4, 4, 4], 128),
    # 0.5935 is the factor the official code pairs with this AE for its USiT models.
    "dc-ae-f64c128-1.5": _dcae_config([128, 256, 512, 512, 1024, 1024, 1024],
                                      [0, 5, 10, 4, 4, 4, 4], 128, 0.5935),
    # Classroom: 64x64 images -> 4x4x64 latents, the paper's regime (deep compression f16, many
    # channels) at a size a laptop CPU trains. NOTE: our own choice, not an official model.
    "dc-ae-f16c64-classroom": _dcae_config([16, 32, 64, 128, 256], [0, 1, 1, 2, 2], 64),
    "dc-ae-tiny": _dcae_config([8, 16, 32], [0, 1, 1], 8),  # unit tests (the fact sheet's 34-key instance)
}


def build_dcae_config(name):
    """A fresh copy (the caller may edit it) of a preset."""
    if name not in DCAE_CONFIGS:
        raise ValueError(f"unknown autoencoder preset {name!r}; choose one of {sorted(DCAE_CONFIGS)}")
    return DCAEConfig.from_dict(DCAE_CONFIGS[name].to_dict())


# 2. Autoencoder building blocks -------------------------------------------------------------------

class RMSNorm2d(nn.Module):
    """Channel RMSNorm, no mean subtraction: x / sqrt(mean_c(x^2) + eps) * weight + bias. In fp32, as the
    official Triton kernel: in bf16 the mean of squares of large activations overflows or loses bits."""
    def __init__(self, channels, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x):  # (B, C, H, W)
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(dim=1, keepdim=True) + self.eps)
        y = y * self.weight.float()[:, None, None] + self.bias.float()[:, None, None]
        return y.to(x.dtype)


def build_norm(name, channels):
    if name is None:
        return None
    if name == "trms2d":
        return RMSNorm2d(channels)
    if name == "bn2d":  # DC-AE 1.0's decoder; its running statistics are used in eval mode
        return nn.BatchNorm2d(channels)
    raise ValueError(f"unsupported norm {name!r}; choose 'trms2d' (channel RMSNorm) or 'bn2d'")


def build_act(name):
    acts = {None: None, "silu": nn.SiLU, "relu": nn.ReLU}
    if name not in acts:
        raise ValueError(f"unsupported activation {name!r}; choose one of {[k for k in acts if k]}")
    return acts[name]() if acts[name] else None


class ConvLayer(nn.Module):
    """conv -> optional norm -> optional act; `conv` and `norm` named as in the official code."""
    def __init__(self, in_channels, out_channels, kernel_size=3, bias=True, norm=None, act=None, groups=1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2,
                              bias=bias, groups=groups)
        self.norm = build_norm(norm, out_channels)
        self.act = build_act(act)

    def forward(self, x):
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.act is not None:
            x = self.act(x)
        return x


# Two near-identical names, both official (the state-dict keys need them): ResBlock is the body of
# a residual block (two convs), ResidualBlock adds the shortcut around any body.
class ResBlock(nn.Module):
    def __init__(self, channels, norm, act):
        super().__init__()
        self.conv1 = ConvLayer(channels, channels, 3, bias=True, act=act)
        self.conv2 = ConvLayer(channels, channels, 3, bias=False, norm=norm)  # norm follows: no bias

    def forward(self, x):
        return self.conv2(self.conv1(x))


class ResidualBlock(nn.Module):
    """main(x) + shortcut(x); the shortcut has no parameters (identity, or a pixel shuffle)."""
    def __init__(self, main, shortcut):
        super().__init__()
        self.main = main
        self.shortcut = shortcut

    def forward(self, x):
        return self.main(x) + self.shortcut(x)


def checkpointed(module, *inputs):
    """module(*inputs), its activations recomputed in backward: less memory, about one forward more."""
    if torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(module, *inputs, use_reentrant=False)
    return module(*inputs)


class OpSequential(nn.Module):
    """nn.Sequential under the official name `op_list`: state-dict keys read `...op_list.<j>...`."""
    def __init__(self, ops):
        super().__init__()
        self.op_list = nn.ModuleList(ops)
        self.grad_checkpointing = False  # DCAE.set_grad_checkpointing: one op (block) at a time

    def forward(self, x):
        for op in self.op_list:
            x = checkpointed(op, x) if self.grad_checkpointing else op(x)
        return x


class ConvPixelUnshuffleDownsample(nn.Module):  # learned 2x downsample
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv = ConvLayer(in_channels, out_channels // 4, 3, bias=True)

    def forward(self, x):  # (B, Cin, H, W) -> (B, Cout, H/2, W/2)
        return F.pixel_unshuffle(self.conv(x), 2)


class ChannelAveragingDownsample(nn.Module):
    """DC-AE's non-parametric shortcut ("residual autoencoding", Sec. 3.2): lossless space-to-channel,
    then the mean of groups of 4C/out channels. The learned path only has to model the residual."""
    def __init__(self, in_channels, out_channels, factor=2):  # factor 1: a plain channel-group mean
        super().__init__()
        self.factor = factor
        self.group = in_channels * factor**2 // out_channels

    def forward(self, x):  # (B, Cin, H, W) -> (B, Cout, H/f, W/f)
        x = F.pixel_unshuffle(x, self.factor)
        B, C, H, W = x.shape
        return x.view(B, C // self.group, self.group, H, W).mean(dim=2)


class ConvPixelShuffleUpsample(nn.Module):  # learned 2x upsample
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv = ConvLayer(in_channels, out_channels * 4, 3, bias=True)

    def forward(self, x):  # (B, Cin, H, W) -> (B, Cout, 2H, 2W)
        return F.pixel_shuffle(self.conv(x), 2)


class ChannelDuplicatingUpsample(nn.Module):
    """Non-parametric shortcut: repeat each channel, then channel-to-space (4 repeats = nearest 2x)."""
    def __init__(self, in_channels, out_channels, factor=2):  # factor 1: repeat channels only
        super().__init__()
        self.factor = factor
        self.repeats = out_channels * factor**2 // in_channels

    def forward(self, x):  # (B, Cin, H, W) -> (B, Cout, f H, f W)
        return F.pixel_shuffle(x.repeat_interleave(self.repeats, dim=1), self.factor)


class AdaptiveOutputConv(nn.Module):
    """The encoder's last conv (DC-AE 1.5 `AdaptiveOutputConvLayer`); it may emit its first c' only: output
    channel k depends only on weight[k], so the first c' rows give exactly encode(x)[:, :c'] at c'/c cost."""
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=True)

    def forward(self, x, out_channels=None):  # (B, Cin, h, w) -> (B, c', h, w)
        c = self.conv.out_channels if out_channels is None else out_channels
        return F.conv2d(x, self.conv.weight[:c], self.conv.bias[:c], padding=1)


class AdaptiveInputConv(nn.Module):
    """The decoder's first conv (DC-AE 1.5 `AdaptiveInputConvLayer`), for any c' <= c channels: using the
    first c' input columns of the weight (and the whole bias) is exactly the full conv of z * mask_{c,c'}."""
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=True)

    def forward(self, z):  # (B, c', h, w) -> (B, Cout, h, w)
        return F.conv2d(z, self.conv.weight[:, : z.shape[1]], self.conv.bias, padding=1)


# 3. Encoder / Decoder / DCAE ----------------------------------------------------------------------

def _check_lists(width_list, depth_list, who):
    if len(width_list) != len(depth_list) or len(width_list) < 2:
        raise ValueError(f"{who}: width_list and depth_list need the same length >= 2, got "
                         f"{width_list}, {depth_list}")
    if any(d <= 0 for d in depth_list[1:]):
        raise ValueError(f"{who}: every stage after the first needs depth >= 1 (a zero-depth stage "
                         f"would skip its resampling), got depth_list={depth_list}")
    if any(w % 4 for w in width_list[1:]):
        raise ValueError(f"{who}: widths must be multiples of 4 for the pixel (un)shuffle layers, "
                         f"got {width_list}")


class Encoder(nn.Module):
    """Images to the first c' latent channels: stem, stages of residual blocks that each end in a
    2x downsample with its channel-averaging shortcut, and the adaptive output conv."""
    def __init__(self, cfg: DCAEConfig):
        super().__init__()
        self.cfg = cfg
        e = cfg.encoder
        w, d = e.width_list, e.depth_list
        _check_lists(w, d, "encoder")
        # Stem. With depth_list[0] == 0 (all DC-AE 1.5 models) stage 0 is skipped and the stem
        # itself is a learned 2x downsample without shortcut: 3 channels have nothing to average.
        if d[0] > 0:
            self.project_in = ConvLayer(cfg.in_channels, w[0], 3, bias=True)
        else:
            self.project_in = ConvPixelUnshuffleDownsample(cfg.in_channels, w[1])
        # stages[i] works at width[i]. A depth-0 stage stays an empty OpSequential: it holds no keys
        # but keeps the official stage indices (the f32 encoder's first keys are under stages.1).
        self.stages = nn.ModuleList()
        for i in range(len(w)):
            ops = [self.block(i, w[i]) for _ in range(d[i])]
            if i < len(w) - 1 and d[i] > 0:  # downsample at the end of every stage but the last
                ops.append(ResidualBlock(ConvPixelUnshuffleDownsample(w[i], w[i + 1]),
                                         ChannelAveragingDownsample(w[i], w[i + 1])))
            self.stages.append(OpSequential(ops))
        # DC-AE 1.5 drops 1.0's averaging shortcut here: latent channel k of the shortcut is the
        # mean of a fixed group of features, which a partial latent cuts off with it.
        self.project_out = OpSequential([AdaptiveOutputConv(w[-1], cfg.latent_channels)])

    def block(self, i, channels):
        """A residual block of stage i (DC-AE 1.0's file gives its deep stages other blocks)."""
        e = self.cfg.encoder
        return ResidualBlock(ResBlock(channels, e.norm, e.act), nn.Identity())

    def forward(self, x, c_prime=None):  # (B, 3, H, W) -> (B, c', H/f, W/f)
        x = self.project_in(x)  # (B, width[1], H/2, W/2)
        for stage in self.stages:  # empty stages (depth 0) pass x through unchanged
            x = stage(x)
        return self.to_latent(x, c_prime)  # (B, width[-1], H/f, W/f) -> (B, c', H/f, W/f)

    def to_latent(self, x, c_prime):
        # the op_list of one conv keeps the official key encoder.project_out.op_list.0.conv.weight
        return self.project_out.op_list[0](x, out_channels=c_prime)


class Decoder(nn.Module):
    """The first c' latent channels to images: the adaptive input conv, stages that each start with a 2x
    upsample and its channel-duplicating shortcut, and the head (norm, act, pixel-shuffle conv)."""
    def __init__(self, cfg: DCAEConfig):
        super().__init__()
        self.cfg = cfg
        dc = cfg.decoder
        w, d = dc.width_list, dc.depth_list
        _check_lists(w, d, "decoder")
        self.project_in = AdaptiveInputConv(cfg.latent_channels, w[-1])  # no shortcut in 1.5
        self.stages = nn.ModuleList()  # stages[i] at width[i], as in the encoder: the official keys
        for i in range(len(w)):
            ops = []
            if i < len(w) - 1 and d[i] > 0:  # stage i starts by upsampling from stage i+1's resolution
                ops.append(ResidualBlock(ConvPixelShuffleUpsample(w[i + 1], w[i]),
                                         ChannelDuplicatingUpsample(w[i + 1], w[i])))
            ops += [self.block(i, w[i]) for _ in range(d[i])]
            self.stages.append(OpSequential(ops))
        # Head: norm, act (index 1 holds no parameters but takes a key index), then the last conv,
        # with depth_list[0] == 0 a learned 2x upsample to 3 channels, mirroring the encoder stem.
        c = w[0] if d[0] > 0 else w[1]
        if d[0] > 0:
            last = ConvLayer(c, cfg.in_channels, 3, bias=True)
        else:
            last = ConvPixelShuffleUpsample(c, cfg.in_channels)
        self.project_out = OpSequential([build_norm(dc.out_norm, c), build_act(dc.out_act), last])

    def block(self, i, channels):
        """A residual block of stage i (DC-AE 1.0's file gives other blocks, norms and acts)."""
        dc = self.cfg.decoder
        return ResidualBlock(ResBlock(channels, dc.norm, dc.act), nn.Identity())

    def forward(self, z):  # (B, c', h, w) -> (B, 3, H, W)
        x = self.project_in(z)  # (B, width[-1], h, w); missing channels act as zeros
        for stage in reversed(self.stages):  # deepest stage first; stage i ends at H / 2^i
            x = stage(x)
        return self.project_out(x)


class DCAE(nn.Module):
    """Deep Compression Autoencoder with the DC-AE 1.5 adaptive latent: encode(x, c') gives the first c'
    channels, decode(z) takes any c' <= c (the missing ones act as zeros). No KL term, no quantisation."""
    PRESETS = DCAE_CONFIGS  # what from_pretrained builds (dcaelib/dcae10.py: DC-AE 1.0's)
    encoder_class, decoder_class = Encoder, Decoder

    def __init__(self, cfg: DCAEConfig):
        super().__init__()
        self.check_config(cfg)
        self.cfg = cfg
        self.encoder = self.encoder_class(cfg)  # the only children: official keys "encoder.", "decoder."
        self.decoder = self.decoder_class(cfg)

    @staticmethod
    def check_config(cfg):
        e, d = cfg.encoder, cfg.decoder
        if (e.out_shortcut, d.in_shortcut) != (None, None) or "EViTGLU" in (
                *_as_tuple(e.block_type), *_as_tuple(d.block_type)):
            raise ValueError("a DC-AE 1.0 config (EfficientViT blocks or latent shortcuts): build "
                             "it with dcaelib.dcae10.DCAE10, or dcaelib.models.build_autoencoder")

    @property
    def latent_channels(self):  # c
        return self.cfg.latent_channels

    @property
    def spatial_compression_ratio(self):
        return self.cfg.spatial_compression_ratio

    def check_images(self, x):
        if x.dim() != 4 or x.shape[1] != self.cfg.in_channels:
            raise ValueError(f"expected images of shape (B, {self.cfg.in_channels}, H, W), got "
                             f"{tuple(x.shape)}")
        self.cfg.check_image_size(f"{x.shape[2]}x{x.shape[3]}")

    def set_grad_checkpointing(self, enable=True):
        """Activation checkpointing (timm's name) per residual block, not per stage: a deep stage holds
        most of the activations, and its blocks can be recomputed one at a time."""
        for stage in [*self.encoder.stages, *self.decoder.stages]:
            stage.grad_checkpointing = enable
        return self

    def check_c_prime(self, c_prime):
        c = self.cfg.latent_channels
        if c_prime is not None and not (isinstance(c_prime, int) and 1 <= c_prime <= c):
            raise ValueError(f"c' must be an int in [1, {c}], got {c_prime!r}")

    def encode(self, x, c_prime=None):  # (B, 3, H, W) -> (B, c', H/f, W/f)
        self.check_images(x)
        self.check_c_prime(c_prime)
        return self.encoder(x, c_prime)

    def decode(self, z):  # (B, c', h, w) -> (B, 3, h*f, w*f)
        if z.dim() != 4 or not (1 <= z.shape[1] <= self.cfg.latent_channels):
            raise ValueError(f"expected a latent of shape (B, c', h, w) with 1 <= c' <= "
                             f"{self.cfg.latent_channels}, got {tuple(z.shape)}")
        return self.decoder(z)

    def forward(self, x, c_prime=None):
        """D(E(x) * mask_{c,c'}) -> (x_rec, z). c_prime None: all c channels; an int: one c' for the batch,
        only c' channels computed; a (B,) tensor: one c' per sample, the full latent masked. A list of
        these: one encoder pass, a decoder pass each (as the official `num_sample_latent_channels`) ->
        ([x_rec, ...], z); tensors keep the shapes fixed for train_ae.py --compile."""
        if isinstance(c_prime, (list, tuple)):
            if isinstance(c_prime[0], torch.Tensor):
                z = self.encode(x)
                return [self.decode(z * channel_mask(self.latent_channels, c).to(z.dtype))
                        for c in c_prime], z
            z = self.encode(x, max(c_prime))  # the trunk runs once
            return [self.decode(z[:, :c]) for c in c_prime], z
        if isinstance(c_prime, torch.Tensor):
            z = self.encode(x)  # (B, c, h, w)
            z = z * channel_mask(self.cfg.latent_channels, c_prime).to(z.dtype)  # zero channels >= c'_i
        else:
            z = self.encode(x, c_prime)  # (B, c', h, w): the truncated latent
        return self.decode(z), z

    @classmethod
    def from_state_dict(cls, cfg, state_dict):
        """An autoencoder of `cfg` with these weights, loaded strictly (`check_state_dict`). Keys outside
        "encoder." / "decoder." are dropped, as the official loader does, as are DDP / compile prefixes."""
        sd = autoencoder_state_dict(state_dict)
        ae = cls(cfg)
        check_state_dict(ae, sd)
        ae.load_state_dict(sd, strict=True)
        return ae.eval()

    @classmethod
    def from_pretrained(cls, weights, preset):
        """(ae in eval mode, latent scaling factor) of a preset; `weights`: a state dict, a .pt or the
        model.safetensors of the Hugging Face repos dc-ai/dc-ae-f32c128-1.5 / -f64c128-1.5. The factor is
        None where the official code gives none (f32c128-1.5): measure it with `measure_latent_scale`."""
        if preset not in cls.PRESETS:
            raise ValueError(f"unknown autoencoder preset {preset!r} for {cls.__name__}; choose one "
                             f"of {sorted(cls.PRESETS)}")
        cfg = DCAEConfig.from_dict(cls.PRESETS[preset].to_dict())
        state_dict = read_weights(weights) if isinstance(weights, (str, os.PathLike)) else weights
        if cfg.scaling_factor is None:
            warnings.warn(f"no official latent scaling factor is known for {preset}; measure it "
                          f"on your data with dcae15.measure_latent_scale (1 / RMS of the latents) "
                          f"before training a diffusion model")
        return cls.from_state_dict(cfg, state_dict), cfg.scaling_factor


def _as_tuple(value):  # a config value given once for every stage, or one per stage
    return value if isinstance(value, (tuple, list)) else (value,)


# 4. Structured latent space (DC-AE 1.5, Sec. 3) ---------------------------------------------------

def channel_mask(latent_channels, c_prime, device=None):
    """mask_{c,c'} = (1 x c', 0 x (c - c')), shaped to broadcast over (B, C, H, W): c_prime an int ->
    (1, C, 1, 1); a (B,) tensor -> one mask per sample, (B, C, 1, 1). DC-AE 1.5: "we randomly sample c'
    channels ... and reconstruct from z * mask_{c,c'}", so the front channels must carry the object
    structure on their own and later channels add detail."""
    c = latent_channels
    if isinstance(c_prime, torch.Tensor):  # per-sample c': one row of the mask per sample
        if c_prime.dim() != 1 or c_prime.min() < 1 or c_prime.max() > c:
            raise ValueError(f"c' must be a 1-D tensor of values in [1, {c}], got {c_prime}")
        device = c_prime.device
        keep = c_prime.view(-1, 1)
    else:
        if not (isinstance(c_prime, int) and 1 <= c_prime <= c):
            raise ValueError(f"c' must be an int in [1, {c}], got {c_prime!r}")
        keep = torch.tensor([[c_prime]], device=device)
    # channel k is kept iff k < c'  ->  (B or 1, C), then broadcast over H and W
    return (torch.arange(c, device=device).view(1, -1) < keep).float()[:, :, None, None]


def default_c_prime_choices(latent_channels):
    """Candidate values of c': multiples of c/8 up to c (16, 32, ..., 128 for c = 128). NOTE: a guess;
    the official list is unreleased, but the official checkpoints of the paper's Figure 3 exist for c'
    in {16, 32, ..., 112, 128}, which suggests it."""
    return sorted({max(1, round(latent_channels * k / 8)) for k in range(1, 9)})


def check_c_prime_choices(choices, latent_channels):
    choices = [int(c) for c in choices]
    if not choices or any(not (1 <= c <= latent_channels) for c in choices):
        raise ValueError(f"channel choices must be a non-empty list of values in "
                         f"[1, {latent_channels}], got {choices}")
    return sorted(set(choices))


def sample_c_primes(choices, num_samples=1, always_max=False, always_min_max=False, generator=None):
    """The c' values one AE step reconstructs from, as the official AE trainer draws them: always_max puts
    choices[-1] first, always_min_max choices[0] and choices[-1]; the rest are uniform with replacement."""
    fixed = [choices[-1]] if always_max else [choices[0], choices[-1]] if always_min_max else []
    if always_max and always_min_max:
        raise ValueError("always_max and always_min_max exclude each other")
    if num_samples < max(1, len(fixed)):
        raise ValueError(f"{num_samples} c' per step cannot hold the {len(fixed)} always sampled "
                         f"({fixed}); sample at least {max(1, len(fixed))}")
    draws = num_samples - len(fixed)
    if draws == 0:
        return fixed
    idx = torch.randint(len(choices), (draws,), generator=generator,
                        device=generator.device if generator is not None else "cpu")
    return fixed + [choices[i] for i in idx.tolist()]


def sample_c_prime(choices, batch_size=None, generator=None, device=None):
    """Draw c' uniformly (with replacement) from `choices`. batch_size=None gives one int for the whole
    batch, as the official trainer does (every sample of a rank shares c'); an int gives a (batch_size,)
    tensor, one c' per sample. NOTE: both are the official trainer's options; the paper's is unknown."""
    # on the generator's device, so that a seeded CPU generator gives the same c' on every machine
    n = 1 if batch_size is None else batch_size
    idx = torch.randint(len(choices), (n,), generator=generator,
                        device=generator.device if generator is not None else "cpu")
    values = torch.tensor(choices, device=idx.device)[idx]
    # An int for the whole batch lets the encoder compute only c' channels (cheaper than masking).
    return int(values[0]) if batch_size is None else values.to(device or values.device)


# 5. Autoencoder loss: L1 + LPIPS + PatchGAN (hinge), and DC-AE's training phases -----------------

VGG16_FILE = "vgg16-397923af.pth"  # the file torchvision (and so lpips) loads for VGG16


def build_lpips(mode="auto"):
    """The frozen VGG-LPIPS net (never a submodule of a trained model) or None. 'off': None; 'on': LPIPS
    or FileNotFoundError; 'auto': LPIPS if its VGG16 weights are cached or downloadable, else None, warned."""
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"perceptual mode must be 'auto', 'on' or 'off', got {mode!r}")
    if mode == "off":
        return None
    import lpips  # noqa: imported here so that the module loads without it for inference-only users
    path = os.path.join(torch.hub.get_dir(), "checkpoints", VGG16_FILE)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision's "pretrained is deprecated" (lpips)
            net = lpips.LPIPS(net="vgg", verbose=False)
    except OSError as err:  # URLError is an OSError: offline and not cached
        msg = (f"LPIPS needs the VGG16 ImageNet weights, which are not at {path} and could not be "
               f"downloaded ({err}). Copy {VGG16_FILE} "
               f"(from https://download.pytorch.org/models/{VGG16_FILE}) to "
               f"{os.path.dirname(path)}/ (set TORCH_HOME to use another cache)")
        if mode == "on":
            raise FileNotFoundError(msg) from err
        warnings.warn(msg + "; training continues WITHOUT the perceptual loss "
                            "(--perceptual off silences this)")
        return None
    return freeze(net)


def freeze(net):
    net.eval()
    net.requires_grad_(False)
    return net


class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pix / taming layout), a logit per patch. NOTE: DC-AE's is unreleased; this is the
    common VQGAN-style choice, with GroupNorm for BatchNorm so that neither batch size nor ranks matter."""
    def __init__(self, in_channels=3, width=64, n_layers=3):
        super().__init__()
        layers = [nn.Conv2d(in_channels, width, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        c = width
        for i in range(1, n_layers + 1):
            c_next = width * min(2**i, 8)
            stride = 2 if i < n_layers else 1  # last block keeps the resolution
            layers += [nn.Conv2d(c, c_next, 4, stride=stride, padding=1, bias=False),
                       nn.GroupNorm(32 if c_next % 32 == 0 else 1, c_next), nn.LeakyReLU(0.2)]
            c = c_next
        layers.append(nn.Conv2d(c, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        for m in self.modules():  # DCGAN init
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)

    def forward(self, x):  # (B, 3, H, W) -> (B, 1, h, w) patch logits
        return self.main(x)


class AutoencoderLoss:
    """l(x, D(z * mask)) = w_l1 * L1 + w_lpips * LPIPS + [step >= gan_start] * w_gan * GAN; adaptive_gan
    multiplies w_gan by VQGAN's `adaptive_weight`. Not an nn.Module, so that the discriminator (its own
    optimizer) and LPIPS are never submodules of the autoencoder. NOTE: the defaults are ours: the official
    weights and GAN schedule are unreleased (DC-AE trains phases 1-2 with L1 + LPIPS, adds the GAN in 3)."""
    def __init__(self, discriminator=None, perceptual=None, l1_weight=1.0, lpips_weight=1.0,
                 gan_weight=0.1, gan_start=0, adaptive_gan=False):
        self.discriminator = discriminator
        self.perceptual = perceptual
        self.l1_weight = l1_weight
        self.lpips_weight = lpips_weight
        self.gan_weight = gan_weight
        self.gan_start = gan_start
        self.adaptive_gan = adaptive_gan

    def gan_active(self, step):
        return self.discriminator is not None and self.gan_weight > 0 and step >= self.gan_start

    def generator_loss(self, x, x_rec, step, last_layer=None):
        """The AE's loss and a dict of its detached terms. x, x_rec: (B, 3, H, W) in [-1, 1];
        last_layer: the decoder's last weight (`last_decoder_weight`), needed with adaptive_gan."""
        terms = {"l1": (x_rec - x).abs().mean()}
        if self.perceptual is not None:  # LPIPS expects [-1, 1], which is our image range
            terms["lpips"] = self.perceptual(x_rec.float(), x.float()).mean()
        # NOTE: L1, not L2: DC-AE's authors confirmed "L1 loss and perceptual loss" (efficientvit #143).
        weights = {"l1": self.l1_weight, "lpips": self.lpips_weight}
        loss = sum(weights[k] * v for k, v in terms.items())
        if self.gan_active(step):
            terms["gan"] = -self.discriminator(x_rec).float().mean()  # hinge generator loss
            weight = self.gan_weight
            if self.adaptive_gan:
                terms["gan_scale"] = self.adaptive_weight(loss, terms["gan"], last_layer)
                weight = weight * terms["gan_scale"]
            loss = loss + weight * terms["gan"]
        return loss, {k: v.detach() for k, v in terms.items()}

    @staticmethod
    def adaptive_weight(rec_loss, gan_loss, last_layer):
        """VQGAN's balance (Esser et al. 2021, eq. 7), |grad rec| / (|grad gan| + 1e-4) at the last layer,
        clipped to [0, 1e4]: the GAN pulls it as hard as the reconstruction, whatever the logits' scale."""
        if last_layer is None:
            raise ValueError("the adaptive GAN weight needs the decoder's last layer")
        g_rec = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
        g_gan = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)[0]
        return (g_rec.norm() / (g_gan.norm() + 1e-4)).clamp(0, 1e4).detach()

    def discriminator_loss(self, x, x_rec, discriminator=None):
        """Hinge loss (mean(relu(1 - D(x))) + mean(relu(1 + D(x_rec)))) / 2; `discriminator`: e.g. DDP's."""
        disc = discriminator if discriminator is not None else self.discriminator
        # One pass over real and fake together (GroupNorm is per sample, so this equals two passes,
        # and DDP sees one forward per backward). detach: this loss trains the discriminator only.
        logits_real, logits_fake = disc(torch.cat([x, x_rec]).detach()).float().chunk(2)
        return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


# DC-AE trains in three phases (DC-AE Sec. 3.3, "decoupled high-resolution adaptation"):
#   1. low resolution, reconstruction loss, every layer ("all");
#   2. high resolution, reconstruction loss, only the layers next to the latent ("middle");
#   3. low resolution, the GAN loss added, only the decoder's last layers ("head").
# NOTE: which modules are "middle" and "head" is our reading, not the official split (unreleased;
# efficientvit issue #168 is unanswered): see `train_part_prefixes`, the place to try another split.
TRAIN_PARTS = ("all", "middle", "head")


def train_part_prefixes(ae, part):
    """Parameter-name prefixes of a part. Middle: the encoder's deepest stage and output projection, the
    decoder's input projection and deepest stage. Head: the decoder's highest-resolution stage that has
    layers, and its output projection."""
    if part not in TRAIN_PARTS:
        raise ValueError(f"unknown part {part!r}; choose one of {', '.join(TRAIN_PARTS)}")

    def with_layers(stages):  # stage indices that hold parameters (a depth-0 stage may be empty)
        return [i for i, st in enumerate(stages) if any(True for _ in st.parameters())]

    enc, dec = with_layers(ae.encoder.stages), with_layers(ae.decoder.stages)
    return {"all": [""],
            "middle": [f"encoder.stages.{enc[-1]}.", "encoder.project_out.",
                       "decoder.project_in.", f"decoder.stages.{dec[-1]}."],
            "head": [f"decoder.stages.{dec[0]}.", "decoder.project_out."]}[part]


def last_decoder_weight(ae):
    """The decoder's last conv weight, where `adaptive_weight` compares gradients (GAN phases train it)."""
    return [m for m in ae.decoder.project_out.modules() if isinstance(m, nn.Conv2d)][-1].weight


def set_trainable(ae, part):
    """Freeze every parameter outside `part`; returns the names of the trained ones."""
    prefixes = train_part_prefixes(ae, part)
    names = []
    for name, param in ae.named_parameters():
        param.requires_grad_(name.startswith(tuple(prefixes)))
        if param.requires_grad:
            names.append(name)
    return names


# 6. DiT (Peebles & Xie) with adaLN-Zero -----------------------------------------------------------

@dataclass
class DiTConfig:
    input_size: int = 16  # latent height = width
    in_channels: int = 128  # latent channels c
    patch_size: int = 1  # the official DC-AE diffusion models all use p = 1
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    class_dropout_prob: float = 0.1  # labels replaced by the null class for classifier-free guidance

    @classmethod
    def from_dict(cls, d):
        return cls(**d)

    def to_dict(self):
        return asdict(self)


DiT_CONFIGS = {
    "DiT-XL": dict(depth=28, hidden_size=1152, num_heads=16),
    "DiT-L": dict(depth=24, hidden_size=1024, num_heads=16),
    "DiT-B": dict(depth=12, hidden_size=768, num_heads=12),
    "DiT-S": dict(depth=12, hidden_size=384, num_heads=6),
    "DiT-classroom": dict(depth=6, hidden_size=128, num_heads=4),  # NOTE: ours, 1.9 M parameters
    "DiT-tiny": dict(depth=2, hidden_size=32, num_heads=2),
}


def build_dit_config(name, **kwargs):
    if name not in DiT_CONFIGS:
        raise ValueError(f"unknown DiT preset {name!r}; choose one of {sorted(DiT_CONFIGS)}")
    return DiTConfig(**{**DiT_CONFIGS[name], **kwargs})  # keywords override the preset


def modulate(x, shift, scale):  # x: (B, N, D); shift, scale: (B, D)
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def timestep_embedding(t, dim, max_period=10000):
    """GLIDE sinusoidal embedding [cos | sin] of (fractional) timesteps t: (B,) -> (B, dim)."""
    half = dim // 2
    k = torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(-math.log(max_period) * k / half)  # 1 .. 1/max_period: slow and fast changes of t
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden_size, frequency_size=256):
        super().__init__()
        self.frequency_size = frequency_size
        self.mlp = nn.Sequential(nn.Linear(frequency_size, hidden_size), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size))

    def forward(self, t):  # (B,) -> (B, D)
        return self.mlp(timestep_embedding(t, self.frequency_size))


class LabelEmbedder(nn.Module):
    """Class embedding with one extra row, index num_classes: the null label for guidance."""
    def __init__(self, num_classes, hidden_size, dropout_prob):
        super().__init__()
        self.num_classes, self.dropout_prob = num_classes, dropout_prob
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)

    def forward(self, y):  # (B,) -> (B, D)
        if self.training and self.dropout_prob > 0:  # label dropout: learn the unconditional model too
            drop = torch.rand(y.shape, device=y.device) < self.dropout_prob
            y = torch.where(drop, torch.full_like(y, self.num_classes), y)
        return self.embedding_table(y)


class Attention(nn.Module):
    def __init__(self, dim, num_heads, qkv_bias=True):  # U-ViT's qkv has no bias, DiT's has
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):  # (B, N, D)
        B, N, D = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, D // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # (B, N, 3D) -> 3 x (B, heads, N, D/heads)
        x = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, D/heads); flash kernel on GPU
        return self.proj(x.transpose(1, 2).reshape(B, N, D))


class DiTBlock(nn.Module):
    """Transformer block; its LayerNorms are modulated by the condition (adaLN), zero-init gates."""
    def __init__(self, hidden_size, num_heads, mlp_ratio):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        hidden = int(hidden_size * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(hidden_size, hidden), nn.GELU(approximate="tanh"),
                                 nn.Linear(hidden, hidden_size))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x, c):  # x: (B, N, D), c: (B, D)
        modulation = self.adaLN_modulation(c).chunk(6, dim=1)  # a shift, scale and gate per sub-layer
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class FinalLayer(nn.Module):
    def __init__(self, hidden_size, patch_size, out_channels):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x, c):  # (B, N, D) -> (B, N, p*p*C)
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


def sincos_pos_embed_2d(dim, grid_size):
    """Fixed 2D sin-cos positions, (grid_size^2, dim): half the dims for rows, half for columns."""
    pos = torch.arange(grid_size, dtype=torch.float64)
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    rows, cols = torch.meshgrid(pos, pos, indexing="ij")

    def embed(p):  # (N,) -> (N, dim/2)
        out = p.reshape(-1, 1) * omega[None]
        return torch.cat([torch.sin(out), torch.cos(out)], dim=1)

    return torch.cat([embed(cols), embed(rows)], dim=1).float()


class DiT(nn.Module):
    """Class-conditional DiT on a noisy latent x_t; it predicts eps (GaussianDiffusion) or the velocity
    x_0 - eps (FlowMatching), as the objective decides. NOTE: no learned variance (learn_sigma=False),
    which DDIM does not need; the official DiT-XL baseline learns sigma with a VLB term, its SiT-XL not."""
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        D = cfg.hidden_size
        if cfg.input_size % cfg.patch_size or D % cfg.num_heads or D % 4:
            raise ValueError(f"input_size must be divisible by patch_size, and hidden_size by "
                             f"num_heads and by 4 (for the 2D sin-cos positions); got {cfg}")
        self.cfg = cfg
        p, D = cfg.patch_size, cfg.hidden_size
        self.x_embedder = nn.Conv2d(cfg.in_channels, D, kernel_size=p, stride=p)
        self.t_embedder = TimestepEmbedder(D)
        self.y_embedder = LabelEmbedder(cfg.num_classes, D, cfg.class_dropout_prob)
        grid = cfg.input_size // p
        # Fixed, not learned, and not saved: it is a function of the config, rebuilt on load.
        self.register_buffer("pos_embed", sincos_pos_embed_2d(D, grid)[None], persistent=False)
        blocks = [DiTBlock(D, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.depth)]
        self.blocks = nn.ModuleList(blocks)
        self.grad_checkpointing = False  # set_grad_checkpointing
        self.final_layer = FinalLayer(D, p, cfg.in_channels)
        self.initialize_weights()

    def initialize_weights(self):
        for m in self.modules():  # DiT's init: xavier linears, zero biases
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.x_embedder.weight  # initialise the patch conv like the linear layer it is
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        # adaLN-Zero: every block starts as the identity and the output starts at 0.
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for lin in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def unpatchify(self, x):  # (B, N, p*p*C) -> (B, C, H, W)
        p, C = self.cfg.patch_size, self.cfg.in_channels
        h = w = self.cfg.input_size // p
        x = x.view(x.shape[0], h, w, p, p, C)
        # contiguous: a new tensor, not a view of the head's output (FSDP warns about views)
        return torch.einsum("bhwpqc->bchpwq", x).reshape(x.shape[0], C, h * p, w * p).contiguous()

    def forward(self, x, t, y):  # x: (B, C, H, W), t: (B,), y: (B,) -> eps or v: (B, C, H, W)
        # patchify: a p x p conv with stride p turns each patch into one token; N = (H/p) * (W/p)
        x = self.x_embedder(x).flatten(2).transpose(1, 2) + self.pos_embed  # (B, N, D)
        c = self.t_embedder(t) + self.y_embedder(y)  # (B, D): the condition every block is modulated by
        for block in self.blocks:
            x = checkpointed(block, x, c) if self.grad_checkpointing else block(x, c)
        return self.unpatchify(self.final_layer(x, c))

    def set_grad_checkpointing(self, enable=True):
        """Activation checkpointing (timm's name), one DiT block at a time."""
        self.grad_checkpointing = enable
        return self

    def forward_with_cfg(self, x, t, y, cfg_scale):
        return classifier_free_guidance(self, x, t, y, cfg_scale)


def classifier_free_guidance(model, x, t, y, cfg_scale):
    """Guidance over all latent channels, u + s (c - u), in one batched pass of any backbone whose
    null class is its cfg.num_classes (the extra label-table row)."""
    null = torch.full_like(y, model.cfg.num_classes)
    # NOTE: DiT's reference code guides only the first 3 channels; the official DC-AE code guides all.
    both = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))
    cond, uncond = both.chunk(2)
    return uncond + cfg_scale * (cond - uncond)


# 7. Diffusion objectives with augmented diffusion training, and their samplers --------------------
# Two objectives, one interface (`training_loss`, `sample`), both with `augmented_training_loss`:
# GaussianDiffusion, DDPM eps-prediction (DiT's) sampled with DDIM, and FlowMatching, SiT / USiT's
# linear-interpolant velocity (the paper's headline models) sampled with Euler or Heun.

def augmented_training_loss(masked_loss, model, x0, y, c_prime=None, aug_weight=1.0, generator=None):
    """DC-AE 1.5 augmented diffusion training: (L_full + w * L_masked(c')) / (1 + w).
    `masked_loss(model, x0, y, mask, generator)` is an objective's per-sample loss on the channels a mask
    keeps (the model sees x_t * mask, the error counts where the mask is 1). With w = 1 this is the
    official trainer's mean over a full-channel pass and a c' pass of the same latents, each with its
    own t and noise, run as one batch of 2B (one forward, as DDP wants); the model is not told c'.
    c_prime=None (or w = 0) gives the plain objective. Returns (loss, {"loss_full", "loss_masked"})."""
    if c_prime is None or aug_weight == 0:
        loss_full = masked_loss(model, x0, y, None, generator).mean()
        return loss_full, {"loss_full": loss_full.detach()}
    B, C = x0.shape[:2]
    mask = torch.cat([torch.ones(B, C, 1, 1, device=x0.device),
                      channel_mask(C, c_prime, device=x0.device).expand(B, -1, -1, -1)])
    losses = masked_loss(model, torch.cat([x0, x0]), torch.cat([y, y]), mask, generator)
    loss_full, loss_masked = losses[:B].mean(), losses[B:].mean()
    loss = (loss_full + aug_weight * loss_masked) / (1 + aug_weight)
    return loss, {"loss_full": loss_full.detach(), "loss_masked": loss_masked.detach()}


def masked_mse(target, prediction, mask):
    """Per-sample mean squared error over the elements `mask` keeps (c' H W of them, not C H W), in fp32,
    as the official code, which runs the model on the first c' channels and takes a plain mean."""
    sq_err = ((target - prediction.float()) * mask).pow(2)
    kept = mask.expand_as(target).sum(dim=(1, 2, 3))  # c' * H * W per sample
    return sq_err.sum(dim=(1, 2, 3)) / kept


def guided(model, x, t, y, cfg_scale):
    """The model's output, with classifier-free guidance when cfg_scale != 1."""
    return model.forward_with_cfg(x, t, y, cfg_scale) if cfg_scale != 1.0 else model(x, t, y)


class GaussianDiffusion:
    """DDPM x_t = sqrt(alphabar_t) x_0 + sqrt(1 - alphabar_t) eps, linear betas 1e-4 .. 0.02, 1000 steps,
    as DiT / the official GaussianDiffusion; the model predicts eps from (x_t, integer t, y)."""
    name = "ddpm"
    methods = ("ddim",)  # samplers; the first is the default

    def __init__(self, num_timesteps=1000, beta_start=1e-4, beta_end=0.02):
        self.num_timesteps = num_timesteps
        # float64: 1 - alphabar near t = 0 is ~1e-4 and the cumulative product loses digits in fp32
        betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)  # stays on the CPU; indexed, then cast

    def alpha_sigma(self, t, ndim=4):  # t: (B,) long -> alpha_t, sigma_t, broadcastable to x
        abar = self.alphas_cumprod.to(t.device)[t].float().view(-1, *([1] * (ndim - 1)))
        return abar.sqrt(), (1 - abar).sqrt()

    def q_sample(self, x0, t, noise):
        alpha, sigma = self.alpha_sigma(t, x0.dim())
        return alpha * x0 + sigma * noise

    def diffusion_loss(self, model, x0, y, mask=None, generator=None):
        """||eps * mask - eps_theta(x_t * mask, t) * mask||^2 over the kept elements; (B,). mask=None: the
        plain loss; a `channel_mask` (one row or one per sample): the DC-AE 1.5 augmented objective."""
        B = x0.shape[0]
        # every sample draws its own t ~ U{0..T-1} and noise
        t = torch.randint(0, self.num_timesteps, (B,), generator=generator, device=x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        if mask is None:
            mask = torch.ones_like(x0[:1, :, :1, :1])
        # Masking after noising equals noising the masked latent: masked channels of x_t are exactly 0,
        # as the official code's patch embedding sees them when it slices its conv to c' channels.
        x_t = self.q_sample(x0, t, noise) * mask
        return masked_mse(noise, model(x_t, t, y), mask)

    def training_loss(self, model, x0, y, c_prime=None, aug_weight=1.0, generator=None):
        return augmented_training_loss(self.diffusion_loss, model, x0, y, c_prime, aug_weight, generator)

    def sample(self, model, shape, y, steps=50, method="ddim", cfg_scale=1.0, generator=None,
               c_prime=None, eta=0.0):
        """The sampler entry point shared with FlowMatching; DDPM samples with DDIM."""
        if method != "ddim":
            raise ValueError(f"a DDPM model samples with method 'ddim', not {method!r}")
        return self.ddim_sample(model, shape, y, steps, eta, cfg_scale, generator, c_prime)

    @torch.no_grad()
    def ddim_sample(self, model, shape, y, steps=50, eta=0.0, cfg_scale=1.0, generator=None, c_prime=None):
        """DDIM (Song et al. eq. 12) from pure noise to x_0: eta=0 deterministic, eta=1 ancestral.
        cfg_scale != 1 applies classifier-free guidance over all channels. c_prime=c' generates only
        the first c' channels (the rest stay exactly 0), to show what the object channels alone
        encode. Returns latents of `shape` in the diffusion model's (scaled) space."""
        B, C = shape[0], shape[1]
        device = y.device
        if not (1 <= steps <= self.num_timesteps):
            raise ValueError(f"steps must be in [1, {self.num_timesteps}], got {steps}")
        # With c' < C the masked channels start at 0 and stay 0: the model sees exactly the inputs
        # it was trained on by the augmented objective, and the decoder zero-fills the rest anyway.
        mask = channel_mask(C, c_prime if c_prime is not None else C, device=device)
        x = torch.randn(shape, generator=generator, device=device) * mask
        ts = torch.linspace(self.num_timesteps - 1, 0, steps, dtype=torch.float64)
        ts = ts.round().long().tolist()
        abar = self.alphas_cumprod
        for i, t in enumerate(ts):
            t_batch = torch.full((B,), t, device=device, dtype=torch.long)
            eps = guided(model, x, t_batch, y, cfg_scale).float() * mask
            a_t = abar[t].item()
            a_prev = abar[ts[i + 1]].item() if i + 1 < len(ts) else 1.0  # the last lands on x_0
            # predicted clean latent, not clipped: latents have no fixed range (official: clip_denoised=False)
            x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
            # DDIM eq. 16: eta interpolates between the deterministic ODE path (0) and DDPM's posterior (1)
            sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
            x = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - sigma**2, 0.0)) * eps
            if sigma > 0:
                x = x + sigma * torch.randn(shape, generator=generator, device=device) * mask
        return x


class FlowMatching:
    """Flow matching with the linear interpolant x_t = t * x_0 + (1 - t) * eps, t = 0 noise, t = 1 data
    (SiT's "Linear" path, as the official USiT `SiTSampler`). The model predicts the velocity x_0 - eps
    from (x_t, t, y), the float t in [0, 1] embedded as it is (no x1000), as the official code does."""
    name = "flow"
    methods = ("heun", "euler")  # samplers; the first is the default

    def flow_loss(self, model, x0, y, mask=None, generator=None):
        """||(x_0 - eps) * mask - v_theta(x_t * mask, t) * mask||^2 over the kept elements; (B,).
        t ~ U[0, 1) for every sample (uniform, as the official SiT training path). mask as in
        GaussianDiffusion.diffusion_loss: None is the plain loss, a channel mask the augmented one."""
        B = x0.shape[0]
        t = torch.rand(B, generator=generator, device=x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        if mask is None:
            mask = torch.ones_like(x0[:1, :, :1, :1])
        t_ = t.view(-1, 1, 1, 1)
        x_t = (t_ * x0 + (1 - t_) * noise) * mask  # masked channels of x_t are exactly 0
        return masked_mse(x0 - noise, model(x_t, t, y), mask)

    def training_loss(self, model, x0, y, c_prime=None, aug_weight=1.0, generator=None):
        return augmented_training_loss(self.flow_loss, model, x0, y, c_prime, aug_weight, generator)

    @torch.no_grad()
    def sample(self, model, shape, y, steps=50, method="heun", cfg_scale=1.0, generator=None, c_prime=None):
        """Integrate dx/dt = v(x, t) from noise (t = 0) to data (t = 1) in `steps` equal intervals.
        method "euler": x += dt v(x, t) (one model call per interval). "heun" (second order, two
        calls): an Euler step to x', then x += dt (v(x, t) + v(x', t + dt)) / 2. cfg_scale and
        c_prime as in GaussianDiffusion.ddim_sample. NOTE: the official USiT sampler is adaptive
        dopri5 (torchdiffeq, atol 1e-6, rtol 1e-3); fixed steps of Heun's method are our
        simplification (no extra package, a known cost per sample)."""
        if method not in self.methods:
            raise ValueError(f"a flow-matching model samples with {' or '.join(self.methods)}, "
                             f"not {method!r}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        B, C = shape[0], shape[1]
        device = y.device
        mask = channel_mask(C, c_prime if c_prime is not None else C, device=device)
        x = torch.randn(shape, generator=generator, device=device) * mask  # t = 0: pure noise

        def velocity(x, t):
            t_batch = torch.full((B,), t, device=device)
            return guided(model, x, t_batch, y, cfg_scale).float() * mask

        for i in range(steps):
            t, dt = i / steps, 1.0 / steps
            v = velocity(x, t)
            if method == "euler":
                x = x + dt * v
            else:
                x_next = x + dt * v
                x = x + dt * 0.5 * (v + velocity(x_next, t + dt))
        return x


OBJECTIVES = {"ddpm": GaussianDiffusion, "flow": FlowMatching}


def build_objective(name):
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; choose one of {sorted(OBJECTIVES)}")
    return OBJECTIVES[name]()


def autocast(device):
    """bf16 autocast on CUDA, as the official code (fp16 overflows in large conv nets); off on the CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=torch.device(device).type == "cuda")


@torch.no_grad()
def generate(model, ae, latent_scale, y, generator, objective, steps=50, method=None,
             cfg_scale=1.0, c_prime=None, **sampler_options):
    """Images (B, 3, H, W), about [-1, 1], unclamped, for labels y: sample latents, unscale, decode (the
    DiT in bf16 on CUDA, the decoder in fp32 as officially). `objective` ("ddpm" or "flow", as its
    checkpoint says) has no default: the wrong one gives wrong images without error. `method`: default
    the objective's first; sampler_options: eta for DDIM. sample.py, train_dit.py and evaluate.py all
    call this: the same generator gives them the same images."""
    objective = build_objective(objective)
    config = model.cfg
    shape = (len(y), config.in_channels, config.input_size, config.input_size)
    with autocast(y.device):
        z = objective.sample(model, shape, y, steps=steps, method=method or objective.methods[0],
                             cfg_scale=cfg_scale, generator=generator, c_prime=c_prime, **sampler_options)
    if c_prime is not None:  # the rest is 0; the adaptive input conv zero-fills it anyway
        z = z[:, :c_prime]
    return ae.decode(z.float() / latent_scale)


# 8. Weights and the latent scale ------------------------------------------------------------------

def read_weights(path):
    """The tensors of a .safetensors, .pt or .pth file (a project checkpoint comes back whole)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"autoencoder weights not found: {path}")
    if str(path).endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError as err:
            raise ImportError(f"reading {path} needs the optional package safetensors: "
                              f"pip install safetensors") from err
        try:
            return load_file(path, device="cpu")
        except Exception as err:  # safetensors' own error type for a bad header or a short file
            raise ValueError(f"{path} cannot be read (truncated or corrupt?): {err}") from None
    try:  # weights_only: tensors and plain values, no pickled code runs
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a short, corrupt or foreign file: torch's errors vary
        reason = (str(err) or type(err).__name__).splitlines()[0]
        raise ValueError(f"{path} cannot be read (truncated or corrupt?): {reason}") from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ValueError(f"{path} holds a {type(sd).__name__}, not a state dict")
    return sd


def autoencoder_state_dict(state_dict):
    """The "encoder." / "decoder." entries (not a discriminator's or optimiser's, as officially)."""
    return {k: v for k, v in unwrapped(state_dict).items() if k.startswith(("encoder.", "decoder."))}


def unwrapped(state_dict):
    """A state dict without the key prefixes DDP ("module.") and torch.compile ("_orig_mod.") add."""
    return {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in state_dict.items()}


def check_state_dict(model, state_dict, max_listed=5):
    """Raise ValueError listing the first offenders if keys or shapes differ from the model's."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}" for k, v in own.items()
              if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    problems = []
    for what, items in (("missing keys", missing), ("unexpected keys", unexpected),
                        ("shape mismatches", shapes)):
        if items:
            more = f" (+{len(items) - max_listed} more)" if len(items) > max_listed else ""
            problems.append(f"{len(items)} {what}: {items[:max_listed]}{more}")
    if problems:
        raise ValueError("checkpoint does not match the model: " + "; ".join(problems))


@torch.no_grad()
def measure_latent_scale(ae, images_iter, c_prime=None):
    """1 / RMS of the latents over an iterable of image batches (the official factors' rule)."""
    total, count = 0.0, 0  # running sums in float64, so the result does not depend on batching
    for x in images_iter:
        z = ae.encode(x, c_prime).double()
        total += z.pow(2).sum().item()
        count += z.numel()
    if count == 0:
        raise ValueError("measure_latent_scale got no images")
    return 1.0 / math.sqrt(total / count)
