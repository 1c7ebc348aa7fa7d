"""Multi-process launches on machines without an accelerator (the one place both training CLIs learn about it).

``torchrun --nproc_per_node N`` and ``accelerate launch`` (multi-process) start N processes with ``WORLD_SIZE=N``
in their environment. On a machine with a GPU, ``accelerate`` (under ``Trainer``) then joins them in one NCCL
process group. On a CPU-only machine it does not: ``PartialState()`` only forms a CPU (gloo) group when asked for
the CPU (``cpu=True``; ``TrainingArguments`` asks when ``--use_cpu`` or ``ACCELERATE_USE_CPU`` is set), so without
that every process trains alone, as rank 0 of 1, and all of them write the same output folder.
:func:`use_cpu_processes_if_no_accelerator` sets ``ACCELERATE_USE_CPU`` in exactly that case (several processes,
no accelerator), so the processes form one data-parallel gloo group.
"""

from __future__ import annotations

import os

__all__ = ["has_accelerator", "launched_world_size", "use_cpu_processes_if_no_accelerator"]


def launched_world_size() -> int:
    """``WORLD_SIZE`` as the launcher (torchrun, accelerate, SLURM via torchrun) set it; 1 when not launched."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def has_accelerator() -> bool:
    """Whether torch sees a GPU (or another accelerator) this process could use."""
    import torch

    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and hasattr(accelerator, "is_available"):
        return bool(accelerator.is_available())
    return bool(torch.cuda.is_available())


def use_cpu_processes_if_no_accelerator() -> bool:
    """Set ``ACCELERATE_USE_CPU=true`` when several processes were launched on a machine without an accelerator.

    Returns whether it did (or the variable already said so). Call it before ``TrainingArguments`` are built.
    """
    if os.environ.get("ACCELERATE_USE_CPU", "").strip().lower() in {"1", "true", "yes"}:
        return True
    if launched_world_size() > 1 and not has_accelerator():
        os.environ["ACCELERATE_USE_CPU"] = "true"
        return True
    return False
