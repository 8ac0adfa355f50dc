"""Accelerator search for a fixed workload under an area budget: gradient, random and grid.

The objective is a whole-network figure of the ESCALATE-style design (:data:`METRICS`):
``latency`` (seconds), ``energy`` (joules) or ``edp`` (their product). All three searches
work on the legal grid of a :class:`~hwmodel.codesign.space.SearchSpace` and count their
*cost evaluations* -- one per design point whose cost the model computes (a relaxed
value-and-gradient counts as one, exactly like an exact evaluation; the area model is
cheap and not counted).

* :func:`gradient_search` -- Adam on the relaxed parameters (``relaxed=True`` cost model,
  log-objective plus a quadratic penalty on ``log(area / budget)`` that grows over the
  steps), from several random starts at once (``vmap``); then every floor/ceil corner of
  each relaxed optimum that fits the budget is evaluated exactly, and the best is polished
  by exact coordinate descent over neighbouring legal values. The result is always legal
  and within budget.
* :func:`random_search` -- uniformly drawn distinct legal points within the budget.
* :func:`grid_search` -- every legal point within the budget.

Example:
    >>> from hwmodel.hardware import load_hardware
    >>> from hwmodel.workload import model_layers, workload_from_layers
    >>> hw, options = load_hardware(None)
    >>> problem = make_problem(workload_from_layers(model_layers("resnet20")), hw, options)
    >>> result = gradient_search(problem, starts=2, steps=20, seed=0)
    >>> bool(result.area_mm2 <= problem.budget_mm2), result.evaluations > 0
    (True, True)
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hwmodel.codesign.area import AREA_TABLE, AreaTable, escalate_area_mm2
from hwmodel.codesign.space import (
    SearchSpace,
    all_indices,
    corner_indices,
    default_space,
    exact_values,
    hardware_at,
    nearest_indices,
    positions,
    relaxed_hardware,
    theta_for_positions,
    validate_space,
)
from hwmodel.cost import evaluate, network_totals
from hwmodel.hardware import Hardware, Options
from hwmodel.workload import Workload
from runkit import UsageError, check_choice, check_positive

METRICS = ("latency", "energy", "edp")


def network_metric(workload: Workload, hw: Hardware, options: Options, metric: str, *, relaxed: bool = False) -> jax.Array:
    """Latency (s), energy (J) or EDP (J*s) of the whole network on one ESCALATE-style design."""
    totals = network_totals(evaluate("escalate", workload, hw, options, relaxed=relaxed))
    seconds = totals["cycles"] / (hw.memory.clock_ghz * 1e9)
    joules = totals["energy_pj"] * 1e-12
    if metric == "latency":
        return seconds
    if metric == "energy":
        return joules
    if metric == "edp":
        return seconds * joules
    raise UsageError(f"metric: expected one of {list(METRICS)}, got {metric!r}")


@dataclasses.dataclass(frozen=True, eq=False)
class Problem:
    """A fixed workload, a base design (unsearched parameters), the space, the budget and the metric."""

    workload: Workload
    base: Hardware
    options: Options
    space: SearchSpace
    budget_mm2: float
    metric: str = "edp"
    area_table: AreaTable = AREA_TABLE

    def __post_init__(self):
        check_choice("metric", self.metric, METRICS)
        check_positive("budget_mm2", self.budget_mm2)
        validate_space(self.space, self.base)
        smallest = float(escalate_area_mm2(hardware_at(self.space, self.base, np.zeros(len(self.space.dims), np.int32)), self.area_table))
        if smallest > self.budget_mm2:
            raise UsageError(f"budget_mm2: expected at least the smallest legal design's area ({smallest:.4f} mm^2), got {self.budget_mm2:.4f}")


def make_problem(workload: Workload, base: Hardware, options: Options, *, space: SearchSpace | None = None,
                 budget_mm2: float | None = None, metric: str = "edp", area_table: AreaTable = AREA_TABLE) -> Problem:
    """A :class:`Problem`; the budget defaults to the area of ``base`` (an iso-area search)."""
    budget = float(escalate_area_mm2(base, area_table)) if budget_mm2 is None else float(budget_mm2)
    return Problem(workload, base, options, space or default_space(), budget, metric, area_table)


class SearchResult(NamedTuple):
    """Outcome of one search: the chosen legal design and what it cost to find it."""

    method: str
    indices: np.ndarray          # int32[D] into the space's legal values
    values: dict[str, float]     # "section.key" -> legal value
    metric_value: float          # exact metric of the chosen design
    area_mm2: float
    evaluations: int             # cost evaluations spent
    trace: list[float]           # best exact metric after each batch of exact evaluations

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "indices": [int(i) for i in self.indices], "values": self.values,
                "metric_value": self.metric_value, "area_mm2": self.area_mm2, "evaluations": self.evaluations}


# ----------------------------------------------------------------------------- exact evaluation

_CHUNK = 4096


def _exact_fn(problem: Problem):
    def one(indices):
        hw = hardware_at(problem.space, problem.base, indices)
        return network_metric(problem.workload, hw, problem.options, problem.metric), escalate_area_mm2(hw, problem.area_table)

    return jax.jit(jax.vmap(one))


def _area_fn(problem: Problem):
    return jax.jit(jax.vmap(lambda i: escalate_area_mm2(hardware_at(problem.space, problem.base, i), problem.area_table)))


def _batched(fn, indices: np.ndarray):
    """Apply a vmapped function in fixed-size chunks (one compilation, bounded memory)."""
    outs = []
    for start in range(0, len(indices), _CHUNK):
        chunk = indices[start : start + _CHUNK]
        pad = _CHUNK - len(chunk) if len(indices) > _CHUNK else 0
        padded = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)]) if pad else chunk
        out = jax.device_get(fn(jnp.asarray(padded)))
        outs.append(jax.tree.map(lambda x: np.asarray(x)[: len(chunk)], out))
    return jax.tree.map(lambda *xs: np.concatenate(xs), *outs)


def evaluate_indices(problem: Problem, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact ``(metric, area_mm2)`` of every legal design in ``indices`` (``[G, D]``)."""
    return _batched(_exact_fn(problem), np.asarray(indices, np.int32).reshape(-1, len(problem.space.dims)))


