"""Probes that measure the peak memory of one training step: a forked child on the CPU, the
caching allocator's statistics on CUDA.

CPU method (Linux). The parent runs one small step first (lazy imports, code paging), then each
probe forks it; the child
  1. runs on one thread (an OpenMP pool must not be used across ``fork``) pinned to one CPU, with
     glibc's mmap threshold fixed at 16 KiB, so every tensor of that size or more gets its own
     pages and gives them back when freed (glibc's default threshold adapts to past frees, which
     would make the number depend on what the parent did before);
  2. runs a warm-up step at the same batch size with a throw-away model, so the library code that
     step needs is paged in (code pages count towards the resident size);
  3. occupies the free chunks the parent's heap left (without touching them), so tensors cannot
     land in holes, and gives the remaining free heap back to the kernel (``malloc_trim``);
  4. resets the kernel's peak-resident counter (``/proc/self/clear_refs``, value 5), reads the
     resident size, builds a fresh model and optimizer and runs one step;
  5. reports the peak resident size (VmHWM) minus the resident size before the model was built.
The number is what a step adds on top of the process and its data set: parameters, gradients,
optimizer state, the batch, activations and workspace, rounded to pages. Memory that glibc keeps
cached after frees in a long run is not counted (it is reusable). Resolution: the kernel folds its
per-CPU page counts into the total in batches, and allocations under 16 KiB may reuse small
holes, so repeated probes of the same step differ by up to ~100 KiB; budgets of a few MiB and up
are resolved to a few percent.

CUDA method. In process: empty the cache, reset the peak statistics, build a fresh model and
optimizer, run two steps, synchronise, and report the peak *reserved* bytes (what the caching
allocator took from the device, which is what runs out) minus the reserved bytes before. An
out-of-memory error is caught by type, everything is released and the cache emptied before going on.
"""

from __future__ import annotations

import ctypes
import gc
import os
import pickle
import signal
import sys
import traceback
import warnings
from typing import Optional

import torch

from ..errors import BatchscopeError, TaskError
from ..tasks import Task
from .ceiling import ProbeResult
from .oom import is_out_of_memory
from .step import StepRunner

_M_MMAP_THRESHOLD = -3  # mallopt parameter number in glibc's malloc.h
MMAP_THRESHOLD = 16 * 1024


def _proc_status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024  # reported in kB
    return out


def cpu_memory_supported() -> tuple[bool, str]:
    """Whether the forked-child method works here, and why not when it does not."""
    if not hasattr(os, "fork"):
        return False, "this platform has no fork()"
    if not os.path.exists("/proc/self/clear_refs") or not os.access("/proc/self/clear_refs", os.W_OK):
        return False, "the peak resident size cannot be reset here (/proc/self/clear_refs is not writable)"
    try:
        _proc_status()["VmHWM"]
    except (OSError, KeyError):
        return False, "/proc/self/status has no VmHWM"
    return True, ""


def available_ram() -> Optional[int]:
    """Memory the kernel could give to a new process now (MemAvailable), in bytes."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _libc():
    """glibc, for mallopt and malloc_trim; None elsewhere (then freed memory may be reused and the
    measured peak is a lower bound)."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt, libc.malloc_trim  # noqa: B018 - both must exist
        return libc
    except (OSError, AttributeError):
        return None


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _fill_heap_holes(libc, max_calls: int = 4096) -> int:
    """Occupy the heap's free chunks of at least the mmap threshold; returns the bytes taken.

    glibc serves a request from a free heap chunk before it maps fresh pages, so a child inheriting
    the parent's heap (with holes from earlier, larger steps) would place tensors in holes, and
    freed holes stay resident: the measured peak would depend on what the parent did before.
    With the holes taken (untouched, so not resident), every tensor of 16 KiB or more gets its own
    pages and the measurement is the step's own.
    """
    try:
        mallinfo2 = libc.mallinfo2
    except AttributeError:
        return 0  # glibc < 2.33
    mallinfo2.restype = _MallInfo2
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    taken = 0
    size = mallinfo2().fordblks
    for _ in range(max_calls):
        if size < MMAP_THRESHOLD:
            break
        free_before = mallinfo2().fordblks
        ptr = libc.malloc(size)
        if ptr and mallinfo2().fordblks < free_before:
            taken += size  # came out of a hole: keep it (the child exits without freeing)
        else:
            if ptr:
                libc.free(ptr)  # freshly mapped: no hole that large is left
            size //= 2
    return taken


