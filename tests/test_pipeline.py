"""AE checkpoint -> latent cache -> DiT training -> sample.py -> evaluate.py, the scripts run as a user
runs them (tests/helpers.py), on tiny settings."""

import os
import shutil

import json

import numpy as np
import pytest
import torch

import helpers
from helpers import run_script
from dcaelib import data, files, judge, pictures



def run(script, args, check=True):
    return run_script(script, args, check)


@pytest.fixture(scope="module")
def work(tmp_path_factory, trained_ae):
    d = tmp_path_factory.mktemp("pipeline")
    (d / "ae").mkdir()
    shutil.copy(trained_ae, d / "ae" / "last.pt")
    return d


def dit_args(work, out, steps=4, extra=()):
    return helpers.dit_args(work / "ae" / "last.pt", out, steps, ["--max-images", "40", "--sample-every", "2",
                                                                  "--log-every", "2", *extra], cache=work / "cache")


def judge_args(work):
    """evaluate.py classes / curve on tiny settings, the judge cached in the test's folder."""
    return ["--num-images", "40", "--judge-steps", "3", "--batch-size", "4", "--steps", "2", "--num-val", "20",
            "--judge-cache", str(work / "judges")]


def test_latent_cache_is_built_once_and_matches_fresh_encoding(work):
    first = run("train_dit.py", dit_args(work, work / "dit_a", steps=2))
    assert "latent cache: encoded 40 images" in first.stdout
    second = run("train_dit.py", dit_args(work, work / "dit_b", steps=2))
    assert "latent cache: reusing" in second.stdout
    (name,) = os.listdir(work / "cache")  # one folder, complete, nothing else
    folder = work / "cache" / name
    assert sorted(os.listdir(folder)) == ["done.json", "labels.npy", "latents.npy"]
    ae, scale, _ = files.load_autoencoder(str(work / "ae" / "last.pt"))
    ds = data.ShapesDataset("train", image_size=16)
    x = torch.stack([ds[i][0] for i in range(40)])
    latents = torch.from_numpy(np.load(folder / "latents.npy"))
    torch.testing.assert_close(latents, ae.encode(x), rtol=0, atol=1e-5)
    assert np.load(folder / "labels.npy").tolist() == [i % 10 for i in range(40)]
    # --flip encodes the mirrors too: a separate cache of twice the size, the mirrors after the originals
    run("train_dit.py", dit_args(work, work / "dit_flip", steps=1, extra=["--flip"]))
    (flipped,) = set(os.listdir(work / "cache")) - {name}
    both = torch.from_numpy(np.load(work / "cache" / flipped / "latents.npy"))
    torch.testing.assert_close(both[40:], ae.encode(x.flip(3)), rtol=0, atol=1e-5)
    # a cache a killed run left without done.json is never used: it is encoded afresh
    os.remove(folder / "done.json")
    np.save(folder / "latents.npy", np.zeros((40, 8, 4, 4), np.float32))
    proc = run("train_dit.py", dit_args(work, work / "dit_c", steps=1))
    assert "is incomplete" in proc.stdout and "encoded 40 images" in proc.stdout
    torch.testing.assert_close(torch.from_numpy(np.load(folder / "latents.npy")), latents, rtol=0, atol=0)


