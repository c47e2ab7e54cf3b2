"""In and out of the ecosystem: diffusers' AutoencoderDC folders both ways (export.py, and every
--ae-ckpt), Hugging Face Hub ids, and tiled encode / decode for large images.

diffusers is not a requirement, so its format is checked against tables taken from diffusers 0.42.1
(AutoencoderDC's config keys, its state-dict names and shapes); where diffusers is installed, the last
tests load the exported folders with it and compare the numbers."""

import json
import os
import sys
import types

import pytest
import torch

from helpers import run_script
from dcaelib import files, models

# AutoencoderDC.__init__'s parameters (diffusers 0.42.1): what its config.json holds
DIFFUSERS_KEYS = {
    "in_channels", "latent_channels", "attention_head_dim", "encoder_block_types", "decoder_block_types",
    "encoder_block_out_channels", "decoder_block_out_channels", "encoder_layers_per_block",
    "decoder_layers_per_block", "encoder_qkv_multiscales", "decoder_qkv_multiscales", "upsample_block_type",
    "downsample_block_type", "decoder_norm_types", "decoder_act_fns", "encoder_out_shortcut",
    "decoder_in_shortcut", "decoder_conv_act_fn", "scaling_factor"}

# AutoencoderDC(**config of dc-ae-tiny-1.0).state_dict(), diffusers 0.42.1: name, shape ("-": a scalar)
TINY_10_DIFFUSERS = """
    encoder.conv_in.conv.weight 4x3x3x3
    encoder.conv_in.conv.bias 4
    encoder.down_blocks.1.0.conv1.weight 16x16x3x3
    encoder.down_blocks.1.0.conv1.bias 16
    encoder.down_blocks.1.0.conv2.weight 16x16x3x3
    encoder.down_blocks.1.0.norm.weight 16
    encoder.down_blocks.1.0.norm.bias 16
    encoder.down_blocks.1.1.conv.weight 8x16x3x3
    encoder.down_blocks.1.1.conv.bias 8
    encoder.down_blocks.2.0.conv1.weight 32x32x3x3
    encoder.down_blocks.2.0.conv1.bias 32
    encoder.down_blocks.2.0.conv2.weight 32x32x3x3
    encoder.down_blocks.2.0.norm.weight 32
    encoder.down_blocks.2.0.norm.bias 32
    encoder.down_blocks.2.1.conv.weight 8x32x3x3
    encoder.down_blocks.2.1.conv.bias 8
    encoder.down_blocks.3.0.attn.to_q.weight 32x32
    encoder.down_blocks.3.0.attn.to_k.weight 32x32
    encoder.down_blocks.3.0.attn.to_v.weight 32x32
    encoder.down_blocks.3.0.attn.to_out.weight 32x32
    encoder.down_blocks.3.0.attn.norm_out.weight 32
    encoder.down_blocks.3.0.attn.norm_out.bias 32
    encoder.down_blocks.3.0.conv_out.conv_inverted.weight 256x32x1x1
    encoder.down_blocks.3.0.conv_out.conv_inverted.bias 256
    encoder.down_blocks.3.0.conv_out.conv_depth.weight 256x1x3x3
    encoder.down_blocks.3.0.conv_out.conv_depth.bias 256
    encoder.down_blocks.3.0.conv_out.conv_point.weight 32x128x1x1
    encoder.down_blocks.3.0.conv_out.norm.weight 32
    encoder.down_blocks.3.0.conv_out.norm.bias 32
    encoder.conv_out.weight 8x32x3x3
    encoder.conv_out.bias 8
    decoder.conv_in.weight 32x8x3x3
    decoder.conv_in.bias 32
    decoder.up_blocks.1.0.conv.weight 64x32x3x3
    decoder.up_blocks.1.0.conv.bias 64
    decoder.up_blocks.1.1.conv1.weight 16x16x3x3
    decoder.up_blocks.1.1.conv1.bias 16
    decoder.up_blocks.1.1.conv2.weight 16x16x3x3
    decoder.up_blocks.1.1.norm.weight 16
    decoder.up_blocks.1.1.norm.bias 16
    decoder.up_blocks.1.1.norm.running_mean 16
    decoder.up_blocks.1.1.norm.running_var 16
    decoder.up_blocks.1.1.norm.num_batches_tracked -
    decoder.up_blocks.2.0.conv.weight 128x32x3x3
    decoder.up_blocks.2.0.conv.bias 128
    decoder.up_blocks.2.1.conv1.weight 32x32x3x3
    decoder.up_blocks.2.1.conv1.bias 32
    decoder.up_blocks.2.1.conv2.weight 32x32x3x3
    decoder.up_blocks.2.1.norm.weight 32
    decoder.up_blocks.2.1.norm.bias 32
    decoder.up_blocks.2.1.norm.running_mean 32
    decoder.up_blocks.2.1.norm.running_var 32
    decoder.up_blocks.2.1.norm.num_batches_tracked -
    decoder.up_blocks.3.0.attn.to_q.weight 32x32
    decoder.up_blocks.3.0.attn.to_k.weight 32x32
    decoder.up_blocks.3.0.attn.to_v.weight 32x32
    decoder.up_blocks.3.0.attn.to_out.weight 32x32
    decoder.up_blocks.3.0.attn.norm_out.weight 32
    decoder.up_blocks.3.0.attn.norm_out.bias 32
    decoder.up_blocks.3.0.conv_out.conv_inverted.weight 256x32x1x1
    decoder.up_blocks.3.0.conv_out.conv_inverted.bias 256
    decoder.up_blocks.3.0.conv_out.conv_depth.weight 256x1x3x3
    decoder.up_blocks.3.0.conv_out.conv_depth.bias 256
    decoder.up_blocks.3.0.conv_out.conv_point.weight 32x128x1x1
    decoder.up_blocks.3.0.conv_out.norm.weight 32
    decoder.up_blocks.3.0.conv_out.norm.bias 32
    decoder.norm_out.weight 16
    decoder.norm_out.bias 16
    decoder.conv_out.conv.weight 12x16x3x3
    decoder.conv_out.conv.bias 12
"""


