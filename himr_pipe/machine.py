"""What this machine offers: its devices (named cpu, cuda or cuda:N) and the CPUs this process may use.

Asked before any work by the commands (a device that is not there is refused in one line), and by the
distributors and the training loader for their default worker counts.
"""

from __future__ import annotations

import os

DEVICE_HELP = "cpu, cuda or cuda:N"


def is_device(device: str) -> bool:
    """cpu, cuda or cuda:N."""
    return device in ("cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())


def device_unavailable(device: str) -> str | None:
    """Why ``device`` (cpu, cuda or cuda:N) cannot be used on this machine, or None: asked before any work, so
    that a machine without CUDA is told in one line (not a worker's traceback or torch's error mid-run)."""
    if not device.startswith("cuda"):
        return None
    import torch

    if not torch.cuda.is_available():
        return f"--device {device}: this machine has no CUDA device (torch.cuda.is_available() is False); use --device cpu"
    n, index = torch.cuda.device_count(), int(device[5:] or 0)
    if index >= n:
        return f"--device {device}: this machine has {n} CUDA device(s), cuda:0 to cuda:{n - 1}"
    return None


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup v2 CPU quota (a container's
    ``--cpus``), which ``os.cpu_count()`` ignores."""
    import math

    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)
