"""
dcae10.py: DC-AE 1.0, the paper's baseline autoencoder, built on dcae15.py's blocks.

Paper: Chen et al., "Deep Compression Autoencoder for Efficient High-Resolution Diffusion Models",
arXiv 2410.10733 (DC-AE 1.0). DC-AE 1.5 (arXiv 2508.00413, Sec. 3) keeps its residual autoencoding
and drops two of its parts, which this file adds back:

  1. Configs      -> the official 1.0 zoo (f32c32 / f64c128 / f128c512, "-in" and "-mix" weights)
  2. Blocks       -> DC-AE Sec. 3.3: EfficientViT blocks (ReLU linear attention, a gated MLP) in
                     the deep stages; BatchNorm + ReLU in the decoder's shallow stages
  3. Autoencoder  -> the channel-averaging shortcut after the encoder's last conv and the
                     channel-duplicating shortcut before the decoder's first conv (DC-AE Fig. 4)

Module names follow the official code, so official 1.0 weights load key for key
(`DCAE10.from_pretrained(weights, "dc-ae-f32c32-in-1.0")`).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

import dcae15


# ==================================================================================================
# 1. Configs
# ==================================================================================================


def _dcae_10_config(width_list, enc_depth, dec_depth, latent_channels, scaling_factor=None):
    """DC-AE 1.0 (DC-Gen `dc_ae_f32c32` / `dc_ae_f64c128` / `dc_ae_f128c512`): ResBlocks in the
    first three stages, EfficientViT blocks in the deep ones; BatchNorm + ReLU in the decoder's
    shallow stages; the shortcuts around the encoder's last and the decoder's first conv; ReLU at
    the end."""
    n = len(width_list)
    blocks = ("ResBlock",) * 3 + ("EViTGLU",) * (n - 3)
    enc = dcae15.EncoderConfig(tuple(width_list), tuple(enc_depth), block_type=blocks,
                        out_shortcut="averaging")
    dec = dcae15.DecoderConfig(tuple(width_list), tuple(dec_depth), block_type=blocks,
                        norm=("bn2d",) * 3 + ("trms2d",) * (n - 3),
                        act=("relu",) * 3 + ("silu",) * (n - 3),
                        out_act="relu", in_shortcut="duplicating")
    return dcae15.DCAEConfig(latent_channels=latent_channels, scaling_factor=scaling_factor,
                      encoder=enc, decoder=dec)


# The paper's baseline; the "-mix-1.0" models share the "-in-1.0" architectures.
_F32 = [128, 256, 512, 512, 1024, 1024]
DCAE10_CONFIGS = {
    # the scaling factors the official code pairs with the ImageNet weights
    "dc-ae-f32c32-in-1.0": _dcae_10_config(_F32, [0, 4, 8, 2, 2, 2], [0, 5, 10, 2, 2, 2], 32,
                                           0.3189),
    "dc-ae-f64c128-in-1.0": _dcae_10_config(_F32 + [2048], [0, 4, 8, 2, 2, 2, 2],
                                            [0, 5, 10, 2, 2, 2, 2], 128, 0.2889),
    "dc-ae-f128c512-in-1.0": _dcae_10_config(_F32 + [2048, 2048], [0, 4, 8, 2, 2, 2, 2, 2],
                                             [0, 5, 10, 2, 2, 2, 2, 2], 512),
    # NOTE: ours, not official: the 1.0 architecture at the classroom and test sizes
    "dc-ae-f16c64-classroom-1.0": _dcae_10_config([16, 32, 64, 128, 256], [0, 1, 1, 2, 2],
                                                  [0, 1, 1, 2, 2], 64),
    "dc-ae-tiny-1.0": _dcae_10_config([8, 16, 32, 32], [0, 1, 1, 1], [0, 1, 1, 1], 8),
}
for _name in ("f32c32", "f64c128", "f128c512"):
    DCAE10_CONFIGS[f"dc-ae-{_name}-mix-1.0"] = dcae15.DCAEConfig.from_dict(
        {**DCAE10_CONFIGS[f"dc-ae-{_name}-in-1.0"].to_dict(), "scaling_factor": None})



# ==================================================================================================
# 2. Blocks
# ==================================================================================================


class LiteMLA(nn.Module):
    """DC-AE 1.0's attention (EfficientViT's "lightweight multi-scale linear attention"), here with
    one scale: heads of 32 channels; q and k through ReLU, then softmax-free linear attention
    out_n = sum_m v_m (k_m . q_n) / sum_m (k_m . q_n), which costs O(N) in the N = H W positions.

    NOTE: the official code switches to the quadratic form of the same sum for N <= 32; it agrees to
    rounding (~1e-7), so only the linear form is here. As official, autocast is off inside, fp16 is
    computed in fp32 and bf16 matmuls are divided in fp32.
    """

    def __init__(self, channels, norm, dim=32, eps=1e-15):
        super().__init__()
        self.dim, self.eps = dim, eps
        self.qkv = dcae15.ConvLayer(channels, 3 * channels, 1, bias=False)
        self.aggreg = nn.ModuleList()  # the multi-scale branches of EViTS5GLU; EViTGLU has none
        self.proj = dcae15.ConvLayer(channels, channels, 1, bias=False, norm=norm)

    def forward(self, x):  # (B, C, H, W)
        qkv = self.qkv(x)
        B, _, H, W = qkv.shape
        with torch.autocast(x.device.type, enabled=False):
            dtype = qkv.dtype
            qkv = qkv.float() if dtype == torch.float16 else qkv
            # per head (head-major): channels [q 0:32 | k 32:64 | v 64:96] -> (B, heads, 32, N) each
            q, k, v = qkv.reshape(B, -1, 3 * self.dim, H * W).split(self.dim, dim=2)
            q, k = F.relu(q), F.relu(k)
            v = F.pad(v, (0, 0, 0, 1), value=1.0)  # a row of ones: the last output row is the sum
            out = (v @ k.transpose(-1, -2)) @ q  # (B, heads, 33, N)
            out = out.float()
            out = (out[:, :, :-1] / (out[:, :, -1:] + self.eps)).to(dtype)
        return self.proj(out.reshape(B, -1, H, W))


class GLUMBConv(nn.Module):
    """DC-AE 1.0's feed-forward: 1x1 conv to 2 x 4C (act), 3x3 depthwise conv, gate
    half x act(half), 1x1 conv back to C (norm)."""

    def __init__(self, channels, norm, act, expand_ratio=4):
        super().__init__()
        mid = channels * expand_ratio
        self.glu_act = dcae15.build_act(act)
        self.inverted_conv = dcae15.ConvLayer(channels, 2 * mid, 1, bias=True, act=act)
        self.depth_conv = dcae15.ConvLayer(2 * mid, 2 * mid, 3, bias=True, groups=2 * mid)
        self.point_conv = dcae15.ConvLayer(mid, channels, 1, bias=False, norm=norm)

    def forward(self, x):
        x, gate = self.depth_conv(self.inverted_conv(x)).chunk(2, dim=1)
        return self.point_conv(x * self.glu_act(gate))


class EfficientViTBlock(nn.Module):
    """DC-AE 1.0's "EViTGLU" block: x + LiteMLA(x), then x + GLUMBConv(x)."""

    def __init__(self, channels, norm, act):
        super().__init__()
        self.context_module = dcae15.ResidualBlock(LiteMLA(channels, norm), nn.Identity())
        self.local_module = dcae15.ResidualBlock(GLUMBConv(channels, norm, act), nn.Identity())

    def forward(self, x):
        return self.local_module(self.context_module(x))