def table(text):
    return {name: tuple(int(n) for n in shape.split("x")) if shape != "-" else ()
            for name, shape in (line.split() for line in text.strip().splitlines())}


def randomized(name):
    """A preset with random weights, its norms and BatchNorm statistics away from their defaults."""
    ae = models.build_autoencoder(models.autoencoder_config(name))
    with torch.no_grad():
        for n, p in ae.named_parameters():
            if "norm" in n:
                p.add_(0.2 * torch.randn_like(p))
        for m in ae.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return ae.eval()


def our_checkpoint(ae, path, scale=0.42):
    """The parts of a train_ae.py checkpoint that readers use."""
    files.save_checkpoint({"kind": files.AE_KIND, "config": ae.cfg.to_dict(), "ema": ae.state_dict(),
                                "latent_scale": scale}, str(path))
    return str(path)


# ----------------------------------------------------------------------------------------------------
# The format: config.json and the state dict


def test_config_json_holds_what_diffusers_reads():
    tiny = files.diffusers_config(models.autoencoder_config("dc-ae-tiny"), 0.5)
    assert set(tiny) == DIFFUSERS_KEYS | {"_class_name", "_diffusers_version"}
    assert tiny == {
        "_class_name": "AutoencoderDC", "_diffusers_version": "0.35.0", "in_channels": 3, "latent_channels": 8,
        "attention_head_dim": 32, "encoder_block_types": ["ResBlock"] * 3, "decoder_block_types": ["ResBlock"] * 3,
        "encoder_block_out_channels": [8, 16, 32], "decoder_block_out_channels": [8, 16, 32],
        "encoder_layers_per_block": [0, 1, 1], "decoder_layers_per_block": [0, 1, 1],
        "encoder_qkv_multiscales": [[], [], []], "decoder_qkv_multiscales": [[], [], []],
        "upsample_block_type": "pixel_shuffle", "downsample_block_type": "pixel_unshuffle",
        "decoder_norm_types": ["rms_norm"] * 3, "decoder_act_fns": ["silu"] * 3,
        # the DC-AE 1.5 form: no shortcut around the latent, SiLU before the last conv
        "encoder_out_shortcut": False, "decoder_in_shortcut": False, "decoder_conv_act_fn": "silu",
        "scaling_factor": 0.5}
    old = files.diffusers_config(models.autoencoder_config("dc-ae-f32c32-in-1.0"), 0.3189)
    assert old["encoder_block_types"] == ["ResBlock"] * 3 + ["EfficientViTBlock"] * 3
    assert old["decoder_norm_types"] == ["batch_norm"] * 3 + ["rms_norm"] * 3
    assert old["decoder_act_fns"] == ["relu"] * 3 + ["silu"] * 3
    assert (old["encoder_out_shortcut"], old["decoder_in_shortcut"], old["decoder_conv_act_fn"]) == (True, True, "relu")
    assert old["encoder_layers_per_block"] == [0, 4, 8, 2, 2, 2] and old["decoder_layers_per_block"] == [0, 5, 10, 2, 2, 2]


