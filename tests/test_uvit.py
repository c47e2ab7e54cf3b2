"""U-ViT, the backbone of the paper's USiT models: the official sizes and keys, the long skips, guidance,
that it learns, and the scripts training, resuming and sampling one."""

import json
import shutil

import pytest
import torch

import dcae15
from helpers import run_script
from dcaelib import files, models, uvit

# The official parameter counts (DC-Gen uvit.py, 1000 classes, patch 1): S and H on 32-channel 16x16
# latents (f32c32 at 512 px), 2B and 3B on 128-channel 8x8 latents (f64c128 at 512 px).
OFFICIAL = {"UViT-S": (32, 16, 44.79, 163), "UViT-H": (32, 16, 500.87, 355),
            "UViT-2B": (128, 8, 1580.40, 355), "UViT-3B": (128, 8, 3107.73, 691)}


def official_keys(depth, D, C, N, classes=1000):
    """The official state-dict names and shapes, written out from the official module tree:
    pos_embed, patch_embed.proj, label_emb.embedding_table, in_blocks / mid_block / out_blocks (pre-LN,
    qkv without bias, timm Mlp fc1 / fc2, skip_linear on the out-blocks), norm, decoder_pred."""
    keys = {"pos_embed": (1, 2 + N, D), "patch_embed.proj.weight": (D, C, 1, 1), "patch_embed.proj.bias": (D,),
            "label_emb.embedding_table.weight": (classes + 1, D)}
    names = [f"in_blocks.{i}" for i in range(depth // 2)] + ["mid_block"] + \
            [f"out_blocks.{i}" for i in range(depth // 2)]
    for name in names:
        keys.update({f"{name}.norm1.weight": (D,), f"{name}.norm1.bias": (D,), f"{name}.attn.qkv.weight": (3 * D, D),
                     f"{name}.attn.proj.weight": (D, D), f"{name}.attn.proj.bias": (D,),
                     f"{name}.norm2.weight": (D,), f"{name}.norm2.bias": (D,),
                     f"{name}.mlp.fc1.weight": (4 * D, D), f"{name}.mlp.fc1.bias": (4 * D,),
                     f"{name}.mlp.fc2.weight": (D, 4 * D), f"{name}.mlp.fc2.bias": (D,)})
        if name.startswith("out_blocks"):
            keys.update({f"{name}.skip_linear.weight": (D, 2 * D), f"{name}.skip_linear.bias": (D,)})
    keys.update({"norm.weight": (D,), "norm.bias": (D,), "decoder_pred.weight": (C, D), "decoder_pred.bias": (C,)})
    return keys


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_presets_have_the_official_keys_shapes_and_parameter_counts(name):
    C, n, millions, entries = OFFICIAL[name]
    cfg = uvit.build_uvit_config(name, input_size=n, in_channels=C, num_classes=1000)
    with torch.device("meta"):
        model = models.build_backbone(cfg)
    assert isinstance(model, uvit.UViT)
    sd = model.state_dict()
    assert len(sd) == entries
    assert {k: tuple(v.shape) for k, v in sd.items()} == official_keys(cfg.depth, cfg.hidden_size, C, n * n)
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(millions, abs=0.005)


def tiny(**kwargs):
    torch.manual_seed(0)
    return uvit.UViT(uvit.build_uvit_config("UViT-tiny", input_size=4, in_channels=8, num_classes=10,
                                                **{"depth": 4, **kwargs}))


def test_each_out_block_merges_the_output_of_its_mirror_in_block():
    model = tiny().eval()
    outputs, skips = {}, {}
    for i, block in enumerate(model.in_blocks):
        block.register_forward_hook(lambda m, args, out, i=i: outputs.__setitem__(i, out))
    for j, block in enumerate(model.out_blocks):
        block.register_forward_pre_hook(lambda m, args, j=j: skips.__setitem__(j, args[1]))
    x, t, y = torch.randn(2, 8, 4, 4), torch.rand(2), torch.tensor([1, 2])
    model(x, t, y)
    n = len(model.in_blocks)
    assert n == 2 and len(skips) == n
    for j in range(n):  # the first out-block takes the last in-block's output, and so on (a U)
        assert torch.equal(skips[j], outputs[n - 1 - j])
    # and the skip matters: zeroing an out-block's skip_linear half for the skip changes the output
    with torch.no_grad():
        before = model(x, t, y)
        model.out_blocks[0].skip_linear.weight[:, 32:] = 0
        assert not torch.allclose(model(x, t, y), before)


def test_tokens_are_label_time_patches_and_the_time_token_is_the_raw_sinusoid():
    model = tiny().eval()
    seen = {}
    model.in_blocks[0].register_forward_pre_hook(lambda m, args: seen.__setitem__("x", args[0]))
    x, t, y = torch.randn(2, 8, 4, 4), torch.tensor([0.25, 0.75]), torch.tensor([3, 10])  # 10: the null class
    model(x, t, y)
    tokens = seen["x"] - model.pos_embed
    assert tokens.shape == (2, 2 + 16, 32)
    assert torch.allclose(tokens[:, 0], model.label_emb.embedding_table.weight[y], atol=1e-6)
    assert torch.allclose(tokens[:, 1], dcae15.timestep_embedding(t, 32), atol=1e-6)
    patches = model.patch_embed.proj(x).flatten(2).transpose(1, 2)
    assert torch.allclose(tokens[:, 2:], patches, atol=1e-6)


def test_guidance_is_two_plain_forwards_mixed():
    model = tiny().eval()
    with torch.no_grad():
        for p in model.parameters():  # away from the init, so that the label matters
            p.add_(0.05 * torch.randn_like(p))
        x, t, y = torch.randn(3, 8, 4, 4), torch.rand(3), torch.tensor([0, 4, 9])
        cond, uncond = model(x, t, y), model(x, t, torch.full_like(y, 10))
        assert not torch.allclose(cond, uncond)
        assert torch.allclose(model.forward_with_cfg(x, t, y, 3.0), uncond + 3.0 * (cond - uncond), atol=1e-5)


def test_a_tiny_uvit_fits_a_batch_with_the_augmented_flow_loss():
    model = tiny(hidden_size=64, class_dropout_prob=0.0)
    flow = dcae15.build_objective("flow")
    x, y = torch.randn(8, 8, 4, 4), torch.arange(8)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(100):  # the same t and noise every step: a regression the model can fit
        loss, _ = flow.training_loss(model, x, y, c_prime=3, generator=torch.Generator().manual_seed(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10


def test_official_files_load_strictly(tmp_path):
    model = tiny()
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    # an official trainer / FSDP checkpoint (its first EMA), and a Hugging Face file's prefixed keys
    for content in ({"ema": {"ema_0": sd}, "step": 7}, {f"diffusion_model.{k}": v for k, v in sd.items()}):
        torch.save(content, tmp_path / "official.pt")
        loaded = tiny(class_dropout_prob=0.1)
        with torch.no_grad():
            for p in loaded.parameters():
                p.zero_()
        raw = torch.load(tmp_path / "official.pt", weights_only=True)
        loaded.load_state_dict(uvit.backbone_state_dict(raw), strict=True)
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in sd.items())


def test_scripts_train_resume_sample_and_judge_a_uvit(tmp_path, trained_ae):
    (tmp_path / "ae").mkdir()
    shutil.copy(trained_ae, tmp_path / "ae" / "last.pt")
    common = ["--ae-ckpt", tmp_path / "ae" / "last.pt", "--model", "UViT-tiny", "--image-size", "16",
              "--max-images", "40", "--batch-size", "8", "--log-every", "2", "--sample-steps", "2",
              "--cache-dir", tmp_path / "cache"]
    proc = run_script("train_dit.py", [*common, "--max-steps", "4", "--out", tmp_path / "straight"])
    assert "training UViT-tiny" in proc.stdout
    run_script("train_dit.py", [*common, "--max-steps", "2", "--out", tmp_path / "split"])
    run_script("train_dit.py", [*common, "--max-steps", "4", "--out", tmp_path / "split", "--resume"])
    a = files.load_checkpoint(str(tmp_path / "straight" / "last.pt"))
    b = files.load_checkpoint(str(tmp_path / "split" / "last.pt"))
    assert a["backbone"] == "UViT" and all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"])
    model, _, _ = files.load_dit(str(tmp_path / "straight" / "last.pt"))
    assert isinstance(model, uvit.UViT)
    run_script("sample.py", ["--ckpt", tmp_path / "straight" / "last.pt", "--num-samples", "4", "--steps", "2",
                             "--npz", tmp_path / "s.npz", "--out", tmp_path / "s.png"])
    assert (tmp_path / "s.npz").is_file()
    run_script("evaluate.py", ["classes", "--ckpt", tmp_path / "straight" / "last.pt", "--num-images", "40",
                                      "--judge-steps", "3", "--batch-size", "4", "--steps", "2", "--num-samples", "4",
                                      "--num-val", "20", "--judge-cache", tmp_path / "judge", "--json", tmp_path / "c.json"])
    samples = json.loads((tmp_path / "c.json").read_text())["samples"]
    assert set(samples) == {"1.0", "4.0"} and all(0 <= r["share"] <= 1 for r in samples.values())