# ==================================================================================================
# 3. Encoder / Decoder / DCAE10
# ==================================================================================================


def per_stage(value, i):
    """A config value for stage i: the same name for every stage, or one per stage."""
    return value[i] if isinstance(value, (tuple, list)) else value


def build_block(block_type, channels, norm, act):
    """One block of a stage: "ResBlock" (the first stages) or "EViTGLU" (the deep ones)."""
    if block_type == "ResBlock":
        return dcae15.ResidualBlock(dcae15.ResBlock(channels, norm, act), nn.Identity())
    if block_type == "EViTGLU":
        return EfficientViTBlock(channels, norm, act)
    raise ValueError(f"unsupported block type {block_type!r}; choose 'ResBlock' or 'EViTGLU'")


class Encoder10(dcae15.Encoder):
    """DC-AE 1.5's encoder with 1.0's blocks, and the channel-averaging shortcut around its last
    conv (keys encoder.project_out.main....): latent channel k gets the mean of feature group k."""

    def __init__(self, cfg):
        super().__init__(cfg)
        if cfg.encoder.out_shortcut not in (None, "averaging"):
            raise ValueError(f"unsupported encoder out_shortcut {cfg.encoder.out_shortcut!r}; "
                             f"choose None or 'averaging'")
        if cfg.encoder.out_shortcut == "averaging":
            shortcut = dcae15.ChannelAveragingDownsample(cfg.encoder.width_list[-1],
                                                         cfg.latent_channels, factor=1)
            self.project_out = dcae15.ResidualBlock(self.project_out, shortcut)

    def block(self, i, channels):
        e = self.cfg.encoder
        return build_block(per_stage(e.block_type, i), channels, per_stage(e.norm, i), e.act)

    def to_latent(self, x, c_prime):  # the first c' of conv + shortcut
        if not isinstance(self.project_out, dcae15.ResidualBlock):
            return super().to_latent(x, c_prime)
        z = self.project_out.main.op_list[0](x, out_channels=c_prime)
        return z + self.project_out.shortcut(x)[:, :c_prime]