def feasible_grid(problem: Problem) -> np.ndarray:
    """Indices of every legal design whose area is within the budget (no cost evaluation)."""
    grid = all_indices(problem.space)
    area = _batched(_area_fn(problem), grid)
    return grid[area <= problem.budget_mm2]


class _Evaluator:
    """Exact evaluations with a memo, so that revisiting a point costs nothing twice."""

    def __init__(self, problem: Problem):
        self.problem = problem
        self.fn = _exact_fn(problem)
        self.area = _area_fn(problem)
        self.memo: dict[tuple[int, ...], float] = {}
        self.best: tuple[float, np.ndarray | None] = (np.inf, None)
        self.trace: list[float] = []

    def fits(self, indices: np.ndarray) -> np.ndarray:
        return np.asarray(self.area(jnp.asarray(indices, jnp.int32))) <= self.problem.budget_mm2

    def __call__(self, indices: np.ndarray) -> np.ndarray:
        indices = np.asarray(indices, np.int32).reshape(-1, len(self.problem.space.dims))
        fresh = [i for i, row in enumerate(indices) if tuple(row) not in self.memo]
        unique = {tuple(indices[i]) for i in fresh}
        if unique:
            rows = np.asarray(sorted(unique), np.int32)
            values, _ = _batched(self.fn, rows)
            for row, value in zip(rows, values):
                self.memo[tuple(row)] = float(value)
                if value < self.best[0]:
                    self.best = (float(value), row.copy())
            self.trace.append(self.best[0])
        return np.asarray([self.memo[tuple(row)] for row in indices])


def _result(method: str, problem: Problem, ev: _Evaluator, trace=None) -> SearchResult:
    value, indices = ev.best
    hw = hardware_at(problem.space, problem.base, indices)
    return SearchResult(method, indices, exact_values(problem.space, indices), float(value),
                        float(escalate_area_mm2(hw, problem.area_table)), len(ev.memo), list(trace if trace is not None else ev.trace))


# ----------------------------------------------------------------------------- searches


def grid_search(problem: Problem) -> SearchResult:
    """Exhaustive search over every legal design within the budget."""
    feasible = feasible_grid(problem)
    values, _ = evaluate_indices(problem, feasible)
    best = int(np.argmin(values))
    indices = feasible[best]
    hw = hardware_at(problem.space, problem.base, indices)
    return SearchResult("grid", indices, exact_values(problem.space, indices), float(values[best]),
                        float(escalate_area_mm2(hw, problem.area_table)), int(len(feasible)), [float(values.min())])


def random_search(problem: Problem, evaluations: int, *, seed: int = 0, feasible: np.ndarray | None = None) -> SearchResult:
    """Best of ``evaluations`` distinct legal designs drawn uniformly from those within the budget."""
    check_positive("evaluations", evaluations)
    feasible = feasible_grid(problem) if feasible is None else feasible
    rng = np.random.default_rng(seed)
    chosen = feasible[rng.choice(len(feasible), size=min(evaluations, len(feasible)), replace=False)]
    values, _ = evaluate_indices(problem, chosen)
    best = int(np.argmin(values))
    indices = chosen[best]
    hw = hardware_at(problem.space, problem.base, indices)
    return SearchResult("random", indices, exact_values(problem.space, indices), float(values[best]),
                        float(escalate_area_mm2(hw, problem.area_table)), int(len(chosen)),
                        [float(v) for v in np.minimum.accumulate(values)])