@pytest.mark.parametrize("name", sorted(models.AUTOENCODER_CONFIGS))
def test_every_preset_goes_to_diffusers_config_and_back(name):
    cfg = models.autoencoder_config(name)
    config = json.loads(json.dumps(files.diffusers_config(cfg, 0.25)))  # as config.json holds it
    cfg.scaling_factor = 0.25
    assert files.config_from_diffusers(config, "x") == cfg


def test_state_dict_names_and_shapes_are_diffusers():
    ae = randomized("dc-ae-tiny-1.0")  # ResBlocks, EfficientViT blocks, BatchNorm and both shortcuts
    weights = files.to_diffusers(ae.state_dict())
    assert {k: tuple(v.shape) for k, v in weights.items()} == table(TINY_10_DIFFUSERS)
    back = files.from_diffusers(ae.cfg, weights, "x")
    assert back.keys() == ae.state_dict().keys() and all(torch.equal(back[k], v) for k, v in ae.state_dict().items())
    # a stem and a head with blocks at full resolution (depth_list[0] > 0) are bare convs in diffusers
    cfg = models.autoencoder_config("dc-ae-tiny")
    cfg.encoder.depth_list = cfg.decoder.depth_list = (1, 1, 1)
    names = set(files.to_diffusers(models.build_autoencoder(cfg).state_dict()))
    assert {"encoder.conv_in.weight", "decoder.conv_out.weight", "encoder.down_blocks.0.0.conv1.weight",
            "encoder.down_blocks.0.1.conv.weight", "decoder.up_blocks.0.0.conv.weight"} <= names


def test_what_diffusers_cannot_hold_is_refused_before_writing(tmp_path, safetensors):
    cfg = models.autoencoder_config("dc-ae-tiny")
    cfg.encoder.act = "relu"  # diffusers' encoder is SiLU throughout
    with pytest.raises(ValueError, match="cannot be written as a diffusers AutoencoderDC: its encoder"):
        files.save_diffusers(str(tmp_path / "out"), cfg, models.build_autoencoder(cfg).state_dict(), 1.0)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------------
# export.py and reading the folder back


@pytest.mark.parametrize("source", ["ours", "official"])
def test_export_then_import_is_bitwise(tmp_path, safetensors, source):
    name = "dc-ae-tiny" if source == "ours" else "dc-ae-tiny-1.0"
    ae = randomized(name)
    if source == "ours":
        args, scale = ["--ae-ckpt", our_checkpoint(ae, tmp_path / "last.pt")], 0.42
    else:  # an official file of the preset, with a latent scale given by hand
        torch.save({"state_dict": ae.state_dict()}, tmp_path / "official.pt")
        args, scale = ["--ae-ckpt", tmp_path / "official.pt", "--ae-config", name, "--latent-scale", "0.3"], 0.3
    out = tmp_path / "diffusers"
    proc = run_script("export.py", ["diffusers", *args, "--out", out])
    assert f"wrote {out}" in proc.stdout and "from_pretrained" in proc.stdout
    assert sorted(os.listdir(out)) == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert json.loads((out / "config.json").read_text())["scaling_factor"] == scale
    back, back_scale, info = files.load_autoencoder(str(out))
    assert back_scale == scale and info["source"] == "diffusers"
    assert all(torch.equal(back.state_dict()[k], v) for k, v in ae.state_dict().items())
    x = torch.randn(2, 3, 32, 16)
    assert torch.equal(back.decode(back.encode(x)), ae.decode(ae.encode(x)))


def test_export_needs_a_latent_scale_and_says_so(tmp_path):
    torch.save(randomized("dc-ae-tiny").state_dict(), tmp_path / "official.pt")
    proc = run_script("export.py", ["diffusers", "--ae-ckpt", tmp_path / "official.pt", "--ae-config", "dc-ae-tiny",
                                    "--out", tmp_path / "out"], check=False)
    assert proc.returncode == 1 and "pass --latent-scale" in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_without_safetensors_one_line_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "safetensors", None)  # import safetensors fails
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    proc = run_script("export.py", ["diffusers", "--ae-ckpt", our_checkpoint(randomized("dc-ae-tiny"), tmp_path / "a.pt"),
                                    "--out", tmp_path / "out"], check=False)
    assert proc.returncode == 1 and "pip install safetensors" in proc.stderr and len(proc.stderr.splitlines()) == 1