def _pin_to_one_cpu() -> None:
    """Run the child on one CPU: the kernel counts resident pages per CPU and folds them into the
    total in batches, so the peak it records can be off by a batch (32+ pages) per CPU used."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpus[os.getpid() % len(cpus)]})
    except (AttributeError, OSError):
        pass


def _child(task: Task, batch: int, amp: bool, seed: int, write_fd: int, optimizer=None) -> None:
    """Runs in the forked child: measure, write one pickled message, exit without cleanup."""
    code = 0
    try:
        torch.set_num_threads(1)
        _pin_to_one_cpu()
        libc = _libc()
        if libc is not None:
            libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        warm = StepRunner(task, "cpu", amp, seed, optimizer)
        warm.step(warm.batch(batch))
        del warm
        gc.collect()
        if libc is not None:
            _fill_heap_holes(libc)
            # Hand the remaining free heap back to the kernel: a trim during the step would pull the
            # resident size below the starting point.
            libc.malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _proc_status()["VmRSS"]
        runner = StepRunner(task, "cpu", amp, seed, optimizer)
        runner.step(runner.batch(batch))
        message = ("ok", _proc_status()["VmHWM"] - before)
    except BaseException as e:  # noqa: BLE001 - everything must reach the parent
        if is_out_of_memory(e):
            message = ("oom", None)
        elif isinstance(e, BatchscopeError):   # already one line naming the problem (a task error)
            message = ("task", str(e))
        else:
            message = ("error", f"{type(e).__name__}: {e}\n" + traceback.format_exc(limit=6))
        code = 1
    try:
        data = pickle.dumps(message)
        os.write(write_fd, len(data).to_bytes(8, "little") + data)
    finally:
        os._exit(code)


def _read_all(fd: int) -> bytes:
    chunks = []
    while True:
        part = os.read(fd, 1 << 16)
        if not part:
            return b"".join(chunks)
        chunks.append(part)


def _fork_probe(task: Task, batch: int, amp: bool, seed: int, optimizer) -> tuple[bytes, int]:
    """Run :func:`_child` in a forked process; its message and wait status."""
    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    # Frozen objects are skipped by the child's garbage collector, which would otherwise touch
    # (and copy) every page of the parent's Python heap.
    pid = -1
    gc.freeze()
    # SIGINT is blocked across fork(): an interrupt landing in the at-fork handlers would be
    # reported as "ignored" and lost. The child ignores it (the parent ends the child); the
    # parent receives it once unblocked, as a KeyboardInterrupt in its own code.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        with warnings.catch_warnings():
            # Python >= 3.12 warns about fork() in a process with threads (torch's OpenMP pool).
            # The child never enters that pool (one thread) and leaves with os._exit.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
    finally:
        if pid == 0:  # pragma: no cover - the child
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        else:
            gc.unfreeze()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    if pid == 0:  # pragma: no cover - the child; covered through the parent's result
        os.close(read_fd)
        _child(task, batch, amp, seed, write_fd, optimizer)
    os.close(write_fd)
    try:
        data = _read_all(read_fd)
    except BaseException:
        os.kill(pid, signal.SIGKILL)  # interrupted: the child's measurement is of no use now
        raise
    finally:
        os.close(read_fd)
        _, status = os.waitpid(pid, 0)
    return data, status


def cpu_memory_probe(task: Task, amp: bool = False, seed: int = 0, optimizer=None):
    """A probe (``batch -> ProbeResult``) measuring one CPU training step in a forked child."""
    ok, why = cpu_memory_supported()
    if not ok:
        raise TaskError(f"cannot measure CPU memory: {why}")
    # One step in this process first: it imports what the optimizer loads lazily and pages in the
    # code, once, instead of in every child.
    primer = StepRunner(task, "cpu", amp, seed, optimizer)
    primer.step(primer.batch(min(2, task.n_train)))
    del primer

    def probe(batch: int) -> ProbeResult:
        data, status = _fork_probe(task, batch, amp, seed, optimizer)
        if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL and not data:
            return ProbeResult(batch, None, oom=True)  # the kernel's out-of-memory killer
        if len(data) < 8:
            raise TaskError(f"the memory probe of task {task.name!r} at batch size {batch} died "
                            f"without a result (wait status {status})")
        kind, value = pickle.loads(data[8:])
        if kind == "ok":
            return ProbeResult(batch, int(value))
        if kind == "oom":
            return ProbeResult(batch, None, oom=True)
        if kind == "task":
            raise TaskError(value)
        raise TaskError(f"one training step of task {task.name!r} at batch size {batch} failed: {value}")

    return probe


def cuda_memory_probe(task: Task, device: "torch.device | str" = "cuda", amp: bool = False, seed: int = 0,
                      optimizer=None):
    """A probe measuring the peak reserved CUDA memory of two training steps at ``batch``."""
    device = torch.device(device)

    def probe(batch: int) -> ProbeResult:
        gc.collect()
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_reserved(device)
        runner = data = None
        peak: Optional[int] = None
        oom = False
        try:
            runner = StepRunner(task, device, amp, seed, optimizer)
            data = runner.batch(batch)
            for _ in range(2):  # the second step runs with the optimizer state already allocated
                runner.step(data)
            runner.synchronize()
            peak = torch.cuda.max_memory_reserved(device) - before
        except Exception as e:  # noqa: BLE001 - only out-of-memory is expected; re-raised otherwise
            if not is_out_of_memory(e):
                raise
            oom = True
        # Outside the except block, so the traceback (and the tensors its frames hold) is gone.
        del runner, data
        gc.collect()
        torch.cuda.empty_cache()
        return ProbeResult(batch, None if oom else int(peak), oom=oom)

    return probe


def cuda_free_memory(device: "torch.device | str" = "cuda") -> tuple[int, int]:
    """(free, total) bytes on the device after emptying this process's cache."""
    gc.collect()
    torch.cuda.empty_cache()
    return torch.cuda.mem_get_info(torch.device(device))
