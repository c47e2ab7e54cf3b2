"""Checkpoint I/O: atomic writes, weights_only loading, plain-value configs, latent scale."""

import math
import os

import pytest
import torch

import dcae15
from dcaelib import distributed, files


def test_atomic_save_and_safe_load(tmp_path, tiny_ae):
    path = str(tmp_path / "last.pt")
    ckpt = {"config": tiny_ae.cfg.to_dict(), "model": tiny_ae.state_dict(), "step": 7, "latent_scale": 0.5}
    files.save_checkpoint(ckpt, path)
    assert os.listdir(tmp_path) == ["last.pt"]  # no temp file left behind
    loaded = files.load_checkpoint(path)  # weights_only=True
    ae = dcae15.DCAE(dcae15.DCAEConfig.from_dict(loaded["config"]))
    ae.load_state_dict(loaded["model"], strict=True)
    assert loaded["step"] == 7

    # a failed write (an object that cannot be saved safely is fine to save, but this one cannot be saved
    # at all) leaves the previous checkpoint intact and no temp file
    with pytest.raises(Exception):
        files.save_checkpoint({"bad": lambda: 0}, path)
    assert os.listdir(tmp_path) == ["last.pt"]
    assert files.load_checkpoint(path)["step"] == 7
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        files.load_checkpoint(str(tmp_path / "nope.pt"))


def test_load_refuses_pickled_objects(tmp_path):
    import argparse

    path = str(tmp_path / "pickled.pt")
    torch.save({"args": argparse.Namespace(lr=1.0)}, path)
    with pytest.raises(Exception, match="weights_only"):
        files.load_checkpoint(path)


def test_measure_latent_scale(tiny_ae):
    batches = [torch.randn(2, 3, 16, 16), torch.randn(3, 3, 16, 16)]
    z = torch.cat([tiny_ae.encode(x) for x in batches])
    assert dcae15.measure_latent_scale(tiny_ae, batches) == pytest.approx(1 / math.sqrt(z.pow(2).mean().item()), rel=1e-5)
    with pytest.raises(ValueError):
        dcae15.measure_latent_scale(tiny_ae, [])


def test_corrupt_files_give_one_line_errors(tmp_path, tiny_ae):
    good = str(tmp_path / "good.pt")
    files.save_checkpoint({"model": tiny_ae.state_dict()}, good)
    raw = open(good, "rb").read()
    truncated, garbage = tmp_path / "truncated.pt", tmp_path / "garbage.pt"
    truncated.write_bytes(raw[: len(raw) // 2])
    garbage.write_bytes(b"this is not a checkpoint at all")
    for path in (truncated, garbage):
        with pytest.raises(ValueError) as err:
            files.load_checkpoint(str(path))
        assert str(path) in str(err.value) and "\n" not in str(err.value)
        with pytest.raises(ValueError, match="truncated or corrupt|not a PyTorch checkpoint"):
            dcae15.read_weights(str(path))  # the official-weights path reports the same way
    pickled = tmp_path / "pickled.pt"
    import argparse

    torch.save({"args": argparse.Namespace(lr=1.0)}, pickled)
    with pytest.raises(ValueError, match="pickled Python objects") as err:
        files.load_checkpoint(str(pickled))
    assert str(pickled) in str(err.value)


def test_scripts_report_a_truncated_checkpoint_in_one_line(tmp_path):
    from helpers import run_script

    bad = tmp_path / "last.pt"
    bad.write_bytes(b"PK\x03\x04 half a zip file")
    for script, args in (("sample.py", ["--ckpt", str(bad)]),
                         ("train_dit.py", ["--ae-ckpt", str(bad), "--out", str(tmp_path / "dit")])):
        proc = run_script(script, args, check=False)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and str(bad) in lines[0] and "truncated or corrupt" in lines[0], lines
        assert not (tmp_path / "dit").exists()


def test_cpu_runs_flush_denormals_to_zero():
    try:
        torch.set_flush_denormal(False)  # an earlier test in this process may have turned it on
        tiny = torch.tensor([1e-39])  # a float32 denormal (the smallest normal float32 is ~1.2e-38)
        assert (tiny * 1.0).item() > 0
        rank, world, device = distributed.setup_distributed("cpu")
        assert (rank, world, device.type) == (0, 1, "cpu")
        assert (tiny * 1.0).item() == 0  # every CPU run of the scripts flushes them
        assert (torch.tensor([1e-30]) * 1.0).item() > 0  # normal small numbers are untouched
    finally:
        torch.set_flush_denormal(False)


def test_more_ranks_than_gpus_is_a_clear_error(monkeypatch):
    """torchrun --nproc_per_node=2 on a one-GPU node: rank 1 must say so, not fail in cuda.set_device."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: pytest.fail("set_device reached"))
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(ValueError, match="local rank 1, but this node shows only 1 GPU.*--device cpu"):
        distributed.setup_distributed("auto")
