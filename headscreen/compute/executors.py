"""One interface that runs independent tasks in-process, in a process pool, or on a Ray cluster.

`make_executor(kind, workers=..., address=..., threads=...)` returns an `Executor` whose
`run(fn, tasks)` calls `fn(*task)` for every task and yields `(index, outcome)` as tasks finish,
where `outcome` is the return value or a `TaskFailed` (the task's exception, or its worker's death).
Tasks are pure: they return records and never write into a run directory, so the caller (the
driver) alone writes, and its lock, atomic writes and resume behave the same under every executor.

Threads: every worker sets `torch.set_num_threads(threads)` (1 by default) before its first task,
so N workers use N cores and never oversubscribe them. The local executor runs in the caller's
process with the caller's thread setting (see headscreen/compute/cpu.py for how the CLI chooses it).

Results do not depend on the executor: a task computes the same thing wherever it runs, at the same
thread count. Ray is imported only when the `ray` executor is asked for (the `ray` extra).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EXECUTORS = ("local", "process", "ray")


class WorkerDied(RuntimeError):
    """A worker process (process pool or Ray) died under a task: an environment fault the CLI reports in
    one line (exit code 2); what the driver had written is kept, so a rerun resumes."""


@dataclass(frozen=True)
class TaskFailed:
    """A task that raised (`error` is its exception) or whose worker died (`crashed`)."""

    error: BaseException
    crashed: bool = False

    def describe(self) -> str:
        what = "its worker died" if self.crashed else "it raised"
        return f"{what}: {type(self.error).__name__}: {' '.join(str(self.error).split())}"


def _set_worker_threads(threads: int) -> None:
    import torch

    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    torch.set_num_threads(threads)


def _init_pool_worker(threads: int, parent: int) -> None:
    """A process-pool worker: its torch threads, and (Linux) its end with the process that started it. Without
    the latter, a sweep driver killed by SIGTERM/SIGKILL left its workers running: they went on taking the
    queued runs and held those runs' locks (seen in session 7: an orphaned worker trained two more runs
    after its driver was killed)."""
    _set_worker_threads(threads)
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        pr_set_pdeathsig = 1  # <linux/prctl.h>
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
        if os.getppid() != parent:  # the driver died before prctl took effect
            os._exit(1)


def _call(threads: int, fn: Callable, args: tuple) -> Any:
    _set_worker_threads(threads)
    return fn(*args)


class Executor:
    kind = "local"

    def __init__(self, workers: int = 1, threads: int = 1) -> None:
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers (--workers) must be an integer >= 1, got {workers!r}")
        if not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads per worker must be an integer >= 1, got {threads!r}")
        self.workers, self.threads = workers, threads

    def run(self, fn: Callable, tasks: Sequence[tuple]) -> Iterator[tuple[int, Any]]:
        """In this process, in order; an exception becomes a `TaskFailed` (KeyboardInterrupt passes)."""
        for i, args in enumerate(tasks):
            try:
                yield i, fn(*args)
            except Exception as e:  # noqa: BLE001 - handed to the caller, which names the task
                yield i, TaskFailed(e)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ProcessExecutor(Executor):
    """A `concurrent.futures` pool of spawned processes (no forked torch/OpenMP state)."""

    kind = "process"

    def __init__(self, workers: int = 2, threads: int = 1) -> None:
        super().__init__(workers, threads)
        self._pool = None

    def _get_pool(self):
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_init_pool_worker, initargs=(self.threads, os.getpid()))
        return self._pool

    def run(self, fn, tasks):
        from concurrent.futures import as_completed
        from concurrent.futures.process import BrokenProcessPool

        pool = self._get_pool()
        futures = {pool.submit(fn, *args): i for i, args in enumerate(tasks)}
        broken = False
        for fut in as_completed(futures):
            try:
                yield futures[fut], fut.result()
            except BrokenProcessPool as e:
                broken = True
                yield futures[fut], TaskFailed(e, crashed=True)
            except Exception as e:  # noqa: BLE001
                yield futures[fut], TaskFailed(e)
        if broken:  # a dead worker breaks the whole pool: start a fresh one next time
            self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _local_ray_settings() -> None:
    """Before Ray is imported: its usage reporting off, and its node address the loopback one (Ray reads
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 at import as "no multi-node cluster": every gRPC server and agent
    of the local cluster then listens on 127.0.0.1 only, measured with `ss -ltnp` on Ray 2.60)."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"


