"""--compile: a compiled run trains as the eager one does (within float tolerance: the compiler may
fuse and reorder), writes checkpoints that an eager model loads, and resumes exactly. The tests use
the aot_eager backend (the graph capture and autograd of torch.compile without generating C++ code,
which takes minutes on a CPU); --compile-backend inductor is the default for users."""

import json

import pytest
import torch

import dcae15
import helpers
from helpers import run_script
from dcaelib import files

COMPILE = ["--compile", "--compile-backend", "aot_eager"]


@pytest.fixture
def ae(trained_ae):
    return trained_ae


def dit_args(ae, out, steps, extra=()):
    return helpers.dit_args(ae, out, steps, ["--sample-every", "2", *extra])


def losses(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]  # the log lines, not the validations


def test_compiled_dit_trains_as_eager_loads_eager_and_resumes_exactly(ae, tmp_path):
    eager, compiled, resumed = tmp_path / "eager", tmp_path / "compiled", tmp_path / "resumed"
    run_script("train_dit.py", dit_args(ae, eager, 3))
    run_script("train_dit.py", dit_args(ae, compiled, 3, COMPILE))
    assert losses(compiled) == pytest.approx(losses(eager), rel=1e-5)
    a, b = files.load_checkpoint(str(eager / "last.pt")), files.load_checkpoint(str(compiled / "last.pt"))
    assert a["ema"].keys() == b["ema"].keys()  # no "_orig_mod." prefix: the model was compiled in place
    assert all(torch.allclose(a["ema"][k], b["ema"][k], rtol=1e-4, atol=1e-6) for k in a["ema"])
    model, _, _ = files.load_dit(str(compiled / "last.pt"))  # an eager DiT
    assert isinstance(model, dcae15.DiT)
    # stopped at step 2 and resumed, compiled: the same as the straight compiled run, bit for bit
    run_script("train_dit.py", dit_args(ae, resumed, 2, COMPILE))
    run_script("train_dit.py", dit_args(ae, resumed, 3, [*COMPILE, "--resume"]))
    c = files.load_checkpoint(str(resumed / "last.pt"))
    assert all(torch.equal(b["model"][k], c["model"][k]) for k in b["model"])
    assert all(torch.equal(b["ema"][k], c["ema"][k]) for k in b["ema"])


def test_a_compiled_models_state_dict_with_orig_mod_keys_loads(ae, tmp_path):
    out = tmp_path / "run"
    run_script("train_dit.py", dit_args(ae, out, 1))
    ckpt = files.load_checkpoint(str(out / "last.pt"))
    model = dcae15.DiT(dcae15.DiTConfig.from_dict(ckpt["config"]))
    compiled = torch.compile(model, backend="aot_eager")
    assert all(k.startswith("_orig_mod.") for k in compiled.state_dict())
    ckpt["ema"] = compiled.state_dict()
    files.save_checkpoint(ckpt, str(out / "orig_mod.pt"))
    loaded, _, _ = files.load_dit(str(out / "orig_mod.pt"))
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


@pytest.mark.slow  # the inductor backend generates and compiles C++: about two minutes on 2 cores
def test_a_compiled_ae_is_compiled_once_whatever_c_prime_the_steps_draw(tmp_path):
    """The default backend (inductor), as a user runs `train_ae.py --compile`: a run that draws every
    c' of the tiny preset compiles no more graphs than a run with one fixed c' (the compiled forward
    sees a (B,) tensor of c', not an int it would specialise on), and its losses are the eager run's."""
    from torch._dynamo.utils import counters

    args = ["--model", "dc-ae-tiny", "--image-size", "16", "--batch-size", "4", "--perceptual", "off",
            "--max-steps", "24", "--log-every", "1", "--sample-every", "100"]
    graphs = {}
    for name, extra in (("one c'", ["--latent-channel-choices", "8"]), ("every c'", [])):
        torch._dynamo.reset()
        counters.clear()
        run_script("train_ae.py", [*args, *extra, "--compile", "--out", tmp_path / name])
        graphs[name] = counters["stats"]["unique_graphs"]
    drawn = {json.loads(line)["c_prime"] for line in (tmp_path / "every c'" / "metrics.jsonl").read_text().splitlines()
             if "c_prime" in line}
    assert drawn == set(range(1, 9)), drawn  # the run drew every c'
    assert graphs["every c'"] <= graphs["one c'"] + 2, graphs
    run_script("train_ae.py", [*args, "--out", tmp_path / "eager"])
    assert losses(tmp_path / "every c'") == pytest.approx(losses(tmp_path / "eager"), rel=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["DiT-tiny", "UViT-tiny"])
@pytest.mark.parametrize("checkpointing", [[], ["--grad-checkpointing"]], ids=["", "grad-checkpointing"])
def test_a_compiled_dit_or_uvit_is_compiled_once_whatever_c_prime(trained_ae, tmp_path, model, checkpointing):
    """train_dit.py --compile (inductor), with and without activation checkpointing: the augmented pass's
    c' only builds a mask outside the compiled network, so a run drawing every c' compiles what a run with
    one fixed c' does."""
    from torch._dynamo.utils import counters

    graphs = {}
    for name, extra in (("one c'", ["--aug-channel-choices", "4"]), ("every c'", [])):
        torch._dynamo.reset()
        counters.clear()
        run_script("train_dit.py", dit_args(trained_ae, tmp_path / name, 12, ["--model", model, "--compile",
                                                                               *checkpointing, *extra]))
        graphs[name] = counters["stats"]["unique_graphs"]
    assert graphs["every c'"] <= graphs["one c'"] + 2, graphs
