"""Running many small training runs on a few CPU cores, and writing what they found.

Small models use threads badly: a 64-wide model spends its time in per-op overhead, not in arithmetic, and on a
busy machine two threads that wait for each other at every op made a 0.5 s run take 14-24 s (measured on 2 shared
cores). So every process runs one thread, and the runs go to `workers` processes side by side: on 2 cores that is
close to twice the throughput of one. One progress bar counts the optimizer steps of all runs.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import queue as queue_module
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .models import check_model_name
from .training import Progress

Job = dict[str, Any]
JobFunction = Callable[[Job, Progress], dict[str, Any]]

_progress_queue = None  # in a worker process: where its progress reports go


def _start_worker(progress_queue) -> None:
    global _progress_queue
    _progress_queue = progress_queue
    torch.set_num_threads(1)
    quiet_transformers()


def _run_in_worker(function: JobFunction, job: Job) -> dict[str, Any]:
    return function(job, _progress_queue.put)


def quiet_transformers() -> None:
    """transformers' Mamba warns once per process that its CUDA kernels are missing: true, known, and noise here."""
    from transformers.utils import logging

    logging.set_verbosity_error()


def parse_experiment_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None, name: str,
                          defaults: dict[str, Any], quick: dict[str, Any],
                          check: Callable[[argparse.Namespace], None]) -> argparse.Namespace:
    """The end of every experiment's command line: adds the output flags (`add_output_arguments`), parses `argv` with
    the experiment's defaults, or with its `quick` ones over them when --quick is given (flags given explicitly win
    either way), checks the --models names, then runs the experiment's own `check`."""
    add_output_arguments(parser, name)
    parser.set_defaults(**defaults)
    if parser.parse_known_args(argv)[0].quick:
        parser.set_defaults(**quick)
    args = parser.parse_args(argv)
    for model in args.models:
        check_model_name(model)
    check(args)
    return args


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    """The hyperparameter sweep of the experiments that keep the best run: learning rates x seeds, and weight decay."""
    parser.add_argument("--lrs", nargs="+", type=float, help="Peak learning rates to try (each with every seed).")
    parser.add_argument("--seeds", nargs="+", type=int, help="Seeds to try (init and training data).")
    parser.add_argument("--weight_decay", type=float, help="AdamW weight decay of the matrices.")


def check_sweep(args: argparse.Namespace) -> None:
    if any(lr <= 0 for lr in args.lrs):
        raise ValueError(f"--lrs must be positive, got {args.lrs}.")
    if args.weight_decay < 0:
        raise ValueError(f"--weight_decay must be >= 0, got {args.weight_decay}.")


def add_output_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    """Where the runs go (processes) and where the experiment `name` writes its JSON, table and plot."""
    parser.add_argument("--workers", type=int, help="Processes running runs side by side (default: up to 2 cores).")
    parser.add_argument("--output_dir", help=f"Where {name}.json/.md/.png go.")


def require_at_least_one(args: argparse.Namespace, *flags: str) -> None:
    """ValueError naming the first of `flags` (integer options) that is below 1."""
    for flag in flags:
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag} must be at least 1, got {getattr(args, flag)}.")


def default_workers() -> int:
    return max(1, min(2, os.cpu_count() or 1))


def run_jobs(function: JobFunction, jobs: Sequence[Job], *, steps_per_job: Sequence[int], workers: int,
             desc: str, cost: Sequence[float] | None = None) -> list[dict[str, Any]]:
    """`function(job, progress)` for every job, in `workers` processes (1: in this one), with a progress bar over
    all optimizer steps (`steps_per_job`). Returns the results in the order of `jobs`. Every process runs one
    thread; `function` must be importable (a module-level function) and `jobs` picklable. `cost`: a rough
    relative run time per job; the costliest start first, so that no worker is left alone with a long run at the
    end."""
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}.")
    bar = tqdm(total=sum(steps_per_job), desc=desc, unit="step", dynamic_ncols=True)
    results: list[dict[str, Any] | None] = [None] * len(jobs)
    if workers == 1:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for index, job in enumerate(jobs):
                results[index] = function(job, bar.update)
        finally:
            torch.set_num_threads(threads)
        bar.close()
        return results
    # spawn, not fork: a forked child inherits the parent's OpenMP thread pool state, which can deadlock torch.
    context = multiprocessing.get_context("spawn")
    progress_queue = context.Queue()
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                             initargs=(progress_queue,)) as pool:
        order = sorted(range(len(jobs)), key=lambda i: -cost[i]) if cost is not None else range(len(jobs))
        pending = {pool.submit(_run_in_worker, function, jobs[i]): i for i in order}
        while pending:
            done, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            for future in done:
                results[pending.pop(future)] = future.result()  # a failed run raises here, with its traceback
            while True:
                try:
                    bar.update(progress_queue.get_nowait())
                except queue_module.Empty:
                    break
    bar.update(bar.total - bar.n)  # the last reports can still be on their way when the last run returns
    bar.close()
    return results


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "os": f"{platform.system()} {platform.machine()}",
            "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__}


def require_matplotlib() -> None:
    """Fail before any training when the PNG could not be drawn at the end."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ValueError("The plots need matplotlib: pip install 'hf-xlstm[plots]' (or pip install matplotlib).") \
            from None


def write_outputs(output_dir: str | os.PathLike, name: str, record: dict[str, Any], table: str,
                  draw: Callable[[Path], None]) -> list[Path]:
    """Write `name`.json (the record), `name`.md (the table) and `name`.png (`draw(path)`) into output_dir."""
    import json

    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{name}.json", folder / f"{name}.md", folder / f"{name}.png"]
    paths[0].write_text(json.dumps(record, indent=2, allow_nan=False) + "\n")  # strict JSON: no NaN
    paths[1].write_text(table)
    draw(paths[2])
    return paths


class Stopwatch:
    """Wall time since creation, in seconds."""

    def __init__(self):
        self.start = time.time()

    def seconds(self) -> float:
        return round(time.time() - self.start, 1)
