"""train_ae.py end to end: a tiny run, exact resume, 2-process DDP, bad input."""

import os
import subprocess
import sys

import pytest
import torch

import dcae15
from helpers import run_script, two_processes
from dcaelib import files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--model", "dc-ae-tiny", "--image-size", "16", "--batch-size", "4", "--perceptual", "off",
        "--log-every", "2", "--sample-every", "2", "--gan-weight", "0.1", "--gan-start", "2", "--ema-warmup", "2"]


def run(args, launcher=None, check=True):
    if launcher is None:  # python train_ae.py ...
        return run_script("train_ae.py", args, check)
    if launcher == "two":  # two processes as torchrun starts them, without its launcher (helpers)
        return two_processes("train_ae.py", args, check)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    # torchrun here means two gloo processes, also on a machine with one GPU
    proc = subprocess.run([*launcher, os.path.join(ROOT, "train_ae.py"), *args, "--device", "cpu"],
                          capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"train_ae.py failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_tiny_run_writes_checkpoint_and_picture(tmp_path):
    out = str(tmp_path / "run")
    proc = run([*TINY, "--max-steps", "4", "--out", out, "--save-every", "2"])
    assert "validation PSNR" in proc.stdout and "latent scaling factor" in proc.stdout
    assert sorted(os.listdir(out)) == ["last.pt", "log.txt", "metrics.jsonl", "recon_partial.png", "step_0000002.pt",
                                       "step_0000004.pt"]
    ckpt = torch.load(os.path.join(out, "last.pt"), weights_only=True)  # tensors and plain values only
    assert ckpt["kind"] == "dcae15-ae" and ckpt["step"] == 4 and ckpt["latent_scale"] > 0
    assert ckpt["channel_choices"] == list(range(1, 9))
    for key in ("config", "model", "ema", "disc", "opt", "opt_disc", "args"):
        assert ckpt[key] is not None
    ae = dcae15.DCAE(dcae15.DCAEConfig.from_dict(ckpt["config"]))
    ae.load_state_dict(ckpt["ema"], strict=True)
    from PIL import Image

    w, h = Image.open(os.path.join(out, "recon_partial.png")).size
    assert (w, h) == (9 * 18 + 2, 8 * 18 + 2)  # columns: original + 8 values of c'; rows: 8 validation images
    assert "d_loss" in open(os.path.join(out, "log.txt")).read()  # the GAN started at step 2


def test_two_trainings_at_one_thread_give_one_sha256(tmp_path):
    """Two fresh processes with OMP_NUM_THREADS=1 train the same weights bit for bit (what lets a
    comparison that spans sessions train its autoencoders again), and the checkpoint says with
    which code, torch and thread count."""
    hashes = []
    for i in range(2):
        out = str(tmp_path / f"run{i}")
        run([*TINY, "--max-steps", "3", "--out", out], launcher=[sys.executable])
        ckpt = files.load_checkpoint(os.path.join(out, "last.pt"))
        hashes.append((files.weights_sha256(ckpt["ema"]), files.weights_sha256(ckpt["model"])))
        assert ckpt["provenance"]["threads"] == 1 and ckpt["provenance"]["torch"] == torch.__version__
    assert hashes[0] == hashes[1]


def test_save_every_keeps_steps_between_pictures_and_leaves_the_run_unchanged(tmp_path):
    """--save-every is independent of --sample-every, keeping files does not perturb training, and
    step N of a longer run is the checkpoint of a run of N steps (weights, latent scale, PSNR)."""
    kept, plain = str(tmp_path / "kept"), str(tmp_path / "plain")
    run([*TINY, "--max-steps", "5", "--out", kept, "--save-every", "2", "--sample-every", "100"])
    run([*TINY, "--max-steps", "4", "--out", plain, "--sample-every", "100"])
    assert sorted(f for f in os.listdir(kept) if f.startswith("step_")) == [
        "step_0000002.pt", "step_0000004.pt", "step_0000005.pt"]
    a = torch.load(os.path.join(kept, "step_0000004.pt"), weights_only=True)
    b = torch.load(os.path.join(plain, "last.pt"), weights_only=True)
    assert a["step"] == b["step"] == 4
    for k in a["ema"]:
        assert torch.equal(a["ema"][k], b["ema"][k]), k
    assert a["latent_scale"] == b["latent_scale"] and a["val_psnr"] == b["val_psnr"]


def test_progress_redirected_to_a_file_is_a_few_lines_not_one_per_step(tmp_path):
    out = str(tmp_path / "run")
    proc = run([*TINY, "--gan-weight", "0", "--max-steps", "40", "--log-every", "100", "--sample-every", "100",
                "--out", out])  # stdout is not a terminal here, as under SLURM or nohup
    bar_draws = proc.stdout.count("it/s]") + proc.stdout.count("s/it]")
    assert 1 <= bar_draws <= 3, proc.stdout  # the first and the last draw, not one per step


def test_resume_is_exact(tmp_path):
    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    run([*TINY, "--max-steps", "6", "--out", straight])
    run([*TINY, "--max-steps", "3", "--out", split])
    run([*TINY, "--max-steps", "6", "--out", split, "--resume"])
    a = torch.load(os.path.join(straight, "last.pt"), weights_only=True)
    b = torch.load(os.path.join(split, "last.pt"), weights_only=True)
    assert a["step"] == b["step"] == 6
    for part in ("model", "ema", "disc"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    for k, v in a["opt"]["state"].items():
        assert torch.equal(v["exp_avg"], b["opt"]["state"][k]["exp_avg"])


def test_resume_refuses_changed_settings(tmp_path):
    out = str(tmp_path / "run")
    run([*TINY, "--max-steps", "2", "--out", out])
    proc = run([*TINY, "--max-steps", "4", "--out", out, "--resume", "--lr", "1e-2"], check=False)
    assert proc.returncode != 0 and "--lr 0.01 differs from the run's" in proc.stderr
    proc = run([*TINY, "--max-steps", "4", "--out", out], check=False)  # no --resume: do not overwrite
    assert proc.returncode != 0 and "pass --resume" in proc.stderr


@pytest.mark.parametrize("extra,message", [
    (["--model", "dc-ae-f8c4"], "unknown autoencoder preset"),
    (["--image-size", "18"], "not divisible by the spatial compression 4"),
    (["--latent-channel-choices", "2,9"], "--latent-channel-choices: channel choices must be a non-empty list of "
                                          "values in [1, 8]"),
    (["--latent-channel-choices", "a,b"], "comma-separated integers"),
    (["--data", "imagefolder", "--data-path", "no/such/dir"], "is not a folder"),
    (["--resume"], "no checkpoint at"),
    (["--batch-size", "3", "--max-steps", "1"], None),  # fine on one process
    (["--always-sample-min-max-channel"], "--num-sample-latent-channels 1 is too few: at least 2"),
    (["--always-sample-max-channel", "--always-sample-min-max-channel", "--num-sample-latent-channels", "3"],
     "pass only one of"),
    (["--no-structured", "--num-sample-latent-channels", "2"], "--no-structured always decodes all c"),
    (["--train-parts", "middle", "--gan-adaptive-weight"], "which --train-parts middle freezes"),
])
def test_bad_input_fails_before_writing(tmp_path, extra, message):
    out = str(tmp_path / "run")
    proc = run([*TINY, "--max-steps", "1", "--out", out, *extra], check=False)
    if message is None:
        assert proc.returncode == 0
        return
    assert proc.returncode != 0 and message in proc.stderr.replace("\\", "")
    assert "Traceback" not in proc.stderr
    assert not os.path.exists(out)  # nothing half-written


def test_init_from_checks_compatibility(tmp_path):
    tiny = dcae15.DCAE(dcae15.build_dcae_config("dc-ae-tiny"))
    official = str(tmp_path / "official.pt")
    torch.save({"state_dict": tiny.state_dict()}, official)
    out = str(tmp_path / "run")
    proc = run([*TINY, "--model", "dc-ae-f16c64-classroom", "--image-size", "64", "--init-from", official,
                "--out", out], check=False)
    assert proc.returncode != 0 and "does not fit --model dc-ae-f16c64-classroom" in proc.stderr
    assert not os.path.exists(out)
    run([*TINY, "--max-steps", "1", "--init-from", official, "--out", out])  # the right preset loads


SEVERAL = ["--num-sample-latent-channels", "3", "--always-sample-min-max-channel", "--latent-channel-choices", "2,4,8"]


def test_several_c_per_step_resume_exactly(tmp_path):
    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    proc = run([*TINY, *SEVERAL, "--max-steps", "4", "--out", straight])
    assert "3 c' per step, the min and max always among them" in proc.stdout
    assert "c' [2, 8, " in proc.stdout  # the log line shows the step's c' list
    run([*TINY, *SEVERAL, "--max-steps", "2", "--out", split])
    run([*TINY, *SEVERAL, "--max-steps", "4", "--out", split, "--resume"])
    a = torch.load(os.path.join(straight, "last.pt"), weights_only=True)
    b = torch.load(os.path.join(split, "last.pt"), weights_only=True)
    assert a["args"]["num_sample_latent_channels"] == 3 and a["args"]["always_sample_min_max_channel"]
    for part in ("model", "ema", "disc"):  # the GAN starts at step 2: its loss sees all 3 outputs
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)


def test_two_process_gloo_ddp_with_several_c_per_step(tmp_path):
    """torchrun itself (the other multi-process tests start the two ranks without its launcher). Every
    layer trains under DDP, with the GAN from step 2 and three c' per step (three decoder passes
    before one backward); the head-only phase under DDP is tested below."""
    out = str(tmp_path / "ddp")
    launcher = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")
    proc = run([*TINY, *SEVERAL, "--max-steps", "4", "--out", out], launcher=launcher)
    assert "2 process(es)" in proc.stdout
    assert "DDP check: weights identical on all 2 ranks" in proc.stdout
    ckpt = torch.load(os.path.join(out, "last.pt"), weights_only=True)
    assert ckpt["step"] == 4 and len(ckpt["rng"]) == 2
    # each rank drew its own c' stream and its own data slice
    assert not torch.equal(ckpt["rng"][0]["channel"], ckpt["rng"][1]["channel"])


# ---------------------------------------------------------------------------- DC-AE's phases: a part trains


def phase_run(tmp_path, part, extra=(), name=None, launcher=None):
    """Phase 1 (3 steps, every layer, no GAN), then a phase training `part` only from its EMA weights."""
    first = tmp_path / "phase1"
    if not first.exists():
        run([*TINY, "--gan-weight", "0", "--max-steps", "3", "--out", str(first)])
    out = str(tmp_path / (name or part))
    proc = run([*TINY, "--init-from", str(first / "last.pt"), "--train-parts", part, "--max-steps", "4",
                "--out", out, *extra], launcher=launcher)
    start = torch.load(first / "last.pt", weights_only=True)["ema"]
    return proc, start, torch.load(os.path.join(out, "last.pt"), weights_only=True)


@pytest.mark.parametrize("part", ["middle", "head"])
def test_a_phase_trains_its_part_only(tmp_path, part):
    proc, start, ckpt = phase_run(tmp_path, part)
    assert f"training only the {part}" in proc.stdout and ckpt["args"]["train_parts"] == part
    ae = dcae15.DCAE(dcae15.build_dcae_config("dc-ae-tiny"))
    trained = set(dcae15.set_trainable(ae, part))
    assert trained and len(trained) < len(dict(ae.named_parameters()))
    for name in dict(ae.named_parameters()):
        for weights in ("model", "ema"):
            same = torch.equal(ckpt[weights][name], start[name])
            assert same != (name in trained), (weights, name)  # frozen: not a bit changed; trained: changed
    # the optimiser keeps state for the trained parameters only, in named_parameters order
    assert len(ckpt["opt"]["state"]) == len(trained) == len(ckpt["opt"]["param_groups"][0]["params"])


def test_the_discriminator_trains_only_when_the_gan_is_on(tmp_path):
    # the GAN starts at step 3 of this phase: the discriminator is as initialised up to step 3, then trains
    _, _, last = phase_run(tmp_path, "head", ["--gan-start", "3", "--max-steps", "5", "--save-every", "1"])
    at = {s: torch.load(tmp_path / "head" / f"step_{s:07d}.pt", weights_only=True)["disc"] for s in (1, 3, 4)}
    assert all(torch.equal(at[1][k], at[3][k]) for k in at[1])
    assert not all(torch.equal(at[3][k], at[4][k]) for k in at[3])
    _, _, off = phase_run(tmp_path, "head", ["--gan-weight", "0"], name="no_gan")
    assert off["disc"] is None and off["opt_disc"] is None


def test_a_phase_resumes_exactly_and_runs_under_two_process_gloo(tmp_path):
    _, _, straight = phase_run(tmp_path, "middle")
    first = str(tmp_path / "phase1" / "last.pt")
    split = str(tmp_path / "split")
    run([*TINY, "--init-from", first, "--train-parts", "middle", "--max-steps", "2", "--out", split])
    run([*TINY, "--train-parts", "middle", "--max-steps", "4", "--out", split, "--resume"])
    resumed = torch.load(os.path.join(split, "last.pt"), weights_only=True)
    for part in ("model", "ema", "disc"):
        for k in straight[part]:
            assert torch.equal(straight[part][k], resumed[part][k]), (part, k)
    # the head under DDP with the GAN and its adaptive weight (gradients taken before backward)
    proc, start, ddp = phase_run(tmp_path, "head", ["--gan-adaptive-weight"], name="ddp", launcher="two")
    assert "DDP check: weights identical on all 2 ranks" in proc.stdout and "gan_scale" in proc.stdout
    frozen = [k for k in start if k.startswith("encoder.project_in.")]  # outside the head
    assert frozen and all(torch.equal(ddp["model"][k], start[k]) for k in frozen)
