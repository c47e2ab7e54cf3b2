"""DiT with adaLN-Zero, label dropout to the null class, and classifier-free guidance."""

import pytest
import torch

import dcae15
from dcaelib import models


def tiny_dit(**kw):
    cfg = dcae15.build_dit_config("DiT-tiny", input_size=4, in_channels=8, num_classes=10, **kw)
    return dcae15.DiT(cfg)


def randomise(model):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def test_output_is_exactly_zero_at_init_and_learns():
    model = tiny_dit()
    x, t, y = torch.randn(3, 8, 4, 4), torch.tensor([0, 500, 999]), torch.tensor([0, 3, 10])
    assert model(x, t, y).abs().max() == 0
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    (model(x, t, y) - x).pow(2).mean().backward()
    opt.step()
    assert model(x, t, y).abs().max() > 0  # zero-init gates are trainable, not dead


def test_every_block_is_the_identity_at_init():
    model = tiny_dit()
    x, c = torch.randn(2, 16, 32), torch.randn(2, 32)
    for block in model.blocks:
        torch.testing.assert_close(block(x, c), x, rtol=0, atol=0)


def test_cfg_scale_one_is_conditional_and_scale_s_is_the_extrapolation():
    model = randomise(tiny_dit()).eval()
    x, t, y = torch.randn(2, 8, 4, 4), torch.tensor([10, 700]), torch.tensor([1, 2])
    cond = model(x, t, y)
    uncond = model(x, t, torch.full_like(y, 10))
    torch.testing.assert_close(model.forward_with_cfg(x, t, y, 1.0), cond, rtol=0, atol=1e-5)
    torch.testing.assert_close(model.forward_with_cfg(x, t, y, 4.0), uncond + 4.0 * (cond - uncond), rtol=1e-4, atol=1e-5)


def test_label_dropout_uses_null_class():
    model = randomise(tiny_dit(class_dropout_prob=1.0))
    y = torch.tensor([0, 5])
    null = model.y_embedder.embedding_table.weight[10]
    model.train()
    assert torch.equal(model.y_embedder(y), null.expand(2, -1))
    model.eval()  # no dropout at inference
    assert torch.equal(model.y_embedder(y), model.y_embedder.embedding_table.weight[y])


def test_patch_size_two_and_128_channels():
    model = randomise(dcae15.DiT(dcae15.build_dit_config("DiT-tiny", input_size=8, in_channels=128, patch_size=2)))
    x = torch.randn(2, 128, 8, 8)
    assert model(x, torch.tensor([1, 2]), torch.tensor([3, 1000])).shape == x.shape
    # unpatchify inverts patchify: tokens in (h, w) order, features in (p, q, c) order
    tokens = x.view(2, 128, 4, 2, 4, 2).permute(0, 2, 4, 3, 5, 1).reshape(2, 16, 4 * 128)
    torch.testing.assert_close(model.unpatchify(tokens), x, rtol=0, atol=0)


def test_registry_sizes_and_bad_config():
    assert dcae15.DiT_CONFIGS["DiT-XL"] == dict(depth=28, hidden_size=1152, num_heads=16)
    assert dcae15.DiT_CONFIGS["DiT-S"] == dict(depth=12, hidden_size=384, num_heads=6)
    with torch.device("meta"):
        xl = dcae15.DiT(dcae15.build_dit_config("DiT-XL", input_size=32, in_channels=4, patch_size=2))
    assert round(sum(p.numel() for p in xl.parameters()) / 1e6) == 675  # DiT-XL/2 as in the DiT paper
    with pytest.raises(ValueError, match="unknown DiT preset"):
        dcae15.build_dit_config("DiT-XXL")
    with pytest.raises(ValueError, match="divisible"):
        dcae15.DiT(dcae15.build_dit_config("DiT-tiny", input_size=5, patch_size=2))


def test_the_classroom_ladders_are_about_4x_apart():
    """The scaling study's sizes (experiments/scaling.sh): S, M, L about a factor 4 apart in
    parameters, the DiT and the U-ViT alike (64 x 4 x 4 latents, 10 classes)."""
    for net in ("DiT", "UViT"):
        sizes = []
        for name in (f"{net}-classroom-S", f"{net}-classroom", f"{net}-classroom-L"):
            cfg = models.build_backbone_config(name, input_size=4, in_channels=64, num_classes=10)
            with torch.device("meta"):
                sizes.append(sum(p.numel() for p in models.build_backbone(cfg).parameters()))
        assert all(3.5 < b / a < 4.5 for a, b in zip(sizes, sizes[1:])), (net, sizes)
