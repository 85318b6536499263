"""Task: run a module asynchronously on a dedicated thread bound to a CPU pool."""

from __future__ import annotations

import concurrent.futures
import os
import threading
import weakref

import torch

from ipex_runtime import _binding
from ipex_runtime.cpupool import CPUPool

__all__ = ["Future", "Task"]


class Future(concurrent.futures.Future):
    """The pending result of a :class:`Task` call. ``get()`` waits for it and
    re-raises the exception the task raised, if any."""

    def get(self, timeout: float | None = None):
        return self.result(timeout)


def _caller_modes() -> tuple[bool, bool, bool, torch.dtype]:
    # Grad, inference and autocast modes are thread-local in torch: a task must
    # run under the modes of the thread that called it, not its own defaults.
    return (torch.is_grad_enabled(), torch.is_inference_mode_enabled(), torch.is_autocast_enabled("cpu"),
            torch.get_autocast_dtype("cpu"))


def _run(future: Future, module, modes, args, kwargs) -> None:
    if not future.set_running_or_notify_cancel():
        return
    grad, inference, autocast, autocast_dtype = modes
    try:
        with torch.inference_mode(inference), torch.set_grad_enabled(grad), \
                torch.autocast("cpu", dtype=autocast_dtype, enabled=autocast):
            result = module(*args, **kwargs)
    except BaseException as exc:  # the caller's get() re-raises it
        future.set_exception(exc)
    else:
        future.set_result(result)


def _bind_worker(cpus: list[int]) -> tuple[int, list[int]]:
    # Stays bound for the thread's life; the thread exits when the Task closes.
    return threading.get_ident(), _binding.bind_current_thread(cpus)


class Task:
    """An abstraction of computation based on a PyTorch module, scheduled asynchronously.

    The module (an ``nn.Module``, a ``torch.compile``\\ d module or any callable)
    runs on one dedicated thread whose OpenMP team is bound to ``cpu_pool`` with
    ``len(cpu_pool)`` intra-op threads. Calls run in order, under the caller's
    grad / inference / CPU autocast modes.

    * ``task(*args, **kwargs)`` returns a :class:`Future`; ``future.get()`` gives
      the result or re-raises the task's exception.
    * ``task.run_sync(*args, **kwargs)`` waits and returns the result.
    * ``task.close()`` (or dropping the last reference) ends the thread and its
      OpenMP workers once queued calls are done.

    Args:
        module: the callable to run.
        cpu_pool (CPUPool): the cores the task runs on.
    """

    def __init__(self, module, cpu_pool: CPUPool):
        if not isinstance(cpu_pool, CPUPool):
            raise TypeError(f"Task needs an ipex.cpu.runtime.CPUPool, got {type(cpu_pool).__name__}")
        if not callable(module):
            raise TypeError(f"Task needs a module or other callable to run, got {type(module).__name__}")
        _binding.require_enabled()
        self.module = module
        self.cpu_pool = cpu_pool
        self._start_worker()

    def _start_worker(self) -> None:
        # One worker: a ThreadPoolExecutor with max_workers=1 never starts a second
        # thread, and ends its thread on shutdown, at exit, or when collected.
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"ipex-task-cpus{'_'.join(map(str, self.cpu_pool.core_ids))}")
        try:
            self._thread_ident, self.thread_ids = self._executor.submit(_bind_worker, self.cpu_pool.core_ids).result()
        except BaseException:
            self._executor.shutdown(wait=True)
            raise
        self._pid = os.getpid()
        self._finalizer = weakref.finalize(self, self._executor.shutdown, wait=False)

    def __call__(self, *args, **kwargs) -> Future:
        if self._pid != os.getpid() and self._finalizer.alive:
            # A forked child inherits the executor but not its thread (fork copies only the
            # calling thread): queued calls would wait forever. Start this process's own worker.
            self._finalizer.detach()
            self._start_worker()
        future = Future()
        modes = _caller_modes()
        if threading.get_ident() == self._thread_ident:
            # Called from inside this task (nested use): queueing would wait on itself.
            _run(future, self.module, modes, args, kwargs)
            return future
        try:
            self._executor.submit(_run, future, self.module, modes, args, kwargs)
        except RuntimeError as exc:
            raise RuntimeError("this Task is closed; create a new Task to run more work") from exc
        return future

    def run_sync(self, *args, **kwargs):
        """Run on the task's thread and wait for the result."""
        return self(*args, **kwargs).get()

    def close(self) -> None:
        """Finish queued calls, then end the task's thread (idempotent)."""
        if self._finalizer.detach() is not None:
            self._executor.shutdown(wait=threading.get_ident() != self._thread_ident)

    def __enter__(self) -> Task:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Task({type(self.module).__name__}, {self.cpu_pool!r})"
