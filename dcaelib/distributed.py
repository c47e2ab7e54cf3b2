"""
distributed.py: one process or many. The same script runs as `python script.py` (one process, CPU or
one GPU) and under `torchrun --nproc_per_node=N script.py` (nanoGPT's RANK check): NCCL on CUDA, gloo
on the CPU. Only rank 0 prints and saves.
"""

import os

import torch
import torch.distributed as dist


def setup_distributed(device_arg="auto"):
    """Returns (rank, world_size, device). Under torchrun (RANK set): NCCL on CUDA, gloo on CPU.

    On the CPU it also flushes denormal floats to zero (`torch.set_flush_denormal`)."""
    rank, world, device = _setup_distributed(device_arg)
    if device.type == "cpu":
        # NOTE: numbers below ~1e-38 (float32 denormals) can take a CPU's slow path, many times
        # slower per operation, and GAN training makes some (the discriminator's tiny gradients,
        # Adam's moments). Flushing them to 0 changes no result that matters and never costs, so
        # every CPU run of every script gets it here (RESULTS.md, "Speed", has the measurement).
        torch.set_flush_denormal(True)
    return rank, world, device

def _setup_distributed(device_arg):
    use_cuda = torch.cuda.is_available() if device_arg == "auto" else device_arg.startswith("cuda")
    if device_arg != "auto" and use_cuda and not torch.cuda.is_available():
        raise ValueError(f"--device {device_arg} asked for, but CUDA is not available")
    if "RANK" not in os.environ:
        device = torch.device("cuda" if use_cuda else "cpu")
        return 0, 1, device if device_arg == "auto" else torch.device(device_arg)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"this process has local rank {local_rank}, but this node shows only "
                             f"{torch.cuda.device_count()} GPU(s): start at most that many processes a node "
                             f"(torchrun --nproc_per_node), or pass --device cpu")
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    dist.init_process_group(backend="nccl" if use_cuda else "gloo",
                            device_id=device if use_cuda else None)
    return rank, world, device

def cleanup_distributed():
    """Call once, at the end of a run that went through on every rank (it waits for all of them)."""
    if dist.is_available() and dist.is_initialized():
        # NOTE: a barrier first, so that no rank starts to exit while another still works: a gloo
        # worker thread lets go of the tensors of the last all_gather (the RNG states of the final
        # checkpoint) a moment after the main thread has gone on, and if that falls after Python
        # has begun to shut down, the thread cannot take the GIL and the process aborts with
        # "terminate called without an active exception". While a rank waits here, its worker
        # threads finish; the barrier's own tensor is made in C++ and needs no GIL.
        dist.barrier()
        dist.destroy_process_group()

def all_reduce_mean(value):
    """Average a float over ranks (for logging)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.item() / dist.get_world_size()

@torch.no_grad()
def check_ranks_in_sync(module):
    """Raise if a module's parameters differ between ranks (DDP keeps them equal; a bug would not).

    Returns the number of ranks compared. Compares float64 sums of every parameter tensor.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    sums = torch.stack([p.detach().double().sum() for p in module.parameters()])
    gathered = [torch.zeros_like(sums) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, sums)
    for r, other in enumerate(gathered):
        if not torch.equal(other, gathered[0]):
            raise RuntimeError(f"rank {r}'s weights differ from rank 0's after training: DDP went "
                               f"out of sync")
    return len(gathered)
