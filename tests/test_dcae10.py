"""DC-AE 1.0, the paper's baseline: the official keys, shapes and sizes of each preset, its attention, what
it does with a partial latent, official files, and the scripts training and using one."""

import json

import pytest
import torch
import torch.nn.functional as F

import dcae15
from helpers import run_script
from dcaelib import dcae10, files, models


def resblock(p, C, bn=False):
    keys = {f"{p}.main.conv1.conv.weight": (C, C, 3, 3), f"{p}.main.conv1.conv.bias": (C,),
            f"{p}.main.conv2.conv.weight": (C, C, 3, 3), f"{p}.main.conv2.norm.weight": (C,),
            f"{p}.main.conv2.norm.bias": (C,)}
    if bn:  # BatchNorm's buffers are in the state dict too
        keys.update({f"{p}.main.conv2.norm.running_mean": (C,), f"{p}.main.conv2.norm.running_var": (C,),
                     f"{p}.main.conv2.norm.num_batches_tracked": ()})
    return keys


def evit(p, C):  # EfficientViTBlock with LiteMLA (32-channel heads, no multi-scale branch) and GLUMBConv
    a, m = f"{p}.context_module.main", f"{p}.local_module.main"
    return {f"{a}.qkv.conv.weight": (3 * C, C, 1, 1), f"{a}.proj.conv.weight": (C, C, 1, 1),
            f"{a}.proj.norm.weight": (C,), f"{a}.proj.norm.bias": (C,),
            f"{m}.inverted_conv.conv.weight": (8 * C, C, 1, 1), f"{m}.inverted_conv.conv.bias": (8 * C,),
            f"{m}.depth_conv.conv.weight": (8 * C, 1, 3, 3), f"{m}.depth_conv.conv.bias": (8 * C,),
            f"{m}.point_conv.conv.weight": (C, 4 * C, 1, 1), f"{m}.point_conv.norm.weight": (C,),
            f"{m}.point_conv.norm.bias": (C,)}


