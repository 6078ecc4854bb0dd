"""Executors: where a sweep's independent tasks run.

Every executor has one method, ``imap(fn, args, cpus)``, yielding ``(index, result)`` as tasks
finish (``cpus``: the CPUs one task uses, which Ray reserves), so the driver writes each
finished cell at once. Tasks are plain functions of JSON-safe values
and bytes (models travel as safetensors blobs), so the same task runs in this process, in a
spawned worker process, or on a Ray node, and gives the same numbers for the same seeds (with
the same ``threads`` per task: intra-op thread counts can change float summation order).

- ``local`` (default): sequential in this process, or ``jobs`` spawned worker processes, which
  exit when the driver dies (even by SIGKILL): none is left computing for nobody.
- ``ray``: a local Ray cluster (``ray.init(num_cpus=...)``) or an existing one
  (``address="ray://host:10001"`` / ``"auto"``). Data must exist on every node (``data_root``).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any

from eviltwins.errors import ParamError
from eviltwins.registry import Registry

EXECUTORS: Registry[Any] = Registry("executor")


def set_threads(threads: int | None) -> None:
    """Pin torch's intra-op threads for this task (None keeps the process default)."""
    if threads:
        import torch

        torch.set_num_threads(int(threads))


PARENT_POLL_S = 0.5  # how often a worker checks that its driver is still alive


def _exit_with_parent(parent: int) -> None:
    """Worker-process initializer: end this worker when the driver process ``parent`` dies.

    On Linux the kernel sends SIGKILL at the driver's death (``PR_SET_PDEATHSIG``); everywhere
    a daemon thread also polls the parent pid (an orphan is re-parented) and exits at once.
    """
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the driver died before this worker got here
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(PARENT_POLL_S)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="eviltwins-parent-watch", daemon=True).start()


@EXECUTORS.register("local")
class LocalExecutor:
    """Sequential in-process execution (``jobs=1``) or a pool of ``jobs`` spawned processes."""

    def __init__(self, jobs: int = 1, **_: Any) -> None:
        if jobs < 1:
            raise ParamError(f"--jobs must be a positive number of processes; got {jobs}")
        self.jobs = jobs

    def default_threads(self) -> int | None:
        return None if self.jobs == 1 else max(1, (os.cpu_count() or 1) // self.jobs)

    def imap(
        self, fn: Callable[..., Any], args: Sequence[tuple], cpus: int | None = None
    ) -> Iterator[tuple[int, Any]]:
        if self.jobs == 1 or len(args) <= 1:
            for i, a in enumerate(args):
                yield i, fn(*a)
            return
        pool = ProcessPoolExecutor(
            max_workers=min(self.jobs, len(args)),
            mp_context=mp.get_context("spawn"),
            initializer=_exit_with_parent,
            initargs=(os.getpid(),),
        )
        futures = {pool.submit(fn, *a): i for i, a in enumerate(args)}
        try:
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    yield futures[f], f.result()
        except BaseException:
            # On Ctrl-C, an error or an abandoned iteration: drop queued tasks and stop the
            # workers; finished results were already handed to the driver (and written).
            procs = list((getattr(pool, "_processes", None) or {}).values())
            pool.shutdown(wait=False, cancel_futures=True)
            for proc in procs:
                if proc.is_alive():
                    proc.terminate()
            raise
        # all done: the idle workers exit on their own and release their queues' semaphores
        # (terminating them leaked three per sweep, reported by the resource tracker)
        pool.shutdown(wait=True)

    def close(self) -> None:
        pass


@EXECUTORS.register("ray")
class RayExecutor:
    """Tasks as Ray remote functions, each reserving ``threads`` CPUs (default 1), and one GPU
    when the cluster has GPUs and ``device`` is not ``cpu``.

    Starts a local cluster with ``num_cpus`` (default: all cores) unless ``address`` names an
    existing one; shuts down only a cluster it started.
    """

    def __init__(
        self,
        address: str | None = None,
        num_cpus: int | None = None,
        device: str = "auto",
        **_: Any,
    ) -> None:
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ParamError(
                "the ray executor needs Ray: pip install 'eviltwins[ray]' (or use --executor local)"
            ) from None
        self.address = address
        self.num_cpus = num_cpus
        self.device = device
        self._started = False

    def default_threads(self) -> int | None:
        return 1

    def _init(self) -> None:
        import ray

        if ray.is_initialized():
            return
        if self.address:
            ray.init(address=self.address, log_to_driver=False)
        else:
            ray.init(
                num_cpus=self.num_cpus or os.cpu_count() or 1,
                include_dashboard=False,
                log_to_driver=False,
            )
            self._started = True

    def imap(
        self, fn: Callable[..., Any], args: Sequence[tuple], cpus: int | None = None
    ) -> Iterator[tuple[int, Any]]:
        import ray

        if not args:
            return
        self._init()
        # Ray hides GPUs from tasks that reserve none: reserve one per task when the device
        # asks for CUDA ("auto" or "cuda...") and the cluster has GPUs.
        gpus = 1 if self.device != "cpu" and ray.cluster_resources().get("GPU", 0) > 0 else 0
        remote = ray.remote(num_cpus=cpus or 1, num_gpus=gpus, max_retries=0)(fn)
        refs = {remote.remote(*a): i for i, a in enumerate(args)}
        try:
            while refs:
                ready, _ = ray.wait(list(refs), num_returns=1)
                for r in ready:
                    yield refs.pop(r), ray.get(r)
        finally:
            for r in refs:
                ray.cancel(r, force=True)

    def close(self) -> None:
        if self._started:
            import ray

            ray.shutdown()
            self._started = False


def make_executor(name: str = "local", **options: Any) -> Any:
    """An executor by name (``local`` or ``ray``) with its options (``jobs``; ``address``,
    ``num_cpus``)."""
    return EXECUTORS.get(name)(**options)
