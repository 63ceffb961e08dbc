"""How many CPU threads torch should use: the cores this process may run on that are idle now.

PyTorch starts one thread per physical core whatever else runs. On a machine shared with other CPU-bound
processes (CI runners, parallel experiment scripts, two runs at once) its threads then wait on each other
at every parallel region: a 2-core machine with one busy process ran `seqrl train --agent dt_small` for
100 updates in 47.9 s at 2 threads and 8.4 s at 1 (issue 28). `idle_cores` samples /proc/stat for a
moment; `set_threads` applies `trainer.threads` (0: that count, at most torch's default).
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager


def allowed_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity; all of them where the OS has no affinity call)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def _cpu_times() -> dict[int, tuple[int, int]]:
    """{cpu: (idle jiffies incl. iowait, total jiffies)} from /proc/stat."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *vals = line.split()
                v = [int(x) for x in vals[:8]]  # user nice system idle iowait irq softirq steal
                out[int(name[3:])] = (v[3] + v[4], sum(v))
    return out


def idle_cores(interval: float = 0.25) -> int:
    """Cores of `allowed_cpus()` idle over the next `interval` seconds, rounded, at least 1. Where
    /proc/stat cannot be read (not Linux), all allowed cores."""
    cpus = allowed_cpus()
    try:
        a = _cpu_times()
        time.sleep(interval)
        b = _cpu_times()
    except (OSError, ValueError, IndexError):
        return len(cpus)
    idle = 0.0
    for c in cpus:
        if c in a and c in b and b[c][1] > a[c][1]:
            idle += (b[c][0] - a[c][0]) / (b[c][1] - a[c][1])
    return max(1, min(len(cpus), round(idle)))


_DEFAULT: list[int] = []  # torch's own thread count, read before the first change


def set_threads(requested: int = 0) -> int:
    """Set torch's intra-op threads: `requested`, or for 0 the idle cores (at most torch's default, one
    per physical core). Returns the count set."""
    import torch

    if not _DEFAULT:
        _DEFAULT.append(torch.get_num_threads())
    n = requested if requested > 0 else 1 if _DEFAULT[0] <= 1 else min(idle_cores(), _DEFAULT[0])  # no sampling for 1
    torch.set_num_threads(n)
    return n


@contextmanager
def torch_threads(n: int):
    """torch's intra-op threads set to `n` inside the block, restored after it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