def write_folder(folder, config, weights=None):
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    if weights is not None:
        from safetensors.torch import save_file

        save_file(weights, str(folder / files.DIFFUSERS_WEIGHTS))
    return str(folder)


def test_bad_folders_give_one_line_errors(tmp_path, safetensors):
    ae = randomized("dc-ae-tiny")
    good = files.diffusers_config(ae.cfg, 1.0)
    weights = {k: v.contiguous() for k, v in files.to_diffusers(ae.state_dict()).items()}
    cases = {
        "another class": ({"_class_name": "AutoencoderKL"}, None, "holds a diffusers AutoencoderKL, not an AutoencoderDC"),
        "interpolate": ({**good, "upsample_block_type": "interpolate"}, weights, "upsample_block_type 'interpolate'"),
        "multi-scale": ({**files.diffusers_config(models.autoencoder_config("dc-ae-tiny-1.0"), 1.0),
                         "decoder_qkv_multiscales": [[], [], [], [5]]}, None, "multi-scale attention"),
        "no weights": (good, None, f"no {files.DIFFUSERS_WEIGHTS}"),
        "wrong weights": ({**good, "latent_channels": 4}, weights, "does not match its config.json"),
    }
    for i, (what, (config, w, message)) in enumerate(cases.items()):
        folder = write_folder(tmp_path / f"case{i}", config, w)
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            files.read_autoencoder(folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="a folder without autoencoder weights"):
        files.read_autoencoder(str(empty))
    folder = write_folder(tmp_path / "fine", good, weights)
    with pytest.raises(ValueError, match="another autoencoder than the preset dc-ae-f16c64-classroom"):
        files.read_autoencoder(folder, "dc-ae-f16c64-classroom")
    proc = run_script("export.py", ["diffusers", "--ae-ckpt", tmp_path / "case0", "--out", tmp_path / "o"], check=False)
    assert proc.returncode == 1 and "AutoencoderKL" in proc.stderr and len(proc.stderr.splitlines()) == 1


def test_a_diffusers_folder_goes_wherever_an_autoencoder_goes(tmp_path, safetensors):
    ae = randomized("dc-ae-tiny")
    files.save_diffusers(str(tmp_path / "hf"), ae.cfg, ae.state_dict(), 0.42)
    folder = tmp_path / "hf"
    run_script("train_ae.py", ["--model", "dc-ae-tiny", "--init-from", folder, "--image-size", "16", "--batch-size",
                               "4", "--max-steps", "1", "--perceptual", "off", "--out", tmp_path / "ae"])
    ckpt = files.load_checkpoint(str(tmp_path / "ae" / "last.pt"))
    assert ckpt["config"] == ae.cfg.to_dict() | {"scaling_factor": 0.42}
    proc = run_script("evaluate.py", ["recon", "--ae-ckpt", folder, "--baseline-ckpt", tmp_path / "ae" / "last.pt",
                                      "--image-size", "16", "--num-images", "2", "--c-primes", "8",
                                      "--lpips", "off", "--fid", "off", "--tile-size", "8", "--json", tmp_path / "r.json"])
    assert set(json.loads((tmp_path / "r.json").read_text())["results"]) == {"model", "baseline"}, proc.stdout
    assert "coded in 8 px tiles overlapping by 0 px" in proc.stdout  # recon tiles above --tile-size