def test_latent_cache_is_published_whole_and_the_first_copy_wins(work, tmp_path):
    """Rows go into a private folder that is renamed into place when complete, so two runs that
    encode the same cache at once never write into each other's files, and a killed run's folder
    is deleted by the next run on this machine."""
    import socket
    import subprocess
    import sys

    import train_dit

    cache = tmp_path / "cache"
    run("train_dit.py", dit_args(work, tmp_path / "d1", steps=1) + ["--cache-dir", str(cache)])
    (name,) = os.listdir(cache)
    folder = cache / name
    first = np.load(folder / "latents.npy")
    # another run finishing the same cache later: its copy is dropped, the published one stays
    late = cache / f"{name}.partial-x-1"
    late.mkdir()
    for f in ("latents.npy", "labels.npy", "done.json"):
        (late / f).write_bytes(b"not the published copy")
    train_dit.publish_cache(str(late), str(folder))
    assert sorted(os.listdir(cache)) == [name] and np.array_equal(np.load(folder / "latents.npy"), first)
    # folders of killed runs (a process that has exited) are deleted; a running process's are kept
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    host = socket.gethostname()
    stale, live = cache / f"{name}.partial-{host}-{dead}", cache / f"{name}.partial-{host}-{os.getppid()}"
    stale.mkdir(), live.mkdir()
    (folder / "done.json").unlink()  # forces an encode, which cleans up first
    proc = run("train_dit.py", dit_args(work, tmp_path / "d2", steps=1) + ["--cache-dir", str(cache)])
    assert "left by a run that was stopped" in proc.stdout and "is incomplete" in proc.stdout
    assert sorted(os.listdir(cache)) == sorted([name, live.name])
    assert np.array_equal(np.load(folder / "latents.npy"), first)


def test_two_processes_write_one_cache_and_fsdp_trains_as_ddp_and_resumes_exactly(work, tmp_path):
    """Two ranks (gloo), each reading its images through a worker process, write one latent cache: the one a
    single process writes. On it, FSDP (weights, gradients and optimiser state sharded, one block a unit)
    trains a U-ViT as DDP does, to float rounding; a sharded run stopped after a checkpoint resumes exactly;
    and its checkpoint is the usual one: one process without FSDP samples it and trains it on."""
    import shutil

    from helpers import two_processes

    def uvit(out, *extra):
        return [*dit_args(work, out, steps=3, extra=["--model", "UViT-tiny", "--log-every", "1", *extra]),
                "--cache-dir", tmp_path / "cache"]

    ddp = two_processes("train_dit.py", uvit(tmp_path / "ddp", "--num-workers", "1"))
    assert "DDP check: weights identical on all 2 ranks" in ddp.stdout
    (name,) = os.listdir(tmp_path / "cache")
    run("train_dit.py", dit_args(work, tmp_path / "dit1", steps=1))  # the one-process cache (same key, name)
    for f in ("latents.npy", "labels.npy"):
        assert np.array_equal(np.load(tmp_path / "cache" / name / f), np.load(work / "cache" / name / f)), f

    fsdp = tmp_path / "fsdp"
    assert "2 process(es) (FSDP)" in two_processes("train_dit.py", uvit(fsdp, "--fsdp", "--save-every", "2")).stdout
    rows = [[json.loads(line) for line in (tmp_path / run_ / "metrics.jsonl").read_text().splitlines()]
            for run_ in ("ddp", "fsdp")]
    assert [r["loss"] for r in rows[1]] == pytest.approx([r["loss"] for r in rows[0]], rel=1e-6)
    a, b = (torch.load(tmp_path / run_ / "last.pt", weights_only=True) for run_ in ("ddp", "fsdp"))
    assert b["opt"]["param_groups"] == a["opt"]["param_groups"]  # the same format, parameters numbered alike
    for part in ("model", "ema"):  # measured: 4e-9 apart after 3 steps
        assert all(torch.allclose(a[part][k], b[part][k], rtol=0, atol=1e-6) for k in a[part]), part
    assert all(torch.allclose(a["opt"]["state"][i]["exp_avg"], s["exp_avg"], atol=1e-6)
               for i, s in b["opt"]["state"].items())

    shutil.copy(fsdp / "last.pt", tmp_path / "straight.pt")  # stopped after step 2's checkpoint:
    shutil.copy(fsdp / "step_0000002.pt", fsdp / "last.pt")
    two_processes("train_dit.py", uvit(fsdp, "--fsdp", "--save-every", "2", "--resume"))
    straight, resumed = torch.load(tmp_path / "straight.pt", weights_only=True), torch.load(fsdp / "last.pt",
                                                                                           weights_only=True)
    for part in ("model", "ema"):
        assert all(torch.equal(straight[part][k], resumed[part][k]) for k in straight[part]), part
    assert all(torch.equal(straight["opt"]["state"][i]["exp_avg_sq"], s["exp_avg_sq"])
               for i, s in resumed["opt"]["state"].items())
    run("sample.py", ["--ckpt", fsdp / "last.pt", "--num-samples", "2", "--steps", "2", "--out", tmp_path / "s.png"])
    run("train_dit.py", [*uvit(fsdp, "--save-every", "2", "--resume"), "--max-steps", "4"])  # one process
    assert torch.load(fsdp / "last.pt", weights_only=True)["step"] == 4


