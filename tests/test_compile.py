"""--compile: a compiled run trains as the eager one does (within float tolerance: the compiler may
fuse and reorder), writes checkpoints that an eager model loads, and resumes exactly. The tests use
the aot_eager backend (the graph capture and autograd of torch.compile without generating C++ code,
which takes minutes on a CPU); --compile-backend inductor is the default for users."""

import json

import pytest
import torch

import checkpoint
import dcae15
from helpers import run_script

COMPILE = ["--compile", "--compile-backend", "aot_eager"]


@pytest.fixture(scope="module")
def ae(tmp_path_factory):
    out = tmp_path_factory.mktemp("compile") / "ae"
    run_script("train_ae.py", ["--model", "dc-ae-tiny", "--image-size", "16", "--batch-size", "4",
                               "--perceptual", "off", "--max-steps", "2", "--out", out])
    return str(out / "last.pt")


def dit_args(ae, out, steps, extra=()):
    return ["--ae-ckpt", ae, "--model", "DiT-tiny", "--image-size", "16", "--max-images", "64", "--batch-size", "8",
            "--max-steps", str(steps), "--log-every", "1", "--sample-steps", "2", "--sample-every", "2",
            "--cache-dir", str(out.parent / "cache"), "--out", str(out), *extra]


def losses(out):
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_compiled_dit_trains_as_eager_loads_eager_and_resumes_exactly(ae, tmp_path):
    eager, compiled, resumed = tmp_path / "eager", tmp_path / "compiled", tmp_path / "resumed"
    run_script("train_dit.py", dit_args(ae, eager, 3))
    run_script("train_dit.py", dit_args(ae, compiled, 3, COMPILE))
    assert losses(compiled) == pytest.approx(losses(eager), rel=1e-5)
    a, b = checkpoint.load_checkpoint(str(eager / "last.pt")), checkpoint.load_checkpoint(str(compiled / "last.pt"))
    assert a["ema"].keys() == b["ema"].keys()  # no "_orig_mod." prefix: the model was compiled in place
    assert all(torch.allclose(a["ema"][k], b["ema"][k], rtol=1e-4, atol=1e-6) for k in a["ema"])
    model, _, _ = checkpoint.load_dit(str(compiled / "last.pt"))  # an eager DiT
    assert isinstance(model, dcae15.DiT)
    # stopped at step 2 and resumed, compiled: the same as the straight compiled run, bit for bit
    run_script("train_dit.py", dit_args(ae, resumed, 2, COMPILE))
    run_script("train_dit.py", dit_args(ae, resumed, 3, [*COMPILE, "--resume"]))
    c = checkpoint.load_checkpoint(str(resumed / "last.pt"))
    assert all(torch.equal(b["model"][k], c["model"][k]) for k in b["model"])
    assert all(torch.equal(b["ema"][k], c["ema"][k]) for k in b["ema"])


def test_a_compiled_models_state_dict_with_orig_mod_keys_loads(ae, tmp_path):
    out = tmp_path / "run"
    run_script("train_dit.py", dit_args(ae, out, 1))
    ckpt = checkpoint.load_checkpoint(str(out / "last.pt"))
    model = dcae15.DiT(dcae15.DiTConfig.from_dict(ckpt["config"]))
    compiled = torch.compile(model, backend="aot_eager")
    assert all(k.startswith("_orig_mod.") for k in compiled.state_dict())
    ckpt["ema"] = compiled.state_dict()
    checkpoint.save_checkpoint(ckpt, str(out / "orig_mod.pt"))
    loaded, _, _ = checkpoint.load_dit(str(out / "orig_mod.pt"))
    assert all(torch.equal(loaded.state_dict()[k], model.state_dict()[k]) for k in model.state_dict())


def test_compiled_ae_trains_as_eager(tmp_path):
    args = ["--model", "dc-ae-tiny", "--image-size", "16", "--batch-size", "4", "--perceptual", "off",
            "--max-steps", "2", "--log-every", "1", "--latent-channel-choices", "4,8"]
    run_script("train_ae.py", [*args, "--out", tmp_path / "eager"])
    run_script("train_ae.py", [*args, *COMPILE, "--out", tmp_path / "compiled"])
    eager = [r["loss"] for r in map(json.loads, (tmp_path / "eager" / "metrics.jsonl").read_text().splitlines())
             if "loss" in r]
    compiled = [r["loss"] for r in map(json.loads, (tmp_path / "compiled" / "metrics.jsonl").read_text().splitlines())
                if "loss" in r]
    assert len(eager) == 2 and compiled == pytest.approx(eager, rel=1e-5)
