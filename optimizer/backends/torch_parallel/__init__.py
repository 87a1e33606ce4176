"""Layouts of the PyTorch backend: `replicas` engine processes (each pinned to its own cores or
GPU, the batch split between them) of `tensor_parallel` ranks each (transformers' `tp_plan="auto"`
over torch.distributed: gloo on the CPU, NCCL on GPUs). Ranks are started by torch.multiprocessing
(`start_processes`, spawn) and driven in lockstep from the parent process."""
