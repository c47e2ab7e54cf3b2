"""
uvit.py: U-ViT, the backbone of the paper's USiT models, with the DiT's interface.

Paper: Bao et al., "All are Worth Words: A ViT Backbone for Diffusion Models", arXiv 2209.12152;
DC-AE 1.5 (arXiv 2508.00413) trains it with the flow objective as USiT (the official
`dc-ae-f64c128-1.5-usit-{2b,3b}-in-512px`). Everything is a token: [label, time, patches], pre-LN
transformer blocks, and long skips from the first half of the blocks to the second.

  1. Configs  -> the official zoo (DC-Gen `uvit.py`: UViT-S / H / 2B / 3B), patch size 1
  2. Network  -> U-ViT Sec. 3: blocks, long skips, the official weight initialisation
  3. Official files -> the network's weights out of a DC-Gen diffusion checkpoint

model(x, t, y) is the velocity (flow) or the noise (ddpm), as dcae15.DiT's, so dcae15's objectives,
samplers and `generate` take either.
"""

import torch
import torch.nn as nn

import dcae15


# ==================================================================================================
# 1. Configs
# ==================================================================================================


class UViTConfig(dcae15.DiTConfig):
    """A U-ViT's sizes, under the DiT's field names (depth: in-blocks + out-blocks, the mid-block
    apart); its type tells dcaelib.models.build_backbone which network a config builds."""


UVIT_CONFIGS = {  # the official sizes (DC-Gen `uvit.py` zoo); patch 1 always
    "UViT-S": dict(depth=12, hidden_size=512, num_heads=8),
    "UViT-H": dict(depth=28, hidden_size=1152, num_heads=16),
    "UViT-2B": dict(depth=28, hidden_size=2048, num_heads=32),
    "UViT-3B": dict(depth=56, hidden_size=2048, num_heads=32),
    # NOTE: ours, not official: DiT-classroom's width and about its parameters (1.9 M); a test size.
    "UViT-classroom": dict(depth=8, hidden_size=128, num_heads=4),
    "UViT-classroom-S": dict(depth=8, hidden_size=64, num_heads=2),  # as DiT-classroom-S / -L
    "UViT-classroom-L": dict(depth=8, hidden_size=256, num_heads=8),
    "UViT-tiny": dict(depth=2, hidden_size=32, num_heads=2),
}


def build_uvit_config(name, **kwargs):
    if name not in UVIT_CONFIGS:
        raise ValueError(f"unknown U-ViT preset {name!r}; choose one of {sorted(UVIT_CONFIGS)}")
    return UViTConfig(**{**UVIT_CONFIGS[name], **kwargs})


# ==================================================================================================
# 2. Network
# ==================================================================================================