# ----------------------------------------------------------------------------------------------------
# Hugging Face Hub ids (the download is monkeypatched: no network)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A fake huggingface_hub whose snapshot_download copies from tmp_path/remote/ORG/NAME into a
    cache folder and records its calls."""
    import shutil

    calls = []

    def snapshot_download(repo_id, revision=None, allow_patterns=None):
        calls.append((repo_id, revision, allow_patterns))
        src = tmp_path / "remote" / repo_id
        if not src.is_dir():
            raise OSError(f"Cannot find the requested files in the local cache for {repo_id}")
        dst = tmp_path / "cache" / repo_id.replace("/", "--") / (revision or "main")
        if not dst.exists():
            shutil.copytree(src, dst)
        return str(dst)

    module = types.ModuleType("huggingface_hub")
    module.snapshot_download = snapshot_download
    monkeypatch.setitem(sys.modules, "huggingface_hub", module)
    monkeypatch.chdir(tmp_path)  # a relative org/name must not be a local folder
    return tmp_path / "remote", calls


def test_hub_ids_fetch_diffusers_and_official_repos(hub, safetensors):
    remote, calls = hub
    ae = randomized("dc-ae-tiny")
    files.save_diffusers(str(remote / "me" / "tiny-diffusers"), ae.cfg, ae.state_dict(), 0.5)
    official = remote / "dc-ai" / "tiny-1.5"  # PyTorchModelHubMixin's layout: config.json + model.safetensors
    official.mkdir(parents=True)
    safetensors.save_file({k: v.contiguous() for k, v in ae.state_dict().items()}, str(official / "model.safetensors"))
    (official / "config.json").write_text(json.dumps({"model_name": "dc-ae-tiny"}))

    x = torch.randn(1, 3, 16, 16)
    for hub_id in ("me/tiny-diffusers", "me/tiny-diffusers@v1", "dc-ai/tiny-1.5"):
        loaded = files.load_autoencoder(hub_id)[0] if "1.5" not in hub_id else None
        if loaded is None:  # the official repo: the preset from its config.json
            cfg, sd, _, source = files.read_autoencoder(hub_id)
            assert source == "official" and cfg == models.autoencoder_config("dc-ae-tiny")
            loaded = models.build_autoencoder(cfg).eval()
            loaded.load_state_dict(sd)
        assert torch.equal(loaded.encode(x), ae.encode(x)), hub_id
    assert [c[:2] for c in calls] == [("me/tiny-diffusers", None), ("me/tiny-diffusers", "v1"), ("dc-ai/tiny-1.5", None)]
    assert calls[0][2] == ["*.json", "*.safetensors"]  # only the config and the weights are fetched


def test_hub_ids_offline_or_without_the_package(hub, monkeypatch):
    with pytest.raises(FileNotFoundError) as err:  # not in the cache, no network
        files.read_autoencoder("me/not-cached")
    assert "hf download me/not-cached" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(FileNotFoundError, match="weights not found: runs/missing.pt"):
        files.read_autoencoder("runs/missing.pt")  # a missing file is not a Hub id
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    proc = run_script("train_dit.py", ["--ae-ckpt", "dc-ai/dc-ae-f32c128-1.5", "--ae-config", "dc-ae-f32c128-1.5",
                                       "--out", "dit"], check=False)
    assert proc.returncode == 1 and "pip install huggingface_hub" in proc.stderr, proc.stderr
    assert len(proc.stderr.splitlines()) == 1


# ----------------------------------------------------------------------------------------------------
# Against the real packages, where they are installed


def test_the_stand_in_writes_and_reads_real_safetensors(tmp_path):
    real = pytest.importorskip("safetensors.torch")
    from helpers import mini_safetensors

    _, mini = mini_safetensors()
    sd = {**randomized("dc-ae-tiny-1.0").state_dict(), "half": torch.randn(3, 2).to(torch.bfloat16)}
    sd = {k: v.contiguous() for k, v in sd.items()}
    mini.save_file(sd, str(tmp_path / "a.safetensors"), metadata={"format": "pt"})
    real.save_file(sd, str(tmp_path / "b.safetensors"))
    for loaded in (real.load_file(str(tmp_path / "a.safetensors")), mini.load_file(str(tmp_path / "b.safetensors"))):
        assert loaded.keys() == sd.keys() and all(torch.equal(loaded[k], sd[k]) for k in sd)


@pytest.mark.parametrize("name", ["dc-ae-tiny", "dc-ae-tiny-1.0"])
def test_diffusers_loads_the_export_and_computes_the_same(tmp_path, name):
    diffusers = pytest.importorskip("diffusers")
    ae = randomized(name)
    files.save_diffusers(str(tmp_path), ae.cfg, ae.state_dict(), 0.42)
    theirs = diffusers.AutoencoderDC.from_pretrained(str(tmp_path)).eval()
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        z = ae.encode(x)
        torch.testing.assert_close(theirs.encode(x).latent, z, rtol=0, atol=1e-5)
        torch.testing.assert_close(theirs.decode(z).sample, ae.decode(z), rtol=0, atol=1e-5)
        zero_filled = torch.nn.functional.pad(z[:, :3], (0, 0, 0, 0, 0, 5))  # the README's partial latent
        torch.testing.assert_close(theirs.decode(zero_filled).sample, ae.decode(z[:, :3]), rtol=0, atol=1e-5)
    assert theirs.config.scaling_factor == 0.42