def test_dit_save_every_keeps_steps_between_pictures(work):
    out = work / "dit_kept"
    run("train_dit.py", dit_args(work, out, steps=5, extra=["--save-every", "2", "--sample-every", "100"]))
    assert sorted(os.listdir(out)) == ["last.pt", "log.txt", "metrics.jsonl", "samples.png", "step_0000002.pt",
                                       "step_0000004.pt", "step_0000005.pt"]
    straight = work / "dit_straight"
    run("train_dit.py", dit_args(work, straight, steps=5, extra=["--sample-every", "100"]))
    a = torch.load(out / "last.pt", weights_only=True)
    b = torch.load(straight / "last.pt", weights_only=True)
    assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"])  # keeping files changes nothing
    # a shorter run is the longer one's first steps, bit for bit (scaling.sh takes DiT-classroom's 4400
    # steps from convergence.sh's 8800-step runs): nothing in a step depends on --max-steps
    short = work / "dit_short"
    run("train_dit.py", dit_args(work, short, steps=4, extra=["--sample-every", "100"]))
    a = torch.load(out / "step_0000004.pt", weights_only=True)
    b = torch.load(short / "last.pt", weights_only=True)
    for part in ("model", "ema"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part


def test_dit_checkpoint_and_sampling(work):
    out = work / "dit"
    proc = run("train_dit.py", dit_args(work, out))
    assert "loss_masked" in proc.stdout and "augmented with c' in [1, 2, 3, 4, 5, 6, 7]" in proc.stdout
    assert sorted(os.listdir(out)) == ["last.pt", "log.txt", "metrics.jsonl", "samples.png"]
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["kind"] == "dcae15-dit" and ckpt["step"] == 4 and ckpt["ae"]["source"] == "dcae15"
    for key in ("config", "model", "ema", "opt", "args", "latent_scale"):
        assert ckpt[key] is not None

    npz, png = work / "s.npz", work / "s.png"
    run("sample.py", ["--ckpt", str(out / "last.pt"), "--num-samples", "6", "--batch-size", "4", "--steps", "3",
                      "--npz", str(npz), "--out", str(png)])
    data = np.load(npz)
    assert data["arr_0"].shape == (6, 16, 16, 3) and data["arr_0"].dtype == np.uint8
    assert data["arr_1"].tolist() == [0, 1, 2, 3, 4, 5] and png.exists()
    again = work / "again.npz"
    run("sample.py", ["--ckpt", str(out / "last.pt"), "--num-samples", "6", "--batch-size", "4", "--steps", "3",
                      "--npz", str(again), "--out", str(png)])
    assert np.array_equal(np.load(again)["arr_0"], data["arr_0"])  # same seed, same images
    other = work / "other.npz"
    run("sample.py", ["--ckpt", str(out / "last.pt"), "--num-samples", "6", "--batch-size", "4", "--steps", "3",
                      "--npz", str(other), "--out", str(png), "--seed", "1", "--c-prime", "2"])
    assert not np.array_equal(np.load(other)["arr_0"], data["arr_0"])
    # two processes (gloo) write their batches into one file: the same .npz as one process, no temp files left
    from helpers import two_processes

    shared = work / "two.npz"
    two_processes("sample.py", ["--ckpt", out / "last.pt", "--num-samples", "6", "--batch-size", "4", "--steps", "3",
                                "--npz", shared, "--out", png])
    both = np.load(shared)
    assert np.array_equal(both["arr_0"], data["arr_0"]) and np.array_equal(both["arr_1"], data["arr_1"])
    assert not [f for f in os.listdir(work) if ".tmp" in f]


def test_dit_resume_is_exact(work):
    run("train_dit.py", dit_args(work, work / "straight", steps=4))
    run("train_dit.py", dit_args(work, work / "split", steps=2))
    run("train_dit.py", dit_args(work, work / "split", steps=4, extra=["--resume"]))
    a = torch.load(work / "straight" / "last.pt", weights_only=True)
    b = torch.load(work / "split" / "last.pt", weights_only=True)
    for part in ("model", "ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)


def test_bad_input(work):
    ae_ckpt = str(work / "ae" / "last.pt")
    proc = run("sample.py", ["--ckpt", ae_ckpt], check=False)
    assert proc.returncode != 0 and "is an autoencoder checkpoint" in proc.stderr
    out = work / "bad"
    proc = run("train_dit.py", dit_args(work, out) + ["--aug-channel-choices", "0,3"], check=False)
    assert proc.returncode != 0 and "--aug-channel-choices" in proc.stderr and not out.exists()
    run("train_dit.py", dit_args(work, work / "dit_ok", steps=1))
    dit_ckpt = str(work / "dit_ok" / "last.pt")
    proc = run("train_dit.py", dit_args(work, out)[2:] + ["--ae-ckpt", dit_ckpt], check=False)
    assert proc.returncode != 0 and "dcae15-dit checkpoint, not an autoencoder" in proc.stderr and not out.exists()
    png = work / "never.png"
    for extra, message in ((["--class-labels", "3,10"], r"must lie in [0, 9]"),
                           (["--c-prime", "9"], "must be in [1, 8]"),
                           (["--ae-ckpt", str(work / "moved.pt")], "is missing; pass its new location")):
        proc = run("sample.py", ["--ckpt", dit_ckpt, "--out", str(png), *extra], check=False)
        assert proc.returncode != 0 and message in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr and not png.exists()


def test_evaluate_classes(work):
    run("train_dit.py", dit_args(work, work / "dit_cls", steps=1))
    out = work / "classes.json"
    proc = run("evaluate.py", ["classes", "--ckpt", str(work / "dit_cls" / "last.pt"), *judge_args(work), "--num-samples", "7",
                               "--cfg-scales", "1,3", "--json", str(out)])
    assert "this AE's reconstructions" in proc.stdout
    result = json.loads(out.read_text())
    assert 0 <= result["ceiling"] <= 1 and 0 <= result["ceiling_recon"] <= 1
    assert sorted(result["samples"]) == ["1.0", "3.0"]
    for row in result["samples"].values():  # a share of 7 samples (batches of 4 and 3 weighted by their size)
        assert abs(row["share"] * 7 - round(row["share"] * 7)) < 1e-6 and row["fd"] >= 0
    dit = str(work / "dit_cls" / "last.pt")
    for args, message in ((["--ckpt", str(work / "ae" / "last.pt")], "is an autoencoder checkpoint"),
                          (["--ckpt", dit, "--num-samples", "0"], "argument --num-samples: 0 is outside its range: > 0"),
                          (["--ckpt", dit, "--cfg-scales", "1,x"], "--cfg-scales must be comma-separated")):
        proc = run("evaluate.py", ["classes", *args], check=False)
        assert proc.returncode != 0 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_judge_originals_and_reconstructions_keep_order_and_labels(work):

    ae, _, _ = files.load_autoencoder(str(work / "ae" / "last.pt"))
    ds = data.ShapesDataset("val", image_size=16)
    x, y = judge.originals(ds, 23, 10)
    assert x.dtype == torch.uint8 and x.shape == (23, 3, 16, 16) and y.tolist() == [ds[i][1] for i in range(23)]
    assert torch.equal(x[17], pictures.to_uint8(ds[17][0][None])[0])
    r = judge.reconstructions(ae, x, 10, torch.device("cpu"))
    with torch.no_grad():  # the same images as reconstructing one at a time (up to a rounding step)
        one = pictures.to_uint8(ae(x[17:18].float() / 127.5 - 1)[0])[0]
    assert r.dtype == torch.uint8 and (r[17].int() - one.int()).abs().max() <= 1


def test_flow_checkpoint_trains_resumes_samples_and_is_evaluated(work):
    flow = ["--objective", "flow"]
    run("train_dit.py", dit_args(work, work / "flow_straight", steps=4, extra=flow))
    run("train_dit.py", dit_args(work, work / "flow_split", steps=2, extra=flow))
    proc = run("train_dit.py", dit_args(work, work / "flow_split", steps=4, extra=["--resume"]))
    assert "objective flow" in proc.stdout  # the run's objective, adopted on resume
    a = torch.load(work / "flow_straight" / "last.pt", weights_only=True)
    b = torch.load(work / "flow_split" / "last.pt", weights_only=True)
    assert a["objective"] == b["objective"] == "flow" and b["step"] == 4
    for part in ("model", "ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)

    ckpt, png = str(work / "flow_straight" / "last.pt"), work / "flow.png"
    common_args = ["--ckpt", ckpt, "--num-samples", "6", "--batch-size", "4", "--steps", "3", "--out", png]
    arrays = {}  # (a 4-step DiT is still ~0 everywhere: Euler and Heun differ only in test_flow.py)
    for sampler in ("euler", "heun"):
        npz = work / f"flow_{sampler}.npz"
        proc = run("sample.py", [*common_args, "--sampler", sampler, "--npz", npz])
        assert f"3 {sampler} steps" in proc.stdout
        arrays[sampler] = np.load(npz)["arr_0"]
        assert arrays[sampler].shape == (6, 16, 16, 3)
    default = run("sample.py", [*common_args, "--npz", work / "flow_default.npz"])
    assert "heun steps" in default.stdout  # a flow checkpoint samples with Heun by default
    assert np.array_equal(np.load(work / "flow_default.npz")["arr_0"], arrays["heun"])

    for extra, message in ((["--sampler", "ddim"], "does not fit this flow checkpoint"),
                           (["--eta", "1"], "--eta applies to the DDIM sampler")):
        proc = run("sample.py", [*common_args, *extra], check=False)
        assert proc.returncode != 0 and message in proc.stderr, proc.stderr
    out = work / "flow_classes.json"
    run("evaluate.py", ["classes", "--ckpt", ckpt, *judge_args(work), "--num-samples", "4", "--json", out])
    assert sorted(json.loads(out.read_text())["samples"]) == ["1.0", "4.0"]


def test_ddpm_checkpoints_sample_with_ddim_and_resume_as_ddpm(work):
    run("train_dit.py", dit_args(work, work / "ddpm", steps=1, extra=["--objective", "ddpm"]))
    path = work / "ddpm" / "last.pt"
    assert torch.load(path, weights_only=True)["objective"] == "ddpm"
    args = ["--num-samples", "4", "--steps", "2", "--out", work / "ddpm.png"]
    assert "2 ddim steps" in run("sample.py", ["--ckpt", path, *args]).stdout
    proc = run("sample.py", ["--ckpt", path, *args, "--sampler", "heun"], check=False)
    assert proc.returncode != 0 and "does not fit this ddpm checkpoint; choose ddim" in proc.stderr
    # resumed without flags, the run stays DDPM, although the default objective is flow
    proc = run("train_dit.py", [*dit_args(work, work / "ddpm", steps=2), "--resume"])
    assert "objective ddpm" in proc.stdout
    assert torch.load(path, weights_only=True)["objective"] == "ddpm"
