"""Flag values outside their meaning are refused before any work, in one line that names the flag, the
value and the range (the range is in --help too); a resume keeps or refuses the run's own flags, and
says which."""

import os

import pytest

from helpers import dit_args, run_script

BAD = [  # (script, flags, the range the message gives)
    ("train_dit.py", ["--ema-decay", "2", "--ema-warmup", "0"], "in [0, 1]"),
    ("train_dit.py", ["--ema-decay", "-0.5"], "in [0, 1]"),
    ("train_dit.py", ["--ema-decay", "1.5"], "in [0, 1]"),
    ("train_dit.py", ["--aug-weight", "-1"], ">= 0"),
    ("train_dit.py", ["--weight-decay", "-1"], ">= 0"),
    ("train_dit.py", ["--warmup-steps", "-5"], ">= 0"),
    ("train_dit.py", ["--save-every", "-1"], ">= 0; 0 = never"),
    ("train_dit.py", ["--grad-clip", "-1"], ">= 0"),
    ("train_dit.py", ["--lr", "nan"], "> 0"),
    ("train_ae.py", ["--gan-weight", "-1"], ">= 0"),
    ("train_ae.py", ["--image-size", "0"], "> 0"),
    ("train_ae.py", ["--lpips-weight", "inf"], ">= 0"),
    ("sample.py", ["--cfg-scale", "nan"], "a finite number"),
    ("sample.py", ["--eta", "2"], "in [0, 1]"),
    ("evaluate.py", ["classes", "--num-val", "0"], "> 0"),
]


@pytest.mark.parametrize("script,flags,words", BAD, ids=[f"{s} {' '.join(f)}" for s, f, _ in BAD])
def test_a_value_outside_its_range_is_one_line_before_any_work(script, flags, words, tmp_path):
    args = [*flags, "--out", tmp_path / "run"] if script.startswith("train") else flags
    if script == "train_dit.py":
        args += ["--ae-ckpt", tmp_path / "no-ae.pt"]  # never read: the flags are refused first
    if script in ("sample.py", "evaluate.py"):
        args += ["--ckpt", tmp_path / "no-dit.pt"]
    proc = run_script(script, args, check=False)
    flag, value = flags[1:3] if script == "evaluate.py" else flags[:2]
    assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"argument {flag}: {value} is outside its range: {words}" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()


def test_the_ranges_are_in_the_help():
    proc = run_script("train_dit.py", ["--help"])
    text = " ".join(proc.stdout.split())
    assert "EMA decay" in text and "(in [0, 1])" in text and "(>= 0; 0 = never)" in text


@pytest.mark.parametrize("script", ["train_ae.py", "train_dit.py", "sample.py", "evaluate.py", "export.py",
                                    "bench.py"])
def test_the_usage_examples_keep_their_line_breaks(script):
    """A command continued with a backslash in a (non-raw) docstring reads back as one line with a run of
    spaces in it (what `evaluate.py --help` printed for `ref`)."""
    import ast
    import re

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    doc = ast.get_docstring(ast.parse(open(os.path.join(root, script)).read()), clean=False)
    joined = [line for line in doc.splitlines() if re.search(r"\S {4,}[^\s#]", line)]
    assert not joined, joined


def test_grad_clip_0_means_no_clipping(trained_ae, tmp_path):
    """--grad-clip 0 trains (a clip to norm 0 would scale every gradient to nothing)."""
    import torch

    run_script("train_dit.py", dit_args(trained_ae, tmp_path / "a", 2, ["--grad-clip", "0"]))
    ckpt = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    first = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["model"]
    assert ckpt["args"]["grad_clip"] == 0 and all(torch.isfinite(v).all() for v in first.values())
    run_script("train_dit.py", dit_args(trained_ae, tmp_path / "b", 2, ["--grad-clip", "1e-12"]))
    tiny = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["model"]
    moved = sum((first[k] - tiny[k]).abs().sum().item() for k in first)
    assert moved > 0  # without clipping the weights move where a near-zero clip keeps them still


def test_resume_keeps_the_runs_flags_and_says_which(trained_ae, tmp_path):
    out = tmp_path / "run"
    run_script("train_dit.py", dit_args(trained_ae, out, 2, ["--objective", "ddpm"]))
    # --model given at the default, another than the run's: refused, in one line
    proc = run_script("train_dit.py", [*dit_args(trained_ae, out, 3), "--resume", "--model", "DiT-classroom"],
                      check=False)
    assert proc.returncode != 0 and "--model DiT-classroom differs from the run's DiT-tiny" in proc.stderr
    # not given: the run's own objective is kept, and the run says so
    proc = run_script("train_dit.py", [*dit_args(trained_ae, out, 3), "--resume"])
    assert "--resume: continuing with the run's own" in proc.stdout and "--objective ddpm" in proc.stdout
    assert os.path.isfile(out / "last.pt")


def test_adam_betas_reach_the_optimiser(trained_ae, tmp_path):
    """--adam-betas sets AdamW's betas (the U-ViT recipe's 0.99,0.99); a malformed pair is one line."""
    import torch

    run_script("train_dit.py", dit_args(trained_ae, tmp_path / "a", 2, ["--adam-betas", "0.99,0.99"]))
    ckpt = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    assert ckpt["args"]["adam_betas"] == [0.99, 0.99]
    assert all(tuple(g["betas"]) == (0.99, 0.99) for g in ckpt["opt"]["param_groups"])
    for bad in ("0.9", "0.9,1", "a,b"):
        flags = dit_args(trained_ae, tmp_path / "b", 2, ["--adam-betas", bad])
        proc = run_script("train_dit.py", flags, check=False)
        assert proc.returncode != 0 and "argument --adam-betas" in proc.stderr
        assert "Traceback" not in proc.stderr and not (tmp_path / "b").exists()
