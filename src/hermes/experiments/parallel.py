"""Independent simulations run in parallel: local processes, or Ray's process pool on a cluster.

A sweep is a list of independent jobs. `Sweep.map` runs them (in this process when one worker
is asked for, else in worker processes) and returns their results in job order, so a study's
results do not depend on how many workers ran it, only on the jobs' own seeds. What every job
of a study needs (the PDGraphs of a workload: half a megabyte) is `shared`: sent to each
worker once, not with every job. Progress is reported from this process as each job finishes.

Local workers are started with the `forkserver` method (`spawn` where there is none): a fork
of a process that holds threads (rich's live display, Ray's client) can deadlock. With
`ray_address`, the jobs go to `ray.util.multiprocessing.Pool` instead: `"local"` starts a Ray
here, `"auto"` or `"HOST:PORT"` joins a running cluster, whose nodes must have hermes
installed. Ray is imported only then.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from types import TracebackType
from typing import Any, Generic, TypeVar

from hermes.types import ProgressLog

J = TypeVar("J")
R = TypeVar("R")
S = TypeVar("S")
T = TypeVar("T")

# What `shared` holds inside a worker process (set once, by the pool's initializer).
_SHARED: Any = None


def _install(shared: Any) -> None:
    global _SHARED
    _SHARED = shared


def call(job: Callable[[S], R], shared: S) -> R:
    """The worker's side of `Sweep.run`: a job is a callable of the shared data (a
    functools.partial of a module-level function)."""
    return job(shared)


def _quiet(_: str) -> None:
    return None


def _call(fn: Callable[[Any, Any], Any], job: Any) -> Any:
    return fn(job, _SHARED)


def _indexed_call(task: tuple[Callable[[Any, Any], Any], int, Any]) -> tuple[int, Any]:
    fn, i, job = task
    return i, fn(job, _SHARED)


def cpu_workers() -> int:
    """The CPUs this process may run on (the `--workers 0` default)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _context() -> multiprocessing.context.BaseContext:
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


class Sweep(Generic[S]):
    """A pool of `workers` (0: every CPU here, or every CPU of the Ray cluster) that runs
    `fn(job, shared)` for many jobs. One worker and no Ray: jobs run here, in order.
    `progress` hears the label of each job `run` finishes."""

    def __init__(
        self,
        workers: int = 1,
        ray_address: str | None = None,
        shared: S | None = None,
        progress: ProgressLog = _quiet,
    ) -> None:
        if workers < 0:
            raise ValueError(f"workers: expected 0 (every CPU) or more, got {workers}")
        if ray_address is not None and not ray_address.strip():
            raise ValueError("ray_address: expected local, auto or HOST:PORT, got ''")
        self.workers = workers
        self.ray_address = ray_address
        self.shared = shared
        self.progress = progress
        self._local: ProcessPoolExecutor | None = None
        self._ray: Any = None
        self._lock = threading.Lock()  # studies may map from several threads at once

    def __enter__(self) -> Sweep[S]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._local is not None:
            # A failed job cancels what has not started; those running finish first.
            self._local.shutdown(wait=True, cancel_futures=True)
            self._local = None
        if self._ray is not None:
            self._ray.terminate()
            self._ray = None

    @property
    def inline(self) -> bool:
        """Jobs run in this process (one worker, no Ray)."""
        return self.ray_address is None and self.workers == 1

    def map(
        self,
        fn: Callable[[J, S], R],
        jobs: Sequence[J],
        on_done: Callable[[int, R], None] | None = None,
    ) -> list[R]:
        """`fn(job, shared)` for every job, results in job order; `on_done(i, result)` is
        called here as job i finishes (in the order jobs finish). `fn` and the jobs must
        pickle (a module-level function; data, or functools.partial of one)."""
        results: list[Any] = [None] * len(jobs)
        for i, r in self._finished(fn, jobs):
            results[i] = r
            if on_done is not None:
                on_done(i, r)
        return results

    def studies(
        self, studies: Mapping[str, Callable[[], T]], alone: Collection[str] = ()
    ) -> dict[str, T]:
        """Run named studies, each of which maps its jobs on this sweep; their results by
        name in the order of `studies`. With local worker processes the studies run at once
        (one thread each, waiting on the pool), so that one study's last jobs overlap the
        next one's first instead of leaving workers idle; those named in `alone` run first,
        one at a time, with the workers idle (their wall time is a figure). Inline or on Ray
        (whose pool is not safe to share between threads), one after another."""
        done = {name: study() for name, study in studies.items() if name in alone}
        rest = {name: study for name, study in studies.items() if name not in alone}
        if self.inline or self.ray_address is not None or len(rest) < 2:
            done.update({name: study() for name, study in rest.items()})
        else:
            with ThreadPoolExecutor(len(rest)) as threads:
                futures = {name: threads.submit(study) for name, study in rest.items()}
                done.update({name: f.result() for name, f in futures.items()})
        return {name: done[name] for name in studies}

    def run(self, labelled: Sequence[tuple[str, Callable[[S], R]]]) -> list[R]:
        """Jobs that are callables of the shared data, each with a label reported to
        `progress` as it finishes; results in job order."""
        labels = [label for label, _ in labelled]
        jobs = [job for _, job in labelled]
        return self.map(call, jobs, lambda i, _: self.progress(labels[i]))

    def _finished(self, fn: Callable[[J, S], R], jobs: Sequence[J]) -> Iterator[tuple[int, R]]:
        if not jobs:
            return
        if self.inline:
            for i, job in enumerate(jobs):
                yield i, fn(job, self.shared)  # type: ignore[arg-type]
        elif self.ray_address is not None:
            pool = self._ray_pool()
            tasks = [(fn, i, job) for i, job in enumerate(jobs)]
            yield from pool.imap_unordered(_indexed_call, tasks)
        else:
            pool = self._local_pool()
            futures: dict[Future[R], int] = {
                pool.submit(_call, fn, j): i for i, j in enumerate(jobs)
            }
            try:
                for f in as_completed(futures):
                    yield futures[f], f.result()
            finally:
                for f in futures:
                    f.cancel()

    def _local_pool(self) -> ProcessPoolExecutor:
        with self._lock:
            return self._local_pool_locked()

    def _local_pool_locked(self) -> ProcessPoolExecutor:
        if self._local is None:
            self._local = ProcessPoolExecutor(
                max_workers=self.workers or cpu_workers(),
                mp_context=_context(),
                initializer=_install,
                initargs=(self.shared,),
            )
        return self._local

    def _ray_pool(self) -> Any:
        if self._ray is None:
            from ray.util.multiprocessing import Pool

            # processes=None: one per CPU of the cluster (Ray's default).
            self._ray = Pool(
                processes=self.workers or None,
                initializer=_install,
                initargs=(self.shared,),
                ray_address=self.ray_address,
            )
        return self._ray


def pmap(
    fn: Callable[[J, S], R],
    jobs: Sequence[J],
    workers: int = 1,
    ray_address: str | None = None,
    *,
    shared: S | None = None,
    on_done: Callable[[int, R], None] | None = None,
) -> list[R]:
    """`fn(job, shared)` for every job on a pool of its own; results in job order."""
    with Sweep(workers, ray_address, shared) as sweep:
        return sweep.map(fn, jobs, on_done)
