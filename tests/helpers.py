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


def dit_args(ae, out, steps, extra=(), cache=None):
    """train_dit.py's flags for a tiny run of `steps` steps on the AE checkpoint `ae` into `out` (a
    pathlib.Path; the latent cache beside it unless `cache`); `extra` flags come last and win."""
    return ["--ae-ckpt", str(ae), "--model", "DiT-tiny", "--image-size", "16", "--max-images", "64",
            "--batch-size", "8", "--max-steps", str(steps), "--log-every", "1", "--sample-steps", "2",
            "--cache-dir", str(cache or out.parent / "cache"), "--out", str(out), *map(str, extra)]


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


# safetensors' dtype names (the format's specification) for the dtypes our weights use
_SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
                       torch.float64: "F64", torch.int64: "I64", torch.int32: "I32", torch.uint8: "U8",
                       torch.bool: "BOOL"}


def mini_safetensors():
    """A stand-in for the optional package safetensors (its `safetensors.torch.save_file` and
    `load_file`) on machines without it, written from the format's specification: 8 bytes of
    little-endian header length, a JSON header of each tensor's dtype, shape and byte range, then the
    raw little-endian data. tests/test_interop.py checks it against the real package where that is
    installed."""
    import json
    import struct
    import types

    def save_file(tensors, filename, metadata=None):
        header, chunks, offset = {}, [], 0
        if metadata:
            header["__metadata__"] = metadata
        for name, t in tensors.items():
            data = t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
            header[name] = {"dtype": _SAFETENSORS_DTYPES[t.dtype], "shape": list(t.shape),
                            "data_offsets": [offset, offset + len(data)]}
            chunks.append(data)
            offset += len(data)
        text = json.dumps(header).encode()
        text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
        with open(filename, "wb") as fh:
            fh.write(struct.pack("<Q", len(text)) + text + b"".join(chunks))

    def load_file(filename, device="cpu"):
        with open(filename, "rb") as fh:
            blob = fh.read()
        if len(blob) < 8:
            raise ValueError("header too small")
        (n,) = struct.unpack("<Q", blob[:8])
        header = json.loads(blob[8:8 + n])
        data = blob[8 + n:]
        dtypes = {v: k for k, v in _SAFETENSORS_DTYPES.items()}
        out = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            start, end = info["data_offsets"]
            raw = torch.frombuffer(bytearray(data[start:end]), dtype=torch.uint8)
            out[name] = raw.view(dtypes[info["dtype"]]).reshape(info["shape"]).to(device)
        return out

    package, module = types.ModuleType("safetensors"), types.ModuleType("safetensors.torch")
    module.save_file, module.load_file = save_file, load_file
    package.torch = module
    return package, module
