"""CPU threads and the OpenMP wait policy, chosen from how busy the machine is when a command starts.

Why. torch's CPU kernels run on OpenMP threads that, between parallel regions, spin-wait for the
next one (libgomp's default). On a 2-core machine with another busy process, a 2-thread run puts
one of its threads on the busy core: every parallel region waits for that thread's time slice while
the other spins, so a run can be several times slower than at 1 thread (the demo's training: 187 s
quiet, 862 s next to one busy process; the issue that asked for this module). One thread avoids it.

What. `plan_cpu(requested)` samples /proc/stat over `sample_s` (0.2 s) to count the idle cores
among those this process may use (os.sched_getaffinity), falling back to os.getloadavg():
* threads: the explicit request, or (auto) the idle cores rounded down with a 0.25 core slack,
  at least 1 and at most the usable cores: a quiet 2-core machine gets 2, one busy process leaves 1;
* wait policy: PASSIVE (threads sleep instead of spinning) whenever the threads outnumber the idle
  cores, i.e. the machine is oversubscribed; otherwise OpenMP's default (spinning is fastest when
  every thread has a core to itself).
`apply_cpu(plan)` sets OMP_WAIT_POLICY (unless the user set it) and torch's thread count. The wait
policy is read once, when torch's OpenMP runtime starts (at `import torch`), so the CLI plans before
importing anything that imports torch; a library user who imports torch first should set
OMP_WAIT_POLICY=PASSIVE in the environment themselves on a shared machine. The machine's state can
change after the start: a competitor that starts later is not seen (pass --threads 1 then).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

SLACK = 0.25  # cores: 1.8 idle cores still count as 2 (sampling noise, this process's own start-up)


@dataclass(frozen=True)
class CpuPlan:
    threads: int  # torch intra-op threads
    cores: int  # cores this process may run on
    idle: float  # idle cores measured at start (NaN when it could not be measured)
    wait_policy: str | None  # "PASSIVE", or None for OpenMP's default
    auto: bool  # threads chosen here (not --threads)

    def describe(self) -> str:
        how = "auto" if self.auto else "--threads"
        policy = f", OMP_WAIT_POLICY={self.wait_policy}" if self.wait_policy else ""
        return f"{self.threads} thread(s) ({how}; {self.idle:.1f} of {self.cores} core(s) idle{policy})"


def usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _cpu_times(cpus: set[int] | None) -> tuple[float, float] | None:
    """(idle, total) jiffies summed over `cpus` (all when None), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    idle = total = 0.0
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu" or not fields:
            continue
        if cpus is not None and int(name[3:]) not in cpus:
            continue
        vals = [float(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
        idle += vals[3] + (vals[4] if len(vals) > 4 else 0.0)
        total += sum(vals)
    return (idle, total) if total > 0 else None


def idle_cores(sample_s: float = 0.2) -> float:
    """Idle cores among this process's usable ones, over the next `sample_s` seconds (/proc/stat),
    or usable cores − 1-minute load average where /proc/stat is missing; NaN if neither works."""
    try:
        cpus = set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = None
    n = usable_cores()
    a = _cpu_times(cpus)
    if a is not None:
        time.sleep(sample_s)
        b = _cpu_times(cpus)
        if b is not None and b[1] > a[1]:
            return n * (b[0] - a[0]) / (b[1] - a[1])
    try:
        return max(0.0, n - os.getloadavg()[0])
    except (AttributeError, OSError):
        return float("nan")


def plan_cpu(requested: int | None = None, *, sample_s: float = 0.2, idle: float | None = None) -> CpuPlan:
    """Threads and wait policy for this machine now (module doc); `idle` overrides the measurement."""
    cores = usable_cores()
    idle = idle_cores(sample_s) if idle is None else idle
    known = idle == idle  # not NaN
    if requested is not None:
        if requested < 1:
            raise ValueError(f"--threads must be >= 1, got {requested}")
        threads = requested
    else:
        threads = max(1, min(cores, int(idle + SLACK))) if known else 1
    oversubscribed = known and threads > idle + SLACK
    return CpuPlan(threads=threads, cores=cores, idle=idle if known else float("nan"),
                   wait_policy="PASSIVE" if oversubscribed else None, auto=requested is None)


def apply_cpu(plan: CpuPlan) -> None:
    """Set OMP_WAIT_POLICY (before torch starts; a value the user set wins) and torch's threads."""
    if plan.wait_policy and "OMP_WAIT_POLICY" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = plan.wait_policy
    import torch

    torch.set_num_threads(plan.threads)
