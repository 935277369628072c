"""Worker processes on one host: GPU slots, launching `stl-tune worker --launched` children, reaping
the ones that die (their trials are re-queued at once), relaying their output under the live view
(search/views/live.py).

Each child sees only its GPU (CUDA_VISIBLE_DEVICES, set before it imports torch) and gets an equal
share of the CPU cores for torch's threads. Children run in their own session, so a terminal's
Ctrl-C reaches only the launching process, which forwards it once; a second Ctrl-C kills them and
re-queues their trials. What a child runs is search/worker/session.py's worker loop in its process
(search/worker/workers.py); what runs before any child starts, search/worker/session.py too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
from rich.console import Console
from rich.text import Text

from stl_tune.errors import UserError
from stl_tune.search import optuna_compat as compat
from stl_tune.search.fmt import best_line, numbers, plural
from stl_tune.search.settings import STORAGE_ENV
from stl_tune.search.state.limits import stop_reason
from stl_tune.search.state.outcome import requeue_dead
from stl_tune.search.state.trials import tally
from stl_tune.search.storage.storages import describe
from stl_tune.search.views.live import View
from stl_tune.search.worker.workers import POLL_S
from stl_tune.stop import Stop


def check_device(device: str, slots: list[str | None]) -> None:
    """A one-line UserError, before any trial, for a `runtime.device` no worker of `slots` can
    have: each GPU worker sees one GPU, as cuda:0, so cuda:1 would fail every trial ("invalid
    device ordinal"); a CPU slot has no GPU at all."""
    if not device.startswith("cuda"):
        return
    if device not in ("cuda", "cuda:0"):
        raise UserError(
            f"runtime.device {device}: each worker sees only its own GPU, as cuda:0; pick the GPU "
            f"with --gpus {device.split(':')[1]} and set runtime.device to cuda or auto"
        )
    if None in slots:
        raise UserError(
            f"runtime.device {device}: this run's workers are on the CPU (no GPU chosen or seen); "
            "set runtime.device to auto or cpu, or give them GPUs with --gpus"
        )


def worker_env(storage_url: str, gpu: str | None, threads: int) -> dict[str, str]:
    """The environment of one worker process: its GPU, or none at all for a CPU slot (an empty
    CUDA_VISIBLE_DEVICES, so `runtime.device: auto` cannot land on GPU 0 and no CUDA context can be
    made there); its share of the cores for torch's threads and for inductor's compile processes
    (else each worker starts min(32, cores) of them). A value the user set for either is kept."""
    env = {**os.environ, STORAGE_ENV: storage_url, "PYTHONUNBUFFERED": "1"}
    env.setdefault("OMP_NUM_THREADS", str(threads))
    env.setdefault("TORCHINDUCTOR_COMPILE_THREADS", str(threads))
    env["CUDA_VISIBLE_DEVICES"] = "" if gpu is None else gpu
    return env


def plan_slots(gpus: str, workers_per_gpu: int = 1, workers: int | None = None) -> list[str | None]:
    """CUDA_VISIBLE_DEVICES of each worker process; None for a CPU worker.

    gpus: "all" (every visible GPU; CPU workers when there is none), "none", or "0,1,...".
    workers: CPU worker processes when no GPU is used (default 1).
    """
    if workers_per_gpu < 1 or (workers is not None and workers < 1):
        raise UserError("--workers and --workers-per-gpu must be at least 1")
    if gpus == "none":  # before torch counts GPUs: a count starts CUDA's driver while they are visible
        return [None] * (workers or 1)
    import torch  # here, not at import: the CLI's other commands should not pay for it

    visible = [str(i) for i in range(torch.cuda.device_count())]
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env:  # index i of this process is the parent's i-th device: keep that name for children
        visible = [d.strip() for d in env.split(",")][: len(visible)]
    if gpus == "all":
        chosen = visible
    else:
        try:
            indices = [int(g) for g in gpus.split(",")]
        except ValueError:
            raise UserError(f"--gpus must be all, none or indices like 0,1; got {gpus!r}") from None
        bad = [i for i in indices if not 0 <= i < len(visible)]
        if bad:
            raise UserError(f"--gpus {gpus}: no GPU {bad[0]} here ({len(visible)} visible)")
        chosen = [visible[i] for i in indices]
    if chosen:
        return [g for g in chosen for _ in range(workers_per_gpu)]
    return [None] * (workers or 1)


def keep_off_gpus(slots: list[str | None]) -> None:
    """When every slot is a CPU one, hide the GPUs from this process as from its children, before
    torch starts CUDA: with a GPU visible, each optimizer step asks the current CUDA stream whether
    it is capturing a graph (torch.optim.Optimizer._accelerator_graph_capture_health_check), which
    makes a CUDA context on GPU 0, in a process that trains on CPU (an in-process worker, `run`'s
    cost probe). A process that has started CUDA already keeps what it has."""
    import torch

    if all(slot is None for slot in slots) and not torch.cuda.is_initialized():
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


def threads_per_worker(workers: int) -> int:
    """torch threads of each of `workers` worker processes launched on this host: $OMP_NUM_THREADS
    when set, else an equal share of the CPU cores."""
    share = max(1, len(os.sched_getaffinity(0)) // workers)
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", share)))
    except ValueError:  # torch ignores a value that is no number too
        return share


def worker_command(
    name: str,
    n_trials: int,
    artifacts: Path,
    data_dir: Path | None,
    max_failures: int,
    index: int,
    gpu: str | None,
    epoch_lines: bool,
) -> list[str]:
    """The `stl-tune worker --launched` command line of one slot: the worker loop in that process,
    which leaves what this one does (data, the dead workers' trials, the live view) to it, and
    writes its epochs as lines when `epoch_lines` (no terminal's table shows them).
    The storage URL travels in the environment, not argv: `ps` shows argv to every user."""
    cmd = [
        sys.executable,
        "-m",
        "stl_tune",
        "worker",
        "--launched",
        "--name",
        name,
        "--trials",
        str(n_trials),
        "--artifacts",
        str(artifacts),
        "--max-failures",
        str(max_failures),
        "--worker-index",
        str(index),
        "--gpus",
        "none" if gpu is None else "all",
        "--workers",
        "1",
        "--epoch-lines" if epoch_lines else "--no-epoch-lines",
    ]
    if data_dir is not None:
        cmd += ["--data-dir", str(data_dir)]
    return cmd


def launch(
    study: optuna.Study,
    storage_url: str,
    slots: list[str | None],
    n_trials: int,
    *,
    artifacts: Path,
    data_dir: Path | None = None,
    max_failures: int = 5,
    first_index: int = 0,
    console: Console | None = None,
) -> int:
    """Start one worker process per slot, show the live view until they exit; the exit code.

    Each child sees only its GPU (CUDA_VISIBLE_DEVICES, set before it imports torch) and gets an
    equal share of the CPU cores for torch's threads. Children run in their own session, so a
    terminal's Ctrl-C reaches only this process, which forwards it once (see module doc).
    """
    console = console or Console()
    threads = threads_per_worker(len(slots))
    procs: list[subprocess.Popen] = []
    for i, gpu in enumerate(slots):
        env = worker_env(storage_url, gpu, threads)
        lines = not console.is_terminal  # a terminal's table shows the epochs
        cmd = worker_command(study.study_name, n_trials, artifacts, data_dir, max_failures, first_index + i, gpu, lines)
        procs.append(
            subprocess.Popen(
                cmd,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
        )
    where = ", ".join(f"GPU {g}" if g is not None else "CPU" for g in slots)
    console.print(
        f"study {study.study_name} in {describe(compat.storage_of(study))}: {plural(n_trials, 'trial')}, "
        f"{plural(len(slots), 'worker')} ({where}), artifacts in {artifacts}",
        soft_wrap=True,
    )

    # Signals are only counted here; the loop below acts on them (forward once, then kill).
    forwarded = 0
    reaped: set[int] = set()  # indices of workers whose exit was dealt with
    with Stop() as stop:
        names = {p.pid: f"w{first_index + i}" for i, p in enumerate(procs)}
        with View(study, n_trials, console, names, procs=procs) as view:
            readers = [threading.Thread(target=_relay, args=(p, names[p.pid], console), daemon=True) for p in procs]
            for r in readers:
                r.start()
            while any(p.poll() is None for p in procs):
                time.sleep(POLL_S)
                if stop.count > forwarded:
                    if forwarded == 0:
                        console.print(
                            "stopping: each worker finishes its epoch, checkpoints it and queues its trial "
                            "to resume there (Ctrl-C again to kill them)"
                        )
                        for p in procs:
                            if p.poll() is None:
                                p.send_signal(signal.SIGINT)
                    else:  # the second Ctrl-C: kill; _reap re-queues their trials
                        for p in procs:
                            p.kill()
                    forwarded = stop.count
                _reap(study, procs, reaped, first_index, console, expected=130 if forwarded else 0)
                view.refresh()
            _reap(study, procs, reaped, first_index, console, expected=130 if forwarded else 0)
            for r in readers:
                r.join(timeout=5)
            view.refresh()
    t = tally(study)
    console.print(
        f"{t.finished}/{n_trials} trials finished ({t.complete} complete, {t.pruned} pruned), "
        f"{t.failed} failed, {t.running} running; {best_line(t.best)}",
        soft_wrap=True,
    )
    if stop.requested:
        console.print("interrupted: run the same command again to continue")
        return 130
    stopped = stop_reason(study) if t.finished < n_trials else None
    if stopped is not None:
        queued = f"; {plural(t.paused, 'paused trial')} will resume on the next run" if t.paused else ""
        console.print(f"stopped: {stopped}{queued}")
    elif t.finished < n_trials:
        console.print("[red]workers stopped before the budget was reached[/red] (see their output above)")
        return 1
    return 0


def _reap(
    study: optuna.Study,
    procs: list[subprocess.Popen],
    reaped: set[int],
    first_index: int,
    console: Console,
    expected: int,
) -> None:
    """Name each worker that exited abnormally (a signal, or an exit code other than 0 and
    `expected`) and re-queue its trials now: the others take the retries up at once."""
    for i, p in enumerate(procs):
        code = p.poll()
        if code is None or i in reaped:
            continue
        reaped.add(i)
        if code in (0, expected):
            continue
        how = f"died (signal {-code})" if code < 0 else f"exited with code {code}"
        requeued = requeue_dead(study, [p.pid])
        again = f"; {numbers(requeued)} queued to resume" if requeued else ""
        console.print(f"worker w{first_index + i} (pid {p.pid}) {how}{again}")


def _relay(proc: subprocess.Popen, tag: str, console: Console) -> None:
    """Print a worker's output above the live view, one tagged line at a time."""
    assert proc.stdout is not None
    for line in proc.stdout:
        console.print(Text(f"[{tag}] {line.rstrip()}"), soft_wrap=True)