class Mlp(nn.Module):
    """Linear -> GELU (exact) -> Linear, under timm's key names fc1 / fc2."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class UViTBlock(nn.Module):
    """Pre-LN transformer block; an out-block first merges its long skip: Linear(cat[x, skip])."""

    def __init__(self, dim, num_heads, mlp_ratio, skip=False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)  # with affine, eps 1e-5 (official)
        self.attn = dcae15.Attention(dim, num_heads, qkv_bias=False)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.skip_linear = nn.Linear(2 * dim, dim) if skip else None

    def forward(self, x, skip=None):  # (B, 2 + N, D)
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """A p x p conv with stride p (official `AdaptivePatchEmbed`, key `proj`)."""

    def __init__(self, in_channels, dim, patch_size):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):  # (B, C, H, W) -> (B, N, D)
        return self.proj(x).flatten(2).transpose(1, 2)


class UViT(nn.Module):
    """Class-conditional U-ViT on a noisy latent x_t, with the DiT's interface: model(x, t, y) is
    the velocity (flow) or the noise (ddpm), forward_with_cfg guides all channels, the null class
    is num_classes. State-dict keys are the official ones, so an official USiT checkpoint loads
    with strict=True (`backbone_state_dict` unwraps the official files).

    NOTE: the official adaptive-channel model slices its patch-embed input and its output rows to
    c'; here, as in our DiT, channels >= c' of x_t are zero and the loss ignores the outputs there:
    the same function. The official code casts q, k, v to fp32 before SDPA, which autocast casts
    back (SDPA is on its lower-precision list); we leave that out.
    """

    def __init__(self, cfg: UViTConfig):
        super().__init__()
        D, p = cfg.hidden_size, cfg.patch_size
        if cfg.input_size % p or D % cfg.num_heads or D % 2:
            raise ValueError(f"input_size must be divisible by patch_size, and hidden_size by "
                             f"num_heads and by 2; got {cfg}")
        self.cfg = cfg
        num_patches = (cfg.input_size // p) ** 2
        # learned positions for the 2 extra tokens (label, time) and every patch
        self.pos_embed = nn.Parameter(torch.zeros(1, 2 + num_patches, D))
        self.patch_embed = PatchEmbed(cfg.in_channels, D, p)
        self.label_emb = dcae15.LabelEmbedder(cfg.num_classes, D, cfg.class_dropout_prob)
        # the time token is the raw sinusoid of t, width D: no MLP (official mlp_time_embed=False)
        self.in_blocks = nn.ModuleList([UViTBlock(D, cfg.num_heads, cfg.mlp_ratio)
                                        for _ in range(cfg.depth // 2)])
        self.mid_block = UViTBlock(D, cfg.num_heads, cfg.mlp_ratio)
        self.out_blocks = nn.ModuleList([UViTBlock(D, cfg.num_heads, cfg.mlp_ratio, skip=True)
                                         for _ in range(cfg.depth // 2)])
        self.norm = nn.LayerNorm(D)
        self.decoder_pred = nn.Linear(D, p * p * cfg.in_channels)
        self.grad_checkpointing = False
        self.initialize_weights()

    def initialize_weights(self):
        # official: truncated normal (std 0.02) linears with zero bias, LayerNorms (1, 0), the
        # positions truncated normal; the conv and the label table keep PyTorch's init; no zero-init
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x, t, y):  # x: (B, C, H, W), t: (B,), y: (B,) -> v or eps: (B, C, H, W)
        B, C, H, W = x.shape
        x = self.patch_embed(x)  # (B, N, D)
        time = dcae15.timestep_embedding(t, self.cfg.hidden_size).to(x.dtype)[:, None]  # (B, 1, D)
        x = torch.cat([self.label_emb(y)[:, None].to(x.dtype), time, x], dim=1) + self.pos_embed
        skips = []
        for block in self.in_blocks:
            x = self.run_block(block, x)
            skips.append(x)
        x = self.run_block(self.mid_block, x)
        for block in self.out_blocks:  # the last in-block's output goes to the first out-block
            x = self.run_block(block, x, skips.pop())
        x = self.decoder_pred(self.norm(x))[:, 2:]  # drop the label and time tokens
        p = self.cfg.patch_size  # tokens (h w) with features (p1 p2 C), the official order
        x = x.reshape(B, H // p, W // p, p, p, C)
        return torch.einsum("bhwpqc->bchpwq", x).reshape(B, C, H, W).contiguous()  # as DiT's

    def run_block(self, block, *inputs):
        return dcae15.checkpointed(block, *inputs) if self.grad_checkpointing else block(*inputs)

    def set_grad_checkpointing(self, enable=True):
        """Activation checkpointing, one block at a time (official `enable_activation_checkpointing`
        "full")."""
        self.grad_checkpointing = enable
        return self

    def forward_with_cfg(self, x, t, y, cfg_scale):  # guidance over all channels, one batched pass
        return dcae15.classifier_free_guidance(self, x, t, y, cfg_scale)


# ==================================================================================================
# 3. Official files
# ==================================================================================================


def backbone_state_dict(state_dict):
    """The network's weights from an official DC-Gen diffusion file's content: an FSDP / trainer
    checkpoint {"ema": {name: state_dict}} (the first EMA, as the official loader takes it), or a
    Hugging Face file whose keys carry "diffusion_model." (NOTE: that prefix is inferred from the
    official wrapper class, not seen in a real file)."""
    if isinstance(state_dict.get("ema"), dict):
        state_dict = next(iter(state_dict["ema"].values()))
    return {k.removeprefix("diffusion_model."): v for k, v in state_dict.items()}
