"""Layouts of the PyTorch backend: `replicas` engine processes (each pinned to its own cores or
GPU, the batch split between them) of `tensor_parallel` ranks each (transformers' `tp_plan="auto"`
over torch.distributed: gloo on the CPU, NCCL on GPUs). Ranks are started by torch.multiprocessing
(`start_processes`, spawn) and driven in lockstep from the parent process; in a Ray worker they
are Ray actors in one placement group per candidate (ray_ranks.py)."""

RANKS_ENV = "WATTSMITH_RANKS"  # "ray": a layout's ranks are Ray actors (set in every Ray worker)
