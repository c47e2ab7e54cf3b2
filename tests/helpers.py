"""Run a top-level script as `python script.py ARGS` would, inside the test process.

Starting a fresh Python for every script call costs seconds of imports (torch, torchvision) each time;
most script tests run the script here instead: `runpy` executes it as __main__ (its own argument
parsing, its `main`, its error handling), with stdout and stderr captured and one intra-op thread, as
the OMP_NUM_THREADS=1 subprocesses had. Tests that need a real process (torchrun, or the exact bytes a
user sees on stderr) keep using subprocess.
"""

import contextlib
import importlib
import io
import os
import runpy
import socket
import subprocess
import sys
import warnings

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(script, args, check=True):
    """A CompletedProcess-like result (returncode, stdout, stderr) of `python script args`."""
    out, err = io.StringIO(), io.StringIO()
    threads, argv, cwd = torch.get_num_threads(), sys.argv, os.getcwd()
    sys.argv = [os.path.join(ROOT, script), *map(str, args)]
    torch.set_num_threads(1)
    os.chdir(ROOT)  # as the subprocesses ran
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                runpy.run_path(sys.argv[0], run_name="__main__")
            except SystemExit as exit_:  # argparse errors and the scripts' one-line error messages
                if isinstance(exit_.code, str):
                    err.write(exit_.code + "\n")
                    code = 1
                else:
                    code = exit_.code or 0
    finally:
        sys.argv = argv
        torch.set_num_threads(threads)
        os.chdir(cwd)
    proc = subprocess.CompletedProcess([script, *args], code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(f"{script} failed ({code}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_processes(script, args, check=True):
    """`torchrun --nproc_per_node=2 script args` on gloo, without torchrun's launcher process (it
    costs seconds of imports): two Pythons with the variables torchrun sets, which is all the
    scripts read. tests/test_train_ae.py keeps one real torchrun run. Returns rank 0's
    CompletedProcess (returncode: the first non-zero of both)."""
    port, procs = free_port(), []
    for rank in range(2):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "RANK": str(rank),
               "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, os.path.join(ROOT, script), *map(str, args), "--device", "cpu"],
                                      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=300) for p in procs]
    code = next((p.returncode for p in procs if p.returncode), 0)
    proc = subprocess.CompletedProcess([script, *args], code, outs[0][0], outs[0][1] + outs[1][1])
    if check and code != 0:
        raise AssertionError(f"{script} on 2 processes failed ({code}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def assert_parses(script, args, where):
    """`python script args`, as a document (`where`) gives it, parses with the script's own parser."""
    parser = importlib.import_module(script[:-3]).build_parser()
    try:
        parser.parse_args(args)
    except SystemExit:
        pytest.fail(f"{where}: `python {script} {' '.join(args)}` does not parse (see above)")
