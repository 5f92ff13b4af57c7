"""Executors: where units run. ``local`` runs them in this process; ``ray`` on Ray actors (here or on a cluster).

Both yield :class:`UnitResult` as units finish; neither writes the run folder (the driver does). The driver
loads each unit's covers and hands them over, so no worker needs the driver's disk.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from wmbench.api import WmbenchError
from wmbench.suite import Suite
from wmbench.work import Shard, Unit, UnitResult

LoadCovers = Callable[[Shard], torch.Tensor]  # -> n 3 s s uint8


class LocalExecutor:
    """Units one after another in this process, with one session (methods stay loaded across shards)."""

    name = "local"

    def __init__(self, suite: Suite, device: torch.device, batch: int) -> None:
        from wmbench.session import Session

        self.session = Session(suite, device, batch)
        self.describe = f"local ({device})"

    def run(self, units: Iterable[Unit], load: LoadCovers) -> Iterator[UnitResult]:
        for u in units:
            yield self.session.run_unit(u, load(u.shard))

    def close(self) -> None:
        pass


class _Worker:
    """A Ray actor: one session on its node; torch threads = the node's cores ÷ workers."""

    def __init__(self, suite: Suite, device: str | None, batch: int, workers: int) -> None:
        from wmbench.runner import resolve_device
        from wmbench.session import Session

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, workers)))
        self.session = Session(suite, resolve_device(device), batch)

    def run(self, unit: Unit, covers: torch.Tensor) -> UnitResult:
        return self.session.run_unit(unit, covers)


class RayExecutor:
    """``workers`` actors on a Ray cluster (``address``) or a local instance started here (no address).

    Each actor owns one GPU when the cluster has enough; otherwise it asks for a share of the CPUs that leaves
    Ray one CPU for its own tasks (two 1-CPU actors on a 2-CPU instance can deadlock). A killed actor is
    restarted and its unit retried by Ray; a unit that still fails comes back as an error (rerun to resume).
    """

    name = "ray"

    def __init__(
        self, suite: Suite, device: str | None, batch: int, workers: int, address: str | None
    ) -> None:
        try:
            import ray
        except ImportError:
            raise WmbenchError(
                "--executor ray needs Ray: pip install -e '.[ray]' (or pip install 'ray[default]')"
            ) from None
        if workers < 1:
            raise WmbenchError(f"--workers must be >= 1, got {workers}")
        self.ray = ray
        if not ray.is_initialized():
            kw: dict[str, Any] = {
                "include_dashboard": False,
                "configure_logging": False,
                "log_to_driver": False,
            }
            try:
                ray.init(address=address, **kw) if address else ray.init(num_cpus=os.cpu_count() or 1, **kw)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise WmbenchError(f"--address {address!r}: could not join the Ray cluster: {e}") from None
        res = ray.cluster_resources()
        gpus, cpus = float(res.get("GPU", 0)), float(res.get("CPU", 1))
        use_gpu = gpus >= workers and device not in ("cpu",)
        opts: dict[str, Any] = {"max_restarts": 2, "max_task_retries": 2}
        if use_gpu:
            opts.update(num_gpus=1, num_cpus=min(1.0, max(0.1, (cpus - 1) / workers)))
        else:
            opts["num_cpus"] = min(1.0, max(0.1, (cpus - 1) / workers))
        actor = ray.remote(_Worker).options(**opts)
        dev = "cuda" if use_gpu else device
        self.actors = [actor.remote(suite, dev, batch, workers) for _ in range(workers)]
        where = address or "a local Ray instance"
        self.describe = f"ray ({workers} workers on {where}, {'1 GPU' if use_gpu else 'CPU'} each)"

    def run(self, units: Iterable[Unit], load: LoadCovers) -> Iterator[UnitResult]:
        """At most two units in flight per actor; an idle actor prefers a unit of the method it last ran."""
        from wmbench.session import error_record

        ray, queue = self.ray, deque(units)
        inflight: dict[Any, tuple[int, Unit]] = {}
        busy = [0] * len(self.actors)
        last: list[str | None] = [None] * len(self.actors)
        while queue or inflight:
            for a in range(len(self.actors)):
                while busy[a] < 2 and queue:
                    u = _take(queue, last[a])
                    ref = self.actors[a].run.remote(u, load(u.shard))
                    inflight[ref], last[a] = (a, u), u.method.label
                    busy[a] += 1
            (ref,), _ = ray.wait(list(inflight), num_returns=1)
            a, u = inflight.pop(ref)
            busy[a] -= 1
            try:
                yield ray.get(ref)
            except Exception as e:  # the actor died for good or the task kept failing: record, keep going
                yield UnitResult(u, error=error_record(u.method.label, "worker", None, None, e))

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)


def _take(queue: deque[Unit], method: str | None) -> Unit:
    """The first queued unit of ``method`` (its weights are loaded on that actor), else the first unit."""
    for i, u in enumerate(queue):
        if u.method.label == method:
            del queue[i]
            return u
    return queue.popleft()
