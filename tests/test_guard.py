"""A run that diverges stops instead of training on NaNs and never writes non-finite weights; a failed
checkpoint write ends the run with one line; metrics.jsonl records every log line, also across
--resume. Non-finite losses are injected at chosen steps by wrapping the objectives' loss."""

import errno
import os
import json
import math
import subprocess
import sys

import pytest
import torch

import dcae15
import helpers
from helpers import run_script
from dcaelib import files, trainer

AE = ["--model", "dc-ae-tiny", "--image-size", "16", "--batch-size", "4", "--perceptual", "off",
      "--log-every", "1", "--ema-warmup", "2"]


def dit_args(ae, out, steps, extra=()):
    return helpers.dit_args(ae, out, steps, ["--ema-warmup", "2", *extra])


@pytest.fixture
def ae(trained_ae):
    return trained_ae


def poison_flow_loss(monkeypatch, bad_calls):
    """FlowMatching.training_loss returns a NaN loss on the given calls (1 = the first step)."""
    real, calls = dcae15.FlowMatching.training_loss, [0]

    def training_loss(self, *args, **kwargs):
        calls[0] += 1
        loss, terms = real(self, *args, **kwargs)
        return (loss * math.nan, terms) if calls[0] in bad_calls else (loss, terms)

    monkeypatch.setattr(dcae15.FlowMatching, "training_loss", training_loss)


def finite(state_dict):
    return all(torch.isfinite(v).all() for v in state_dict.values() if v.is_floating_point())


def test_a_non_finite_step_changes_no_weight_and_training_goes_on(ae, tmp_path, monkeypatch):
    run_script("train_dit.py", dit_args(ae, tmp_path / "clean", 2))
    poison_flow_loss(monkeypatch, {3})
    proc = run_script("train_dit.py", dit_args(ae, tmp_path / "poisoned", 3))
    assert "| skipped 1" in proc.stdout  # the log line of step 3 counts it
    clean = files.load_checkpoint(str(tmp_path / "clean" / "last.pt"))
    poisoned = files.load_checkpoint(str(tmp_path / "poisoned" / "last.pt"))
    for part in ("model", "ema"):  # step 3 was not applied: the weights are step 2's, bit for bit
        assert all(torch.equal(clean[part][k], poisoned[part][k]) for k in clean[part])
    assert clean["opt"]["state"][0]["step"] == poisoned["opt"]["state"][0]["step"] == 2
    assert all(torch.equal(clean["opt"]["state"][i]["exp_avg_sq"], s["exp_avg_sq"])
               for i, s in poisoned["opt"]["state"].items())
    # one bad step among good ones: the run goes on to the end
    poison_flow_loss(monkeypatch, {2})
    run_script("train_dit.py", dit_args(ae, tmp_path / "goes-on", 5))
    ckpt = files.load_checkpoint(str(tmp_path / "goes-on" / "last.pt"))
    assert ckpt["step"] == 5 and finite(ckpt["model"]) and finite(ckpt["ema"])


