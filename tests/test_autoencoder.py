"""The DC-AE 1.5 autoencoder: official key names and shapes, strict loading, the adaptive latent."""

import pytest
import torch
import torch.nn.functional as F

import dcae15
from dcaelib import models

# ----------------------------------------------------------------------------------------------------
# Expected official state dicts, written out from the fact sheet (official-dcae.md sections 3.2, 3.3,
# 3.5) independently of dcae15.py's module code.


def _rb(prefix, C):
    return {f"{prefix}.main.conv1.conv.weight": (C, C, 3, 3), f"{prefix}.main.conv1.conv.bias": (C,),
            f"{prefix}.main.conv2.conv.weight": (C, C, 3, 3), f"{prefix}.main.conv2.norm.weight": (C,),
            f"{prefix}.main.conv2.norm.bias": (C,)}


def official_15_keys(f64):
    keys = {"encoder.project_in.conv.conv.weight": (64, 3, 3, 3), "encoder.project_in.conv.conv.bias": (64,)}
    # encoder: (stage, width, resblocks, downsample conv out-channels or None)
    enc = [(1, 256, 5, 128), (2, 512, 10, 128), (3, 512, 4, 256), (4, 1024, 4, 256)]
    enc += [(5, 1024, 4, 256), (6, 1024, 4, None)] if f64 else [(5, 1024, 4, None)]
    for s, C, n, down in enc:
        for j in range(n):
            keys.update(_rb(f"encoder.stages.{s}.op_list.{j}", C))
        if down:
            keys[f"encoder.stages.{s}.op_list.{n}.main.conv.conv.weight"] = (down, C, 3, 3)
            keys[f"encoder.stages.{s}.op_list.{n}.main.conv.conv.bias"] = (down,)
    keys["encoder.project_out.op_list.0.conv.weight"] = (128, 1024, 3, 3)
    keys["encoder.project_out.op_list.0.conv.bias"] = (128,)
    keys["decoder.project_in.conv.weight"] = (1024, 128, 3, 3)
    keys["decoder.project_in.conv.bias"] = (1024,)
    # decoder: (stage, width, resblocks, upsample conv (out, in) or None); the upsample sits at op_list.0
    dec = [(1, 256, 5, (1024, 512)), (2, 512, 10, (2048, 512)), (3, 512, 4, (2048, 1024)), (4, 1024, 4, (4096, 1024))]
    dec += [(5, 1024, 4, (4096, 1024)), (6, 1024, 4, None)] if f64 else [(5, 1024, 4, None)]
    for s, C, n, up in dec:
        first = 0
        if up:
            keys[f"decoder.stages.{s}.op_list.0.main.conv.conv.weight"] = (*up, 3, 3)
            keys[f"decoder.stages.{s}.op_list.0.main.conv.conv.bias"] = (up[0],)
            first = 1
        for j in range(first, first + n):
            keys.update(_rb(f"decoder.stages.{s}.op_list.{j}", C))
    keys.update({"decoder.project_out.op_list.0.weight": (256,), "decoder.project_out.op_list.0.bias": (256,),
                 "decoder.project_out.op_list.2.conv.conv.weight": (12, 256, 3, 3),
                 "decoder.project_out.op_list.2.conv.conv.bias": (12,)})
    return keys


TINY_KEYS = {
    "encoder.project_in.conv.conv.weight": (4, 3, 3, 3), "encoder.project_in.conv.conv.bias": (4,),
    **_rb("encoder.stages.1.op_list.0", 16),
    "encoder.stages.1.op_list.1.main.conv.conv.weight": (8, 16, 3, 3),
    "encoder.stages.1.op_list.1.main.conv.conv.bias": (8,),
    **_rb("encoder.stages.2.op_list.0", 32),
    "encoder.project_out.op_list.0.conv.weight": (8, 32, 3, 3), "encoder.project_out.op_list.0.conv.bias": (8,),
    "decoder.project_in.conv.weight": (32, 8, 3, 3), "decoder.project_in.conv.bias": (32,),
    "decoder.stages.1.op_list.0.main.conv.conv.weight": (64, 32, 3, 3),
    "decoder.stages.1.op_list.0.main.conv.conv.bias": (64,),
    **_rb("decoder.stages.1.op_list.1", 16),
    **_rb("decoder.stages.2.op_list.0", 32),
    "decoder.project_out.op_list.0.weight": (16,), "decoder.project_out.op_list.0.bias": (16,),
    "decoder.project_out.op_list.2.conv.conv.weight": (12, 16, 3, 3),
    "decoder.project_out.op_list.2.conv.conv.bias": (12,),
}


def meta_model(name):
    with torch.device("meta"):  # full-size models without allocating their weights
        return dcae15.DCAE(dcae15.build_dcae_config(name))