def official_10_keys(w, enc_depth, dec_depth, c):
    """The official DC-AE 1.0 state dict, from the fact sheet's rules (official-dcae.md 2.4-2.6, 3.4): ResBlocks
    in stages 1-2, EViTGLU from stage 3, BatchNorm in the decoder's ResBlocks, `main.` on the encoder's last
    and the decoder's first conv (their shortcuts)."""
    n, keys = len(w), {"encoder.project_in.conv.conv.weight": (w[1] // 4, 3, 3, 3),
                       "encoder.project_in.conv.conv.bias": (w[1] // 4,)}
    for i in range(1, n):
        for j in range(enc_depth[i]):
            p = f"encoder.stages.{i}.op_list.{j}"
            keys.update(resblock(p, w[i]) if i < 3 else evit(p, w[i]))
        if i < n - 1:
            p = f"encoder.stages.{i}.op_list.{enc_depth[i]}.main.conv.conv"
            keys.update({f"{p}.weight": (w[i + 1] // 4, w[i], 3, 3), f"{p}.bias": (w[i + 1] // 4,)})
    keys.update({"encoder.project_out.main.op_list.0.conv.weight": (c, w[-1], 3, 3),
                 "encoder.project_out.main.op_list.0.conv.bias": (c,),
                 "decoder.project_in.main.conv.weight": (w[-1], c, 3, 3), "decoder.project_in.main.conv.bias": (w[-1],)})
    for i in range(1, n):
        first = 0
        if i < n - 1:
            p = f"decoder.stages.{i}.op_list.0.main.conv.conv"
            keys.update({f"{p}.weight": (4 * w[i], w[i + 1], 3, 3), f"{p}.bias": (4 * w[i],)})
            first = 1
        for j in range(first, first + dec_depth[i]):
            p = f"decoder.stages.{i}.op_list.{j}"
            keys.update(resblock(p, w[i], bn=True) if i < 3 else evit(p, w[i]))
    keys.update({"decoder.project_out.op_list.0.weight": (w[1],), "decoder.project_out.op_list.0.bias": (w[1],),
                 "decoder.project_out.op_list.2.conv.conv.weight": (12, w[1], 3, 3),
                 "decoder.project_out.op_list.2.conv.conv.bias": (12,)})
    return keys


F32 = [128, 256, 512, 512, 1024, 1024]
PRESETS = {  # name: (widths, encoder depths, decoder depths, c, official M parameters: all, encoder, entries)
    "dc-ae-f32c32-in-1.0": (F32, [0, 4, 8, 2, 2, 2], [0, 5, 10, 2, 2, 2], 32, (323.36, 123.17, 338)),
    "dc-ae-f64c128-in-1.0": (F32 + [2048], [0, 4, 8, 2, 2, 2, 2], [0, 5, 10, 2, 2, 2, 2], 128, (676.90, 264.55, 386)),
    "dc-ae-f128c512-in-1.0": (F32 + [2048, 2048], [0, 4, 8, 2, 2, 2, 2, 2], [0, 5, 10, 2, 2, 2, 2, 2], 512,
                              (1120.68, None, None)),
}


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_have_the_official_keys_shapes_and_sizes(name):
    w, enc_depth, dec_depth, c, (millions, enc_millions, entries) = PRESETS[name]
    with torch.device("meta"):
        ae = models.build_autoencoder(models.autoencoder_config(name))
    sd = {k: tuple(v.shape) for k, v in ae.state_dict().items()}
    assert sd == official_10_keys(w, enc_depth, dec_depth, c)
    assert entries is None or len(sd) == entries
    assert sum(p.numel() for p in ae.parameters()) / 1e6 == pytest.approx(millions, abs=0.005)
    if enc_millions is not None:
        assert sum(p.numel() for p in ae.encoder.parameters()) / 1e6 == pytest.approx(enc_millions, abs=0.005)
    mix = models.autoencoder_config(name.replace("-in-", "-mix-"))  # the mix models: the same architecture
    assert mix.encoder == ae.cfg.encoder and mix.decoder == ae.cfg.decoder


def test_official_scaling_factors_of_the_imagenet_models():
    assert models.autoencoder_config("dc-ae-f32c32-in-1.0").scaling_factor == 0.3189
    assert models.autoencoder_config("dc-ae-f64c128-in-1.0").scaling_factor == 0.2889
    assert models.autoencoder_config("dc-ae-f128c512-in-1.0").scaling_factor is None  # not in the official code


def test_lite_mla_is_relu_attention_normalised_over_the_keys():
    """The linear form (what the code computes) against the quadratic form written out: for each query n,
    sum_m v_m (k_m . q_n) / (sum_m k_m . q_n + eps), with q = relu, k = relu, heads of 32 channels."""
    torch.manual_seed(0)
    mla = dcae10.LiteMLA(64, norm="trms2d")
    x = torch.randn(2, 64, 5, 7)
    qkv = mla.qkv(x).reshape(2, 2, 96, 35)  # 2 heads: [q | k | v] per head
    q, k, v = F.relu(qkv[:, :, :32]), F.relu(qkv[:, :, 32:64]), qkv[:, :, 64:]
    att = k.transpose(-1, -2) @ q  # (B, heads, keys m, queries n)
    out = v @ (att / (att.sum(dim=2, keepdim=True) + 1e-15))
    assert torch.allclose(mla(x), mla.proj(out.reshape(2, 64, 5, 7)), atol=1e-5)


def random_10(name="dc-ae-tiny-1.0"):
    torch.manual_seed(0)
    ae = models.build_autoencoder(models.autoencoder_config(name))
    with torch.no_grad():
        for k, v in ae.state_dict().items():  # BatchNorm statistics too, so that eval mode uses them
            if v.is_floating_point():
                v.copy_(v.abs() + 0.5 if "running_var" in k else v + 0.1 * torch.randn_like(v))
    return ae.eval()


def test_a_partial_latent_is_a_slice_of_the_encoding_and_zero_filled_in_the_decoder():
    ae = random_10()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        z = ae.encode(x)
        assert z.shape == (2, 8, 4, 4)
        # the conv's first c' rows plus the shortcut's first c' channel-group means
        assert torch.allclose(ae.encode(x, 3), z[:, :3], atol=1e-6)
        assert torch.allclose(ae.decode(z[:, :3]), ae.decode(z * dcae15.channel_mask(8, 3)), atol=1e-6)
        # the shortcut is real: without it the latent changes
        assert not torch.allclose(ae.encoder.project_out.main(ae.encoder.stages[-1](
            ae.encoder.stages[2](ae.encoder.stages[1](ae.encoder.project_in(x))))), z)
        assert ae.decoder.project_out.op_list[1].__class__ is torch.nn.ReLU  # 1.0 ends in ReLU (1.5: SiLU)


@pytest.mark.parametrize("wrap", ["state_dict", "plain"])
def test_an_official_format_file_loads_strictly_with_its_batchnorm_statistics(tmp_path, wrap):
    ae = random_10()
    sd = ae.state_dict()
    content = {"state_dict": {**sd, "disc.w": torch.ones(1)}} if wrap == "state_dict" else sd
    torch.save(content, tmp_path / "official.pt")
    with pytest.warns(UserWarning, match="measure_latent_scale"):
        loaded, scale = dcae10.DCAE10.from_pretrained(str(tmp_path / "official.pt"), "dc-ae-tiny-1.0")
    assert scale is None and not loaded.training
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in sd.items())
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded(x)[0], ae(x)[0])
    with pytest.raises(ValueError, match="missing keys"):  # a 1.5 file is not a 1.0 model
        torch.save(models.build_autoencoder(models.autoencoder_config("dc-ae-tiny")).state_dict(), tmp_path / "15.pt")
        dcae10.DCAE10.from_pretrained(str(tmp_path / "15.pt"), "dc-ae-tiny-1.0")


def test_train_ae_trains_resumes_and_the_pipeline_uses_a_10_autoencoder(tmp_path):
    args = ["--model", "dc-ae-tiny-1.0", "--image-size", "16", "--batch-size", "4", "--perceptual", "off",
            "--log-every", "1"]
    run_script("train_ae.py", [*args, "--max-steps", "3", "--out", tmp_path / "straight"])
    run_script("train_ae.py", [*args, "--max-steps", "2", "--out", tmp_path / "split"])
    run_script("train_ae.py", [*args, "--max-steps", "3", "--out", tmp_path / "split", "--resume"])
    a = files.load_checkpoint(str(tmp_path / "straight" / "last.pt"))
    b = files.load_checkpoint(str(tmp_path / "split" / "last.pt"))
    for part in ("model", "ema"):  # BatchNorm buffers included
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    assert any("running_mean" in k for k in a["ema"])
    ae = tmp_path / "straight" / "last.pt"
    run_script("evaluate.py", ["recon", "--ae-ckpt", ae, "--image-size", "16", "--num-images", "4", "--lpips", "off",
                               "--c-primes", "2,8", "--json", tmp_path / "r.json"])
    assert set(json.loads((tmp_path / "r.json").read_text())["results"]["model"]) == {"2", "8"}
    run_script("train_dit.py", ["--ae-ckpt", ae, "--model", "DiT-tiny", "--image-size", "16", "--max-images", "40",
                                "--batch-size", "8", "--max-steps", "2", "--sample-steps", "2",
                                "--cache-dir", tmp_path / "cache", "--out", tmp_path / "dit"])
    run_script("sample.py", ["--ckpt", tmp_path / "dit" / "last.pt", "--num-samples", "2", "--steps", "2",
                             "--tile-size", "8", "--out", tmp_path / "s.png"])  # 16 px images in 8 px tiles
    assert (tmp_path / "s.png").is_file()