def _loopback_after_import(ray) -> None:
    """Where Ray was imported before the environment was set (a library caller), the same switch."""
    constants = getattr(getattr(ray, "_private", None), "ray_constants", None)
    if constants is not None and hasattr(constants, "ENABLE_RAY_CLUSTER"):
        constants.ENABLE_RAY_CLUSTER = False


class RayExecutor(Executor):
    """Tasks on a Ray cluster: `address=None` starts a local one (`workers` CPUs, listening on 127.0.0.1
    only, with Ray's usage reporting off: `_local_ray_settings`) unless this process is already connected; "auto" joins the running cluster; "ray://host:port" a remote one. Every task asks
    for `threads` CPUs, so Ray runs at most CPUs/threads of them at once. Tasks are not retried: a
    dead worker is reported to the driver, which keeps what finished (rerun to resume)."""

    kind = "ray"

    def __init__(self, workers: int = 2, threads: int = 1, address: str | None = None) -> None:
        super().__init__(workers, threads)
        if address is None:  # a local cluster of our own: loopback only, no usage reporting
            _local_ray_settings()
        try:
            import ray
        except ImportError as e:
            raise ImportError("the ray executor needs Ray: pip install 'headscreen[ray]' (or use --executor process)") from e
        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            kwargs = {"num_cpus": workers * threads} if address is None else {"address": address}
            if address is None:
                _loopback_after_import(ray)
            # workers import headscreen/pipelines from where this process does (a checkout, not a stale install)
            here = str(Path(__file__).resolve().parent.parent)
            path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
            ray.init(include_dashboard=False, logging_level="ERROR", log_to_driver=False,
                     runtime_env={"env_vars": {"PYTHONPATH": path, "OMP_NUM_THREADS": str(threads)}}, **kwargs)
            self._started = True
        self._remote = ray.remote(num_cpus=threads, max_retries=0)(_call)

    def run(self, fn, tasks):
        ray = self._ray
        refs = {self._remote.remote(self.threads, fn, tuple(args)): i for i, args in enumerate(tasks)}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            ref = done[0]
            try:
                yield refs[ref], ray.get(ref)
            except ray.exceptions.RayTaskError as e:  # the task raised: hand its own exception on
                cause = e.as_instanceof_cause() if hasattr(e, "as_instanceof_cause") else e
                yield refs[ref], TaskFailed(cause)
            except (ray.exceptions.WorkerCrashedError, ray.exceptions.RayError) as e:
                yield refs[ref], TaskFailed(e, crashed=True)

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()
            self._started = False


def make_executor(kind: str = "local", *, workers: int | None = None, address: str | None = None,
                  threads: int = 1) -> Executor:
    """An executor by name (--executor local|process|ray). `workers` defaults to 1 (local) or 2."""
    if kind not in EXECUTORS:
        raise ValueError(f"--executor must be one of {', '.join(EXECUTORS)}, got {kind!r}")
    if address is not None and kind != "ray":
        raise ValueError(f"--address is for --executor ray only (got --executor {kind})")
    if kind == "local":
        return Executor(workers or 1, threads)
    if kind == "process":
        return ProcessExecutor(workers or 2, threads)
    return RayExecutor(workers or 2, threads, address)


def chunks(n: int, parts: int) -> list[range]:
    """Split range(n) into min(parts, n) contiguous, near-equal ranges (the first ones one longer)."""
    parts = max(1, min(parts, n))
    size, extra = divmod(n, parts)
    out, lo = [], 0
    for k in range(parts):
        hi = lo + size + (1 if k < extra else 0)
        out.append(range(lo, hi))
        lo = hi
    return [r for r in out if len(r)]
