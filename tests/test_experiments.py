"""experiments/*.sh keep working: each study script's dry run prints its commands, every printed
`python <script> ...` parses with that script's own argument parser, RESULTS.md and experiments/ name
the same scripts, and the quick start runs end to end on tiny settings (then skips what is done and
resumes what is not). A renamed flag then fails here instead of hours into a study."""

import importlib
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from helpers import assert_parses

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = os.path.join(ROOT, "experiments")
RESULTS = os.path.join(ROOT, "RESULTS.md")
PY_SCRIPTS = ("train_ae.py", "train_dit.py", "sample.py", "evaluate.py", "bench.py")
STUDIES = sorted(f for f in os.listdir(EXPERIMENTS) if f.endswith(".sh") and f != "lib.sh")


def study_env(runs, **extra):
    """The environment of a study script: RUNS in a temporary folder, nothing of the caller's study
    settings (DRY_RUN, SMOKE, GPU, ...) leaking in."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("DRY_RUN", "SMOKE", "GPU", "IMAGES", "AE_CKPT", "PYTHON")}
    return {**env, "RUNS": str(runs), **extra}


def dry_run(name, runs):
    """The lines `DRY_RUN=1 bash experiments/NAME` prints (asserting that it exits 0)."""
    proc = subprocess.run(["bash", os.path.join(EXPERIMENTS, name)], env=study_env(runs, DRY_RUN="1"),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"DRY_RUN=1 bash experiments/{name} failed:\n{proc.stderr}"
    return [line for line in proc.stdout.splitlines() if line.strip()]


def python_command(words):
    """(script, args) of a printed command that runs a python script, else None. Skips what may stand
    in front: VAR=value, env, /usr/bin/time and its options, torchrun and its options."""
    while words:
        if words[0] == "env" or re.fullmatch(r"[A-Za-z_]\w*=\S*", words[0]):
            words = words[1:]
        elif os.path.basename(words[0]) == "time":
            words = words[1:]
            while words and words[0].startswith("-"):
                words = words[2:] if words[0] in ("-o", "--output", "-f", "--format") else words[1:]
        else:
            break
    if words and os.path.basename(words[0]) == "torchrun":
        words = words[1:]
        while words and not words[0].endswith(".py"):
            words = words[1:]
    elif words and re.fullmatch(r"python[0-9.]*", os.path.basename(words[0])):
        words = words[1:]
    if words and words[0].endswith(".py"):
        return words[0], words[1:]
    return None


@pytest.mark.parametrize("name", STUDIES)
def test_dry_run_prints_commands_that_parse(name, tmp_path):
    lines = dry_run(name, tmp_path / "runs")
    commands = [(line, python_command(shlex.split(line))) for line in lines]
    parsed = [(line, cmd) for line, cmd in commands if cmd]
    assert parsed, f"DRY_RUN=1 bash experiments/{name} prints no python command"
    for line, (script, args) in parsed:
        assert script in PY_SCRIPTS, f"experiments/{name} runs an unknown script: {line}"
        assert_parses(script, args, f"experiments/{name}")
    assert not (tmp_path / "runs").exists(), f"DRY_RUN=1 bash experiments/{name} wrote files"


def test_a_killed_run_resumes_without_init_from(tmp_path):
    """A run with a last.pt and no `done` mark continues with --resume, and drops --init-from
    (train_ae.py refuses the two together; the run keeps the --init-from it started with)."""
    (tmp_path / "runs" / "ae-p2").mkdir(parents=True)
    (tmp_path / "runs" / "ae-p2" / "last.pt").touch()
    lines = dry_run("ae_phases.sh", tmp_path / "runs")
    phase2 = [line for line in lines if line.endswith(f"--out {tmp_path}/runs/ae-p2 --resume")]
    assert len(phase2) == 1 and "--init-from" not in phase2[0], "\n".join(lines)
    importlib.import_module("train_ae").build_parser().parse_args(python_command(shlex.split(phase2[0]))[1])
    phase3 = [line for line in lines if line.endswith(f"--out {tmp_path}/runs/ae-p3")]
    assert len(phase3) == 1 and f"--init-from {tmp_path}/runs/ae-p2/last.pt" in phase3[0], "\n".join(lines)


def test_bash_syntax():
    for name in [*STUDIES, "lib.sh"]:
        proc = subprocess.run(["bash", "-n", os.path.join(EXPERIMENTS, name)], capture_output=True, text=True)
        assert proc.returncode == 0, f"bash -n experiments/{name}:\n{proc.stderr}"


def test_results_and_experiments_name_the_same_scripts():
    with open(RESULTS, encoding="utf-8") as f:
        text = f.read()
    named = set(re.findall(r"experiments/([a-z0-9_-]+\.sh)", text))  # NAME.sh: a placeholder
    for name in STUDIES:
        assert name in named, f"RESULTS.md does not name experiments/{name}"
    for name in named:
        assert os.path.isfile(os.path.join(EXPERIMENTS, name)), f"RESULTS.md names experiments/{name}, " \
                                                                 f"which does not exist"
    for path in re.findall(r"\]\((assets/[^)\s]+)\)", text):
        assert os.path.isfile(os.path.join(ROOT, path)), f"RESULTS.md links {path}, which does not exist"


def test_quickstart_smoke_run(tmp_path):
    """The whole quick start at a few steps each; a second call then skips every finished command and
    resumes the one run whose `done` mark is missing."""
    script = os.path.join(EXPERIMENTS, "quickstart.sh")
    env = study_env(tmp_path, SMOKE="1", PYTHON=sys.executable, OMP_NUM_THREADS="1")
    proc = subprocess.run(["bash", script], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"SMOKE=1 bash experiments/quickstart.sh failed:\n{proc.stderr[-4000:]}"
    smoke = tmp_path / "smoke"
    for path in ("ae/last.pt", "ae-plain/last.pt", "dit/last.pt", "dit-plain/last.pt", "dit/sample_seed0.png",
                 "recon.json", "classes-dit.json", "quickstart.md"):
        assert (smoke / path).is_file(), f"quickstart.sh left no {path}"
    for run in ("ae", "ae-plain", "dit", "dit-plain"):
        assert (smoke / run / "done").is_file(), f"quickstart.sh did not mark {run} done"
    for path in ("recon.json", "classes-dit.json"):
        with open(smoke / path) as f:
            assert json.load(f), f"{path} is empty"
    log = (tmp_path / "experiments.log").read_text()
    assert len(log.splitlines()) == 7, log  # every command of the smoke run, timed

    (smoke / "dit" / "done").unlink()  # as if killed after its last checkpoint
    # which commands a second call runs, not what they do (resume is tested with the trainers):
    # PYTHON=true stands in for each command that is not skipped
    again = subprocess.run(["bash", script], env={**env, "PYTHON": "true"}, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, f"the second call failed:\n{again.stderr[-4000:]}"
    new = (tmp_path / "experiments.log").read_text()[len(log):].splitlines()
    assert len(new) == 1 and new[0].endswith(f"--out {smoke}/dit --resume"), \
        "the second call should resume dit only and skip the rest; it ran:\n" + "\n".join(new)
    assert (smoke / "dit" / "done").is_file()


@pytest.mark.slow  # a minute: CI runs it with the slow tests (pytest -m slow)
def test_first_look_smoke_run(tmp_path):
    """The README's first look at a few steps each: both AEs, the DiT, the reconstructions, the judge and
    the samples, then one picture (the reconstruction grid beside the samples) and the numbers, which
    agree with the JSON files they come from."""
    from PIL import Image

    script = os.path.join(EXPERIMENTS, "first_look.sh")
    env = study_env(tmp_path, SMOKE="1", PYTHON=sys.executable, OMP_NUM_THREADS="1")
    proc = subprocess.run(["bash", script], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"SMOKE=1 bash experiments/first_look.sh failed:\n{proc.stderr[-4000:]}"
    out = tmp_path / "first_look_smoke"
    recon = json.loads((out / "recon.json").read_text())["results"]
    share = json.loads((out / "classes.json").read_text())["samples"]["4.0"]["share"]
    text = (out / "first_look.txt").read_text()
    assert text.strip() in proc.stdout
    assert f"structured {recon['model']['1']['psnr']:.1f} dB, plain {recon['baseline']['1']['psnr']:.1f} dB" in text
    assert f"guidance 4): {share:.0%} (chance 10%" in text
    left = Image.open(out / "recon.png")
    right = Image.open(out / "dit" / "sample_seed0.png")
    picture = Image.open(out / "first_look.png")
    assert picture.size == (left.width + 20 + right.width, 20 + max(left.height, right.height))
    assert left.width == 2 + 9 * (64 + 2)  # the original, then c' = 1, 2, 4, 8 for each AE, 64 px