def test_steps_non_finite_in_a_row_stop_the_run_and_last_pt_stays_finite(ae, tmp_path, monkeypatch):
    poison_flow_loss(monkeypatch, set(range(4, 100)))
    out = tmp_path / "diverged"
    proc = run_script("train_dit.py", dit_args(ae, out, 20, ["--sample-every", "2", "--max-skipped-steps", "3"]),
                      check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    message = proc.stderr.strip()
    assert len(message.splitlines()) == 1 and message.startswith("train_dit.py: error: step 6: 3 steps in a row")
    # the last save (step 4) holds step 3's weights: the skipped step 4 changed nothing
    assert f"the last intact checkpoint is {out / 'last.pt'} (step 4)" in message
    ckpt = files.load_checkpoint(str(out / "last.pt"))
    assert ckpt["step"] == 4 and finite(ckpt["model"]) and finite(ckpt["ema"])
    assert "steps in a row" in (out / "log.txt").read_text().splitlines()[-1]


@pytest.mark.parametrize("script", ["train_ae.py", "train_dit.py"])
def test_the_diverging_commands_end_with_one_line(ae, tmp_path, script):
    out = tmp_path / "run"
    args = [*AE, "--max-steps", "40", "--out", out] if script == "train_ae.py" else dit_args(ae, out, 40)
    proc = run_script(script, [*args, "--lr", "1e30", "--grad-clip", "1e30"], check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "the run diverged" in proc.stderr
    assert not (out / "last.pt").exists() or finite(files.load_checkpoint(str(out / "last.pt"))["model"])


def test_the_ae_discriminator_step_is_guarded_too(tmp_path, monkeypatch):
    real = dcae15.AutoencoderLoss.discriminator_loss
    monkeypatch.setattr(dcae15.AutoencoderLoss, "discriminator_loss",
                        lambda self, *a, **k: real(self, *a, **k) * math.nan)
    out = tmp_path / "gan"
    proc = run_script("train_ae.py", [*AE, "--max-steps", "3", "--gan-weight", "0.1", "--out", out,
                                      "--max-skipped-steps", "5"])
    assert "| skipped 1" in proc.stdout
    ckpt = files.load_checkpoint(str(out / "last.pt"))
    assert finite(ckpt["disc"]) and ckpt["opt_disc"]["state"] == {}  # the discriminator never stepped


def test_non_finite_weights_are_never_written(tmp_path):
    import argparse


    args = argparse.Namespace(out=str(tmp_path), save_every=0)
    ckpt = {"model": {"w": torch.tensor([1.0, math.inf])}, "ema": {"w": torch.ones(2)}}
    with pytest.raises(Exception, match="the weights are not finite, so no checkpoint was written; no "
                                         "checkpoint was written yet"):
        trainer.write_checkpoint(ckpt, args, 7, final=False)
    assert not (tmp_path / "last.pt").exists()


def test_a_failed_checkpoint_write_ends_the_run_with_one_line(ae, tmp_path, monkeypatch):
    """What torch's zip writer really raises on a full disk (a RuntimeError, after writing part of the
    file), and what Python raises (OSError ENOSPC): one line naming the file, the cause and the last
    intact checkpoint; no traceback, no partial file."""
    real = torch.save
    for i, error in enumerate((RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos "
                                            "532160 vs 532048"), OSError(errno.ENOSPC, "No space left on device"))):
        calls = [0]

        def save_until_the_disk_is_full(obj, f, *args, **kwargs):
            calls[0] += 1
            if calls[0] > 1:
                with open(f, "wb") as fh:
                    fh.write(b"PK half a zip")  # torch has written part of the file when it fails
                raise error
            real(obj, f, *args, **kwargs)

        monkeypatch.setattr(torch, "save", save_until_the_disk_is_full)
        out = tmp_path / f"full{i}"
        proc = run_script("train_dit.py", dit_args(ae, out, 4, ["--sample-every", "2"]), check=False)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) == 1
        cause = "[enforce fail" if i == 0 else "no space left on the device"  # a real full disk: see below
        assert proc.stderr.startswith(f"train_dit.py: error: step 4: could not write {out / 'last.pt'}: "
                                      f"{cause}"), proc.stderr
        assert proc.stderr.strip().endswith(f"the last intact checkpoint is {out / 'last.pt'} (step 2)")
        monkeypatch.setattr(torch, "save", real)
        assert files.load_checkpoint(str(out / "last.pt"))["step"] == 2
        assert not [p for p in os.listdir(out) if ".tmp" in p]


def mounted_tmpfs(folder, size):
    """A tmpfs of `size` at `folder` (needs root and a kernel that allows it), or None."""
    folder.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    return folder if proc.returncode == 0 else None


