"""Per-iteration timelines: tasks on resources, dependencies across iterations, max-plus schedule.

A system's iteration is a static list of :class:`Task` s. Each task runs on one
resource (a GPU, the host CPU, a link direction, the flash of a CSD, ...), which
executes one task at a time in list order, and may depend on tasks of the same
batch (lag 0) or of earlier batches (lag ``k``: batch ``b`` waits for batch
``b - k``). A task with ``lead = k`` is issued ``k`` batches ahead (lookahead
prefetch). Scheduling is as-soon-as-possible:

.. math::
    s_{b,t} = \\max\\big(f_{\\text{prev task on the resource}},\\ \\max_{(d, k) \\in deps(t)} f_{b-k,d}\\big),
    \\qquad f_{b,t} = s_{b,t} + \\tau_t

Only ``max`` and ``+`` of durations appear, so every start and finish is a
non-decreasing function of every duration (faster components never slow an
iteration) and the schedule is pure jnp: it ``vmap`` s over configurations and
differentiates. Simulating a few batches and differencing the finish times of the
last ones gives the steady-state iteration time.

Example:
    >>> import jax.numpy as jnp
    >>> tasks = (Task("load", "io"), Task("compute", "cpu", deps=(("load", 0),)))
    >>> s = schedule(tasks, {"load": jnp.float32(1.0), "compute": jnp.float32(2.0)}, num_batches=6)
    >>> float(steady_state_period(s))   # load of b+1 overlaps compute of b
    2.0
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Task(NamedTuple):
    """One step of an iteration.

    Attributes:
      name: unique within the iteration.
      resource: what it occupies (one task at a time per resource).
      deps: ``(task name, lag)`` pairs; lag ``0`` is the same batch, ``k`` the batch ``k`` earlier.
      lead: the task of batch ``b`` is issued with the other tasks of batch ``b - lead``.
    """

    name: str
    resource: str
    deps: tuple[tuple[str, int], ...] = ()
    lead: int = 0


class Schedule(NamedTuple):
    """Start and finish time (s) of every task of every simulated batch: ``(num_batches, num_tasks)``."""

    start: jax.Array
    finish: jax.Array


def processing_order(tasks: Sequence[Task], num_batches: int) -> list[tuple[int, int]]:
    """``(batch, task index)`` pairs in the order resources receive them; validates the task graph."""
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"tasks: expected unique names, got {names}")
    max_lead = max(t.lead for t in tasks)
    order, done = [], set()
    for it in range(num_batches + max_lead):
        for i, task in enumerate(tasks):
            b = it - max_lead + task.lead
            if not 0 <= b < num_batches:
                continue
            for dep, lag in task.deps:
                if dep not in names:
                    raise ValueError(f"task {task.name!r}: depends on unknown task {dep!r}")
                if b - lag >= 0 and (b - lag, names.index(dep)) not in done:
                    raise ValueError(
                        f"task {task.name!r}: dependency ({dep!r}, lag {lag}) is issued after it; "
                        "order the list topologically or raise the lag"
                    )
            order.append((b, i))
            done.add((b, i))
    return order


def schedule(tasks: Sequence[Task], durations: Mapping[str, jax.Array], *, num_batches: int = 8) -> Schedule:
    """As-soon-as-possible schedule of ``num_batches`` iterations (pure jnp in the durations)."""
    names = [t.name for t in tasks]
    missing = [n for n in names if n not in durations]
    if missing:
        raise ValueError(f"durations: expected an entry for every task, missing {missing}")
    free: dict[str, jax.Array] = {}
    start: dict[tuple[int, int], jax.Array] = {}
    finish: dict[tuple[int, int], jax.Array] = {}
    zero = jnp.zeros((), jnp.float32)
    for b, i in processing_order(tasks, num_batches):
        task = tasks[i]
        t0 = free.get(task.resource, zero)
        for dep, lag in task.deps:
            if b - lag >= 0:
                t0 = jnp.maximum(t0, finish[(b - lag, names.index(dep))])
        start[(b, i)] = t0
        finish[(b, i)] = t0 + jnp.asarray(durations[task.name], jnp.float32)
        free[task.resource] = finish[(b, i)]
    grid = lambda d: jnp.stack([jnp.stack([d[(b, i)] for i in range(len(tasks))]) for b in range(num_batches)])  # noqa: E731
    return Schedule(grid(start), grid(finish))


def steady_state_period(sched: Schedule, *, window: int = 3) -> jax.Array:
    """Mean time between the completions of the last ``window + 1`` batches."""
    ends = jnp.max(sched.finish, axis=-1)
    window = min(window, ends.shape[-1] - 1)
    return (ends[..., -1] - ends[..., -1 - window]) / window


def dependency_violations(tasks: Sequence[Task], sched: Schedule, *, tol: float = 1e-9) -> list[str]:
    """Every broken dependency or resource overlap in a schedule (empty when it is valid)."""
    names = [t.name for t in tasks]
    start, finish = np.asarray(sched.start, np.float64), np.asarray(sched.finish, np.float64)
    problems = []
    for b in range(start.shape[0]):
        for i, task in enumerate(tasks):
            for dep, lag in task.deps:
                if b - lag >= 0 and start[b, i] < finish[b - lag, names.index(dep)] - tol:
                    problems.append(f"{task.name}[{b}] starts before {dep}[{b - lag}] ends")
    for resource in {t.resource for t in tasks}:
        spans = sorted(
            (start[b, i], finish[b, i], f"{t.name}[{b}]")
            for b in range(start.shape[0])
            for i, t in enumerate(tasks)
            if t.resource == resource
        )
        for (s0, f0, n0), (s1, _, n1) in zip(spans, spans[1:]):
            if s1 < f0 - tol and f0 - s0 > tol:
                problems.append(f"{n0} and {n1} overlap on {resource}")
    return problems