@pytest.mark.parametrize("name,f64,n_keys,enc_m,dec_m", [
    ("dc-ae-f32c128-1.5", False, 296, 228.61, 295.00),
    ("dc-ae-f64c128-1.5", True, 340, 306.48, 408.26),
])
def test_official_keys_shapes_and_sizes(name, f64, n_keys, enc_m, dec_m):
    ae = meta_model(name)
    got = {k: tuple(v.shape) for k, v in ae.state_dict().items()}
    expected = official_15_keys(f64)
    assert len(expected) == n_keys
    assert got == expected
    assert round(sum(p.numel() for p in ae.encoder.parameters()) / 1e6, 2) == enc_m
    assert round(sum(p.numel() for p in ae.decoder.parameters()) / 1e6, 2) == dec_m
    assert ae.spatial_compression_ratio == (64 if f64 else 32)


@pytest.mark.parametrize("name,f64", [("dc-ae-f32c128-1.5", False), ("dc-ae-f64c128-1.5", True)])
def test_official_state_dict_loads_strictly(name, f64):
    ae = meta_model(name)
    sd = {k: torch.empty(shape, device="meta") for k, shape in official_15_keys(f64).items()}
    dcae15.check_state_dict(ae, sd)  # no error
    result = ae.load_state_dict(sd, strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_tiny_keys_match_fact_sheet(tiny_ae):
    assert {k: tuple(v.shape) for k, v in tiny_ae.state_dict().items()} == TINY_KEYS


def test_check_state_dict_lists_offenders(tiny_ae):
    sd = dict(tiny_ae.state_dict())
    sd.pop("decoder.project_in.conv.bias")
    sd["encoder.extra.weight"] = torch.zeros(1)
    sd["encoder.project_out.op_list.0.conv.weight"] = torch.zeros(4, 32, 3, 3)
    with pytest.raises(ValueError) as err:
        dcae15.check_state_dict(tiny_ae, sd)
    msg = str(err.value)
    assert "decoder.project_in.conv.bias" in msg and "encoder.extra.weight" in msg
    assert "encoder.project_out.op_list.0.conv.weight: file (4, 32, 3, 3) vs model (8, 32, 3, 3)" in msg


@pytest.mark.parametrize("wrap", ["state_dict", "plain", "module_prefix"])
def test_load_official_file_formats(tiny_ae, tmp_path, wrap):
    sd = tiny_ae.state_dict()
    if wrap == "state_dict":  # the official local .pt format; a training file also holds other modules
        obj = {"state_dict": {**sd, "discriminator.conv.weight": torch.zeros(3)}, "step": 5}
    elif wrap == "plain":
        obj = dict(sd)
    else:
        obj = {f"module.{k}": v for k, v in sd.items()}
    path = tmp_path / "official.pt"
    torch.save(obj, path)
    with pytest.warns(UserWarning, match="measure_latent_scale"):  # no official factor for this preset
        ae, scale = dcae15.DCAE.from_pretrained(str(path), "dc-ae-tiny")
    assert scale is None and not ae.training
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(ae.decode(ae.encode(x)), tiny_ae.decode(tiny_ae.encode(x)), rtol=0, atol=0)


def test_load_official_rejects_mismatch(tmp_path):
    small = dcae15.DCAE(dcae15.build_dcae_config("dc-ae-tiny"))
    path = tmp_path / "wrong.pt"
    torch.save({"state_dict": small.state_dict()}, path)
    with pytest.raises(ValueError, match="does not match the model"):
        dcae15.DCAE.from_pretrained(str(path), "dc-ae-f16c64-classroom")
    with pytest.raises(FileNotFoundError):
        dcae15.DCAE.from_pretrained(str(tmp_path / "missing.pt"), "dc-ae-tiny")


def test_safetensors_is_optional(tmp_path):
    path = tmp_path / "model.safetensors"
    try:
        from safetensors.torch import save_file
    except ImportError:
        path.write_bytes(b"")
        with pytest.raises(ImportError, match="pip install safetensors"):
            dcae15.read_weights(str(path))
        return
    sd = dcae15.DCAE(dcae15.build_dcae_config("dc-ae-tiny")).state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    assert dcae15.read_weights(str(path)).keys() == sd.keys()


def test_official_scaling_factors():
    assert models.AUTOENCODER_CONFIGS["dc-ae-f64c128-1.5"].scaling_factor == 0.5935
    assert models.AUTOENCODER_CONFIGS["dc-ae-f32c128-1.5"].scaling_factor is None  # unknown: must be measured


# ----------------------------------------------------------------------------------------------------
# Semantics


@pytest.mark.parametrize("c_prime", [1, 3, 8])
def test_partial_encode_is_prefix_of_full_encode(tiny_ae, c_prime):
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(tiny_ae.encode(x, c_prime), tiny_ae.encode(x)[:, :c_prime], rtol=0, atol=1e-6)


@pytest.mark.parametrize("c_prime", [1, 5, 8])
def test_decode_partial_equals_decode_zero_filled(tiny_ae, c_prime):
    z = torch.randn(2, 8, 4, 4)
    z_filled = torch.cat([z[:, :c_prime], torch.zeros(2, 8 - c_prime, 4, 4)], dim=1)
    torch.testing.assert_close(tiny_ae.decode(z[:, :c_prime]), tiny_ae.decode(z_filled), rtol=0, atol=1e-6)


def test_per_sample_mask_equals_per_sample_truncation(tiny_ae):
    x = torch.randn(3, 3, 16, 16)
    c_prime = torch.tensor([2, 8, 5])
    rec, z = tiny_ae(x, c_prime)
    for i, c in enumerate(c_prime.tolist()):
        rec_i, _ = tiny_ae(x[i : i + 1], c)
        torch.testing.assert_close(rec[i : i + 1], rec_i, rtol=0, atol=1e-5)
        assert (z[i, c:] == 0).all()


def test_shapes_and_residual_shortcuts():
    x = torch.randn(2, 8, 6, 6)
    # averaging shortcut with g = 4 is a 2x2 average pool; with g = 2 it averages horizontal pairs
    torch.testing.assert_close(dcae15.ChannelAveragingDownsample(8, 8)(x), F.avg_pool2d(x, 2))
    pairs = dcae15.ChannelAveragingDownsample(8, 16)(x)
    torch.testing.assert_close(pairs[:, 0], 0.5 * (x[:, 0, 0::2, 0::2] + x[:, 0, 0::2, 1::2]))
    # duplicating shortcut with r = 4 is nearest-neighbour upsampling
    torch.testing.assert_close(dcae15.ChannelDuplicatingUpsample(8, 8)(x), F.interpolate(x, scale_factor=2.0))


def test_rmsnorm_formula_and_fp32_compute():
    norm = dcae15.RMSNorm2d(4)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, 0.5, -1.0]))
        norm.bias.copy_(torch.tensor([0.0, 0.1, 0.2, 0.3]))
    x = torch.randn(2, 4, 3, 3) * 100
    ref = x / torch.sqrt(x.pow(2).mean(1, keepdim=True) + 1e-5) * norm.weight[:, None, None] + norm.bias[:, None, None]
    torch.testing.assert_close(norm(x), ref)
    y16 = norm(x.bfloat16())
    assert y16.dtype == torch.bfloat16
    torch.testing.assert_close(y16, norm(x.bfloat16().float()).bfloat16(), rtol=0, atol=0)


