import gc
import os
import threading
import time

import pytest
import torch

from ipex_core import _C
from ipex_runtime import CPUPool, Task
from ipex_runtime.task import Future


def wait_until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def thread_alive(tid):
    return os.path.exists(f"/proc/self/task/{tid}")


class Failure(Exception):
    pass


def test_task_result_and_binding(probe, two_cpus):
    a, b = two_cpus
    model = torch.nn.Linear(16, 8)
    x = torch.randn(4, 16)
    with Task(model, CPUPool([a, b])) as task:
        # The dedicated thread and its OpenMP worker, as the kernel sees them.
        assert len(task.thread_ids) == 2 and probe.main_tid() not in task.thread_ids
        assert [probe.cpus_allowed(t) for t in task.thread_ids] == [[a, b], [a, b]]
        future = task(x)
        assert isinstance(future, Future)
        torch.testing.assert_close(future.get(), model(x))
        torch.testing.assert_close(task.run_sync(x), model(x))


def test_task_on_one_core_reports_intraop_threads(probe, two_cpus):
    a, b = two_cpus
    with Task(lambda: (torch.get_num_threads(), probe.intraop_masks()), CPUPool([a, b])) as task:
        assert task.run_sync() == (2, [(task.thread_ids[0], [a, b]), (task.thread_ids[1], [a, b])])


def test_task_exception_reaches_caller_and_task_stays_usable(two_cpus):
    def f(x):
        if x < 0:
            raise Failure(f"negative {x}")
        return x * 2

    with Task(f, CPUPool([two_cpus[1]])) as task:
        future = task(-1)
        with pytest.raises(Failure, match="negative -1"):
            future.get()
        assert isinstance(future.exception(), Failure)
        with pytest.raises(Failure):
            task.run_sync(-2)
        assert task.run_sync(3) == 6


def test_tasks_run_concurrently(two_cpus):
    a, b = two_cpus
    barrier = threading.Barrier(2, timeout=10)  # passes only if both tasks are inside at the same time

    def meet(tag):
        barrier.wait()
        return tag, threading.get_native_id()

    with Task(meet, CPUPool([a])) as t1, Task(meet, CPUPool([b])) as t2:
        f1, f2 = t1("one"), t2("two")
        assert f1.get(timeout=15) == ("one", t1.thread_ids[0])
        assert f2.get(timeout=15) == ("two", t2.thread_ids[0])


def test_calls_to_one_task_run_in_order_on_its_thread(two_cpus):
    order = []
    with Task(lambda i: order.append((i, threading.get_native_id())), CPUPool([two_cpus[0]])) as task:
        futures = [task(i) for i in range(20)]
        for f in futures:
            f.get()
        assert order == [(i, task.thread_ids[0]) for i in range(20)]


def test_task_runs_torch_compiled_module(two_cpus):
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU())
    compiled = torch.compile(model, backend="eager")
    x = torch.randn(3, 8)
    with Task(compiled, CPUPool([two_cpus[1]])) as task:
        torch.testing.assert_close(task(x).get(), model(x))


def test_task_uses_callers_grad_inference_and_autocast_modes(two_cpus):
    model = torch.nn.Linear(8, 8)
    x = torch.randn(2, 8)
    with Task(model, CPUPool([two_cpus[0]])) as task:
        assert task.run_sync(x).requires_grad
        with torch.no_grad():
            assert not task.run_sync(x).requires_grad
        with torch.inference_mode():
            assert task.run_sync(x).is_inference()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert task.run_sync(x).dtype == torch.bfloat16
        assert task.run_sync(x).dtype == torch.float32


def test_nested_call_from_inside_the_task_does_not_deadlock(two_cpus):
    holder = {}

    def countdown(n):
        # Calling the task from its own thread runs inline; queueing would wait on itself and time out.
        return "done" if n == 0 else holder["task"](n - 1).get(timeout=5)

    with Task(countdown, CPUPool([two_cpus[0]])) as task:
        holder["task"] = task
        assert task.run_sync(3) == "done"


def test_no_thread_leaks_after_close_and_collection(two_cpus):
    a, b = two_cpus
    threads_before = threading.active_count()
    task = Task(torch.nn.Linear(4, 4), CPUPool([a, b]))
    tids = list(task.thread_ids)
    task.run_sync(torch.randn(2, 4))
    task.close()
    task.close()  # idempotent
    # The task thread and its OpenMP worker are gone, as the kernel sees it.
    assert wait_until(lambda: not any(thread_alive(t) for t in tids))
    with pytest.raises(RuntimeError, match="Task is closed"):
        task(torch.randn(2, 4))

    task = Task(torch.nn.Linear(4, 4), CPUPool([b]))
    tids = list(task.thread_ids)
    task.run_sync(torch.randn(2, 4))
    del task
    gc.collect()
    assert wait_until(lambda: not any(thread_alive(t) for t in tids))
    assert wait_until(lambda: threading.active_count() == threads_before)


def test_task_errors(two_cpus):
    with pytest.raises(TypeError, match="CPUPool"):
        Task(torch.nn.Linear(2, 2), [two_cpus[0]])
    with pytest.raises(TypeError, match="callable"):
        Task(42, CPUPool([two_cpus[0]]))


def test_task_binding_survives_team_resize(probe, two_cpus):
    """Workers GNU OpenMP ends when a smaller team runs, and re-creates later, stay inside the pool."""
    a, b = two_cpus

    def grow_shrink_grow():
        previous = _C.set_intraop_threads(3, 3)
        first = probe.intraop_masks()
        _C.set_intraop_threads(2, 2)
        _C.intraop_thread_ids()  # a smaller team: the third worker ends
        _C.set_intraop_threads(3, 3)
        second = probe.intraop_masks()
        _C.set_intraop_threads(*previous)
        return first, second

    with Task(grow_shrink_grow, CPUPool([b, a])) as task:
        first, second = task.run_sync()
    assert [m for _, m in first] == [sorted([a, b])] * 3
    assert [m for _, m in second] == [sorted([a, b])] * 3


def test_task_works_in_a_forked_child(two_cpus):
    # fork() copies only the calling thread: the child inherited the executor but not its worker, and
    # every call (and every MultiStreamModule forward) waited forever.
    import signal

    task = Task(lambda x: x * 2, CPUPool([two_cpus[1]]))
    assert task.run_sync(torch.ones(2)).sum().item() == 4  # the worker exists before the fork
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report, never return into pytest
        try:
            signal.alarm(30)  # a hang ends the child, and the parent sees no "ok"
            ok = task.run_sync(torch.ones(3)).sum().item() == 6 and task.run_sync(torch.ones(1)).item() == 2
            os.write(write, b"ok" if ok else b"wrong")
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        got = f.read()
    os.waitpid(pid, 0)
    assert got == b"ok"
    assert task.run_sync(torch.ones(2)).sum().item() == 4  # the parent's worker is untouched

