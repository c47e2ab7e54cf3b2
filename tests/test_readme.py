"""README.md keeps telling the truth: every python block runs as a reader types it (in order, in one
session; a trained run and an official weights file are stood in by tiny ones), every command of its
shell blocks parses with its script's own parser, and the map's line counts are the files' sizes."""

import importlib.util
import os
import re
import shlex
import subprocess
import warnings

import torch

import dcae15
from helpers import ROOT, assert_parses, run_script

README = os.path.join(ROOT, "README.md")


def readme_blocks(language):
    with open(README, encoding="utf-8") as f:
        return re.findall(rf"```{language}\n(.*?)```", f.read(), flags=re.S)


def test_every_python_block_runs_in_order(tmp_path):
    # a trained run (tiny) for files.load_dit, an official-format file (tiny) for DCAE.from_pretrained
    ae_dir, dit_dir = tmp_path / "ae", tmp_path / "dit"
    run_script("train_ae.py", ["--model", "dc-ae-tiny", "--max-steps", "2", "--perceptual", "off",
                               "--out", ae_dir])
    run_script("train_dit.py", ["--ae-ckpt", ae_dir / "last.pt", "--model", "DiT-tiny", "--max-steps", "2",
                                "--max-images", "32", "--sample-steps", "2", "--cache-dir", tmp_path / "cache",
                                "--out", dit_dir])
    official = tmp_path / "official.pt"
    torch.save({"state_dict": dcae15.DCAE(dcae15.build_dcae_config("dc-ae-tiny")).state_dict()}, official)
    stand_ins = {'"runs/dit/last.pt"': repr(str(dit_dir / "last.pt")),
                 '"model.safetensors", "dc-ae-f64c128-1.5"': f"{str(official)!r}, 'dc-ae-tiny'"}
    blocks = readme_blocks("python")
    assert len(blocks) >= 3, "the README lost its python examples"
    namespace = {}
    for block in blocks:
        if "import diffusers" in block:  # an optional package: tests/test_interop.py checks it where it is
            if importlib.util.find_spec("diffusers") is None:
                continue
            export = ["diffusers", "--ae-ckpt", ae_dir / "last.pt", "--out", tmp_path / "ae-diffusers"]
            run_script("export.py", export)
            block = block.replace('"runs/ae-diffusers"', repr(str(tmp_path / "ae-diffusers")))
        for text, tiny in stand_ins.items():
            block = block.replace(text, tiny)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tiny official preset has no scaling factor: a warning
            exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["z"].shape == (4, 64, 4, 4) and torch.equal(namespace["z16"], namespace["z"][:, :16])
    assert torch.isfinite(namespace["loss"]) and namespace["latents"].shape == (4, 64, 4, 4)
    assert namespace["images"].shape[0] == 10 and namespace["ckpt"]["objective"] == "flow"


def shell_commands():
    """The python scripts the README's shell blocks run, as bash expands them ($VARS included):
    `python` and `torchrun` are stood in by functions that print their words."""
    stub = ('python() { printf "%q " python "$@"; echo; }\n'
            'torchrun() { while [ $# -gt 0 ] && [ "${1%.py}" = "$1" ]; do shift; done; python "$@"; }\n'
            'pip() { :; }\nbash() { :; }\n')
    lines = []
    for block in readme_blocks("bash"):
        out = subprocess.run(["bash", "-c", stub + block], capture_output=True, text=True, check=True)
        lines += [shlex.split(line)[1:] for line in out.stdout.splitlines()]
    return lines


def test_every_shell_command_parses_with_its_scripts_parser():
    commands = [words for words in shell_commands() if words and words[0].endswith(".py")]
    assert len(commands) >= 10
    for script, *args in commands:
        assert_parses(script, args, "README.md")


def test_the_map_names_every_file_with_its_size():
    """The map (README's first screen) names every .py file of the top level and of dcaelib/, each with
    its size to about 10 %: what a reader relies on, not every line."""
    with open(README, encoding="utf-8") as f:
        claims = re.findall(r"^( *)(\S+\.py) +~(\d+) ", f.read(), flags=re.M)
    mapped = {os.path.join("dcaelib", name) if indent else name: int(lines) for indent, name, lines in claims}
    files = {f for f in os.listdir(ROOT) if f.endswith(".py")}
    files |= {os.path.join("dcaelib", f) for f in os.listdir(os.path.join(ROOT, "dcaelib"))
              if f.endswith(".py") and f != "__init__.py"}
    assert set(mapped) == files, f"the map and the files differ: {sorted(set(mapped) ^ files)}"
    for name, lines in mapped.items():
        with open(os.path.join(ROOT, name), encoding="utf-8") as f:
            actual = len(f.read().splitlines())
        assert abs(actual - lines) <= max(10, actual // 10), f"README map: {name} has {actual} lines, not ~{lines}"