@pytest.mark.parametrize("script", ["train_ae.py", "sample.py", "export.py", "evaluate.py", "train_dit.py"])
def test_a_real_full_disk_gives_one_line_and_no_partial_file(ae, tmp_path, script):
    """A real full file system (a 2.6 MB tmpfs): the writers fail as they do at scale."""
    disk = mounted_tmpfs(tmp_path / "disk", "2600k")
    if disk is None:
        pytest.skip("cannot mount a tmpfs here (needs root): the injected errors above stand in")
    try:
        if script == "train_ae.py":
            out = disk / "ae"
            args = ["--model", "dc-ae-tiny", "--max-steps", "6", "--batch-size", "4", "--log-every", "2",
                    "--sample-every", "2", "--perceptual", "off", "--out", out]
        elif script == "sample.py":
            dit = tmp_path / "dit"
            run_script("train_dit.py", dit_args(ae, dit, 1))
            (disk / "filler").write_bytes(b"\0" * (2600 * 1024 - 400 * 1024))  # 400 KB left
            args = ["--ckpt", dit / "last.pt", "--num-samples", "600", "--steps", "1", "--npz",
                    disk / "samples.npz", "--out", disk / "grid.png"]
        else:  # the exported folder, the --json, the latent cache: each on a disk that is full already
            try:  # every byte taken
                with open(disk / "filler", "wb") as fh:
                    while True:
                        fh.write(b"\0" * 4096)
                        fh.flush()
            except OSError:
                pass
            args = {"export.py": ["diffusers", "--ae-ckpt", ae, "--out", disk / "hf"],
                    "evaluate.py": ["recon", "--ae-ckpt", ae, "--image-size", "16", "--num-images", "4",
                                    "--json", disk / "recon.json"],
                    "train_dit.py": helpers.dit_args(ae, tmp_path / "cached", 1, cache=disk / "cache")}[script]
        device = [] if script == "export.py" else ["--device", "cpu"]
        proc = subprocess.run([sys.executable, os.path.join(helpers.ROOT, script), *map(str, args), *device],
                              capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert "no space left on the device" in proc.stderr.splitlines()[-1], proc.stderr[-2000:]
        leftovers = [p for p in os.listdir(disk / "ae" if script == "train_ae.py" else disk)
                     if ".tmp" in p or ".partial" in p]
        if script == "train_dit.py" and (disk / "cache").is_dir():
            leftovers += os.listdir(disk / "cache")  # no half-written latent cache
        assert not leftovers, leftovers
        if script == "train_ae.py":
            assert "the last intact checkpoint is" in proc.stderr
            files.load_checkpoint(str(disk / "ae" / "last.pt"))  # intact
        elif script == "sample.py":
            assert not (disk / "samples.npz").exists()
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_metrics_jsonl_has_every_log_line_and_survives_resume(ae, tmp_path):
    out = tmp_path / "metrics"
    run_script("train_dit.py", dit_args(ae, out, 4, ["--sample-every", "2"]))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert {"loss", "loss_full", "loss_masked", "lr", "grad_norm", "latents_per_s", "time"} <= set(rows[0])
    # a run stopped after its last save (step 4) wrote lines 5 and 6; --resume continues from step 4
    with open(out / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps({"step": 5, "loss": 9.0}) + "\n" + json.dumps({"step": 6, "loss": 9.0}) + "\n")
    run_script("train_dit.py", dit_args(ae, out, 6, ["--sample-every", "2", "--resume"]))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6] and rows[4]["loss"] != 9.0
    ae_rows = [json.loads(line) for line in open(ae.replace("last.pt", "metrics.jsonl"))]
    assert ae_rows[-1]["step"] == 2 and "val_psnr" in ae_rows[-1] and "latent_scale" in ae_rows[-1]


def test_tensorboard_without_the_package_says_so_and_goes_on(ae, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    proc = run_script("train_dit.py", dit_args(ae, tmp_path / "tb", 1, ["--tensorboard"]))
    assert "pip install tensorboard" in proc.stdout and (tmp_path / "tb" / "last.pt").exists()