def test_classroom_preset_regime():
    cfg = dcae15.build_dcae_config("dc-ae-f16c64-classroom")
    ae = dcae15.DCAE(cfg)
    assert ae.spatial_compression_ratio >= 16 and cfg.latent_channels >= 64
    assert ae.encode(torch.randn(1, 3, 64, 64)).shape == (1, 64, 4, 4)


# ----------------------------------------------------------------------------------------------------
# Bad input


def test_bad_inputs_raise_clear_errors(tiny_ae):
    with pytest.raises(ValueError, match="not divisible by the spatial compression 4"):
        tiny_ae.encode(torch.randn(1, 3, 18, 16))
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 3, H, W\)"):
        tiny_ae.encode(torch.randn(1, 1, 16, 16))
    for bad in (0, 9, 2.0):
        with pytest.raises(ValueError, match=r"in \[1, 8\]"):
            tiny_ae.encode(torch.randn(1, 3, 16, 16), bad)
    with pytest.raises(ValueError, match=r"1 <= c' <= 8"):
        tiny_ae.decode(torch.randn(1, 9, 4, 4))
    with pytest.raises(ValueError, match="unknown autoencoder preset"):
        dcae15.build_dcae_config("dc-ae-f32c32")
    cfg = dcae15.build_dcae_config("dc-ae-tiny")
    cfg.encoder.depth_list = (0, 1)
    with pytest.raises(ValueError, match="same length"):
        dcae15.DCAE(cfg)


def test_config_dict_round_trip():
    cfg = dcae15.build_dcae_config("dc-ae-f64c128-1.5")
    assert dcae15.DCAEConfig.from_dict(cfg.to_dict()) == cfg
    # list-valued dicts (e.g. after JSON) are accepted too
    d = cfg.to_dict()
    d["encoder"]["width_list"] = list(d["encoder"]["width_list"])
    assert dcae15.DCAEConfig.from_dict(d) == cfg