@dataclasses.dataclass(frozen=True)
class GradientConfig:
    """Settings of :func:`gradient_search`.

    Attributes:
      starts: random starting points optimised together.
      steps: Adam steps (each costs ``starts`` relaxed evaluations).
      learning_rate: Adam step size on the unconstrained parameters.
      penalty_start, penalty_end: weight of ``relu(log(area / budget))^2``, grown geometrically.
      polish_rounds: rounds of exact coordinate descent after rounding (0: none).
    """

    starts: int = 8
    steps: int = 100
    learning_rate: float = 0.15
    penalty_start: float = 10.0
    penalty_end: float = 1000.0
    polish_rounds: int = 4

    def __post_init__(self):
        for name in ("starts", "steps", "learning_rate", "penalty_start", "penalty_end"):
            check_positive(name, getattr(self, name))
        check_positive("polish_rounds", self.polish_rounds, allow_zero=True)


def relaxed_objective(problem: Problem):
    """``theta, penalty -> log(metric) + penalty * relu(log(area / budget))^2`` on the relaxed model."""
    log_budget = float(np.log(problem.budget_mm2))

    def objective(theta, penalty):
        hw = relaxed_hardware(problem.space, problem.base, theta)
        value = network_metric(problem.workload, hw, problem.options, problem.metric, relaxed=True)
        excess = jax.nn.relu(jnp.log(escalate_area_mm2(hw, problem.area_table)) - log_budget)
        return jnp.log(value) + penalty * excess**2

    return objective


def round_to_legal(problem: Problem, t, *, area_fn=None) -> np.ndarray:
    """Legal designs within the budget near relaxed positions ``t`` (``float[D]``): ``int32[K, D]``.

    Every floor/ceil corner of ``t`` whose area fits; if none fits, the nearest legal point
    with parameters stepped down (the one that saves most area first) until it fits.
    """
    area_fn = area_fn or _area_fn(problem)

    def fits(rows):
        return np.asarray(area_fn(jnp.asarray(rows, jnp.int32))) <= problem.budget_mm2

    corners = corner_indices(problem.space, t)
    inside = corners[fits(corners)]
    if len(inside):
        return inside
    indices = nearest_indices(problem.space, t)
    while not fits(indices[None])[0]:
        options = []
        for j in range(len(indices)):
            if indices[j] > 0:
                lower = indices.copy()
                lower[j] -= 1
                options.append(lower)
        areas = np.asarray(area_fn(jnp.asarray(np.stack(options), jnp.int32)))
        indices = options[int(np.argmin(areas))]
    return indices[None]


def _polish(problem: Problem, ev: _Evaluator, rounds: int) -> None:
    top = np.asarray(problem.space.sizes) - 1
    for _ in range(rounds):
        current = ev.best[1]
        neighbours = []
        for j in range(len(current)):
            for step in (-1, 1):
                n = current.copy()
                n[j] += step
                if 0 <= n[j] <= top[j]:
                    neighbours.append(n)
        neighbours = np.stack(neighbours)
        neighbours = neighbours[ev.fits(neighbours)]
        if len(neighbours) == 0:
            return
        before = ev.best[0]
        ev(neighbours)
        if not ev.best[0] < before:
            return


def gradient_search(problem: Problem, config: GradientConfig | None = None, *, seed: int = 0, **overrides) -> SearchResult:
    """Relaxed gradient descent, then exact rounding and polishing (see the module docstring).

    Args:
      problem: what to search.
      config: settings (defaults: :class:`GradientConfig`); keyword ``overrides`` replace fields.
      seed: draws the starting points.

    Returns:
      A :class:`SearchResult`; ``evaluations = starts * steps`` relaxed evaluations plus the
      distinct exact evaluations of rounding and polishing.
    """
    config = dataclasses.replace(config or GradientConfig(), **overrides)
    space = problem.space
    rng = np.random.default_rng(seed)
    start_t = rng.uniform(0.0, 1.0, size=(config.starts, len(space.dims))) * (np.asarray(space.sizes) - 1)
    theta0 = jnp.asarray(np.stack([theta_for_positions(space, t) for t in start_t]))
    objective = relaxed_objective(problem)
    tx = optax.adam(config.learning_rate)
    ratio = (config.penalty_end / config.penalty_start) ** (1.0 / max(config.steps - 1, 1))
    penalties = jnp.asarray(config.penalty_start * ratio ** np.arange(config.steps), jnp.float32)
    grad = jax.vmap(jax.value_and_grad(objective), in_axes=(0, None))

    @jax.jit
    def run(theta):
        def step(carry, penalty):
            theta, state = carry
            loss, g = grad(theta, penalty)
            # optax's Adam bias correction raises a python float to an int32 count, which strict
            # dtype promotion rejects; standard promotion for this call only.
            with jax.numpy_dtype_promotion("standard"):
                updates, state = tx.update(g, state, theta)
            return (optax.apply_updates(theta, updates), state), loss

        (theta, _), losses = jax.lax.scan(step, (theta, tx.init(theta)), penalties)
        return theta, losses

    theta, _ = run(theta0)
    final_t = np.asarray(jax.vmap(lambda th: positions(space, th))(theta))
    ev = _Evaluator(problem)
    ev(np.concatenate([round_to_legal(problem, t, area_fn=ev.area) for t in final_t]))
    _polish(problem, ev, config.polish_rounds)
    result = _result("gradient", problem, ev)
    return result._replace(evaluations=result.evaluations + config.starts * config.steps)