class Decoder10(dcae15.Decoder):
    """DC-AE 1.5's decoder with 1.0's blocks (BatchNorm + ReLU in the shallow stages), and the
    channel-duplicating shortcut around its first conv (keys decoder.project_in.main....)."""

    def __init__(self, cfg):
        super().__init__(cfg)
        if cfg.decoder.in_shortcut not in (None, "duplicating"):
            raise ValueError(f"unsupported decoder in_shortcut {cfg.decoder.in_shortcut!r}; "
                             f"choose None or 'duplicating'")
        if cfg.decoder.in_shortcut == "duplicating":
            shortcut = dcae15.ChannelDuplicatingUpsample(cfg.latent_channels,
                                                         cfg.decoder.width_list[-1], factor=1)
            self.project_in = dcae15.ResidualBlock(self.project_in, shortcut)

    def block(self, i, channels):
        dc = self.cfg.decoder
        return build_block(per_stage(dc.block_type, i), channels, per_stage(dc.norm, i),
                           per_stage(dc.act, i))

    def forward(self, z):  # (B, c', h, w) -> (B, 3, H, W)
        c = self.cfg.latent_channels
        if isinstance(self.project_in, dcae15.ResidualBlock) and z.shape[1] < c:
            # zero-fill to c channels for the shortcut (the conv alone would take c' as they are)
            z = F.pad(z, (0, 0, 0, 0, 0, c - z.shape[1]))
        return super().forward(z)


class DCAE10(dcae15.DCAE):
    """DC-AE 1.0: dcae15.DCAE's interface (encode(x, c'), decode, forward, from_pretrained) with
    1.0's encoder and decoder, so that train_ae.py trains one structured or plain. A 1.0 model
    still encodes a slice and decodes a zero-filled latent; its shortcuts tie each latent channel to
    a fixed group of features, which is why DC-AE 1.5 drops them."""

    PRESETS = DCAE10_CONFIGS
    encoder_class, decoder_class = Encoder10, Decoder10

    @staticmethod
    def check_config(cfg):
        pass  # every DC-AE config builds: 1.0's parts, and 1.5's as 1.0 with no shortcuts
