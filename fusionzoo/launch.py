"""Where ``compare``'s runs and ``tune``'s workers run: processes on this machine, tasks on a Ray
cluster, or Slurm jobs through submitit.

* ``local`` (the default): ``jobs`` at a time on this machine.
* ``ray``: each item a Ray task asking for ``cpus`` CPUs and ``gpus`` GPUs; ``address`` joins a
  running cluster (``auto``, ``ray://head:10001``), otherwise a local one is started for the call.
* ``slurm``: each item one task of a submitit job array (``partition``, ``time_min``, ``gpus``,
  ``cpus``; at most ``jobs`` running at once); the job files (logs, pickles) go to ``folder``.
  ``cluster="local"`` is submitit's local executor: the same code path on this machine, no Slurm.

Every item is a resumable run folder or a worker of a shared study, so a killed task on any engine
is taken up again by running the same command. Ray and Slurm workers must see the same file system
(the output folder, the data) and have fusionzoo installed; each item runs in ``cwd``.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fusionzoo.errors import ConfigError
from fusionzoo.extras import require

__all__ = ["Launcher", "LAUNCHERS", "run_logged"]

LAUNCHERS = ("local", "ray", "slurm")


@dataclass(frozen=True)
class Launcher:
    """How to run a list of independent items; see the module docstring."""

    name: str = "local"
    jobs: int = 1
    cpus: int | None = None
    gpus: float = 0
    address: str | None = None
    partition: str | None = None
    time_min: int = 240
    folder: Path | None = None
    cluster: str | None = None

    def __post_init__(self) -> None:
        if self.name not in LAUNCHERS:
            raise ConfigError(f"--launcher: one of {', '.join(LAUNCHERS)}, got {self.name!r}")
        if isinstance(self.jobs, bool) or not isinstance(self.jobs, int) or self.jobs < 1:
            raise ConfigError(f"--jobs: runs (or tune workers) at a time, an int >= 1, got {self.jobs!r}")
        if self.cpus is not None and self.cpus < 1 or self.gpus < 0:
            raise ConfigError(f"--cpus-per-task / --gpus-per-task: expected cpus >= 1 and gpus >= 0, got {self.cpus}, {self.gpus}")

    def failure(self, error: BaseException) -> str:
        """One line for an item whose task itself died (a lost node, a job Slurm killed)."""
        text = str(error).strip()
        return f"{self.name} task failed: {type(error).__name__}: {text.splitlines()[-1] if text else ''}"

    @property
    def cpus_per_task(self) -> int:
        """Threads each item gets: ``cpus``, or this machine's cores shared among ``jobs``."""
        return self.cpus or max(1, (os.cpu_count() or 1) // self.jobs)

    def map(self, fn: Callable[..., Any], items: Sequence[tuple], on_error: Callable[[tuple, BaseException], Any]) -> Iterator[tuple[int, Any]]:
        """``(index, fn(*items[index]))`` as each item finishes; an item whose task itself failed
        (a lost node, a job killed by Slurm) gives ``on_error(item, error)`` instead."""
        run = {"local": self._local, "ray": self._ray, "slurm": self._slurm}[self.name]
        yield from run(fn, list(items), on_error)

    def _local(self, fn, items, on_error):
        from concurrent.futures import ThreadPoolExecutor, as_completed

        with ThreadPoolExecutor(max_workers=self.jobs) as pool:  # each item starts its own process
            futures = {pool.submit(fn, *item): i for i, item in enumerate(items)}
            for future in as_completed(futures):
                i = futures[future]
                error = future.exception()
                yield i, (future.result() if error is None else on_error(items[i], error))

    def _ray(self, fn, items, on_error):
        ray = require("ray", "--launcher ray")
        started = not ray.is_initialized()
        if started:
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
        try:
            remote = ray.remote(num_cpus=self.cpus_per_task, num_gpus=self.gpus)(fn)
            pending = {remote.remote(*item): i for i, item in enumerate(items)}
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    i = pending.pop(ref)
                    try:
                        yield i, ray.get(ref)
                    except Exception as e:  # RayTaskError, a worker or node lost
                        yield i, on_error(items[i], e)
        finally:
            if started:
                ray.shutdown()

    def _slurm(self, fn, items, on_error):
        submitit = require("submitit", "--launcher slurm")
        folder = Path(self.folder or "slurm").resolve()
        executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=self.cluster)
        executor.update_parameters(
            name="fusionzoo", timeout_min=self.time_min, cpus_per_task=self.cpus_per_task, gpus_per_node=int(self.gpus),
            slurm_array_parallelism=self.jobs, **({"slurm_partition": self.partition} if self.partition else {}),
        )
        jobs = executor.map_array(fn, *zip(*items)) if items else []
        pending = dict(enumerate(jobs))
        while pending:
            for i, job in list(pending.items()):
                if job.done():
                    del pending[i]
                    try:
                        yield i, job.result()
                    except Exception as e:  # FailedJobError, UncompletedJobError (timeout, preemption)
                        yield i, on_error(items[i], e)
            if pending:
                time.sleep(1)


def run_logged(command: Sequence[str], log: Path, cwd: str | Path, threads: int, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run ``command`` in ``cwd`` with ``threads`` threads, its output into ``log`` (its folder made);
    returns the exit code and the log's last non-empty line (``no output``)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1", **(env or {})}
    with log.open("w") as f:
        code = subprocess.run(list(command), stdout=f, stderr=subprocess.STDOUT, env=env, cwd=cwd).returncode
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return code, lines[-1] if lines else "no output"
