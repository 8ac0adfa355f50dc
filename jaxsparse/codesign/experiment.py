"""The CIFAR co-design experiment: hardware-aware compression vs the uniform PENNI rule, and the joint loop.

Starting point (shared by every method): a pretrained CIFAR ResNet, decomposed into ``d``
basis kernels per 3x3 conv (PENNI). Both methods then train with the same code
(:func:`jaxsparse.penni.hwaware.hwaware_fit`: SGD on the model under the hard PENNI masks, with
straight-through gates) for the same ``hwaware_steps + finetune_steps`` steps, and are
pruned with their thresholds at the end:

* **uniform** (PENNI's rule, the baseline): one threshold ``s`` for every layer, fixed
  (``|c| < s * std(c)``), swept over ``s``;
* **hardware-aware**: per-layer thresholds ``s_l`` (and, with ``channel_gates``, channel
  thresholds ``g_l`` whose expected live output channels enter the cost) learnt in the
  first ``hwaware_steps`` steps against
  ``task loss + lambda * latency(densities, live) / latency_0`` on the given design, then
  frozen for ``finetune_steps`` steps; swept over ``lambda``;
* **joint** (alternating): search the hardware for the hardware-aware model's workload
  (:func:`~hwmodel.codesign.search.gradient_search`, iso-area), compress again against
  the new design; compared with compression alone (default design) and hardware alone
  (the uniform ``s = 1`` model on hardware searched for it).

Every finished model is costed exactly (no relaxation) from its own description (dead
output channels included) on the ESCALATE-style design with deployed bit widths
(:data:`~hwmodel.codesign.costfn.DEPLOY_BITS`), and evaluated on a fixed test subset.

Equal accuracy is read off the uniform Pareto front, interpolated linearly at each
hardware-aware point's top-1 (:func:`compare_interpolated`); the nearest measured uniform
point within 0.3 points of top-1 is reported beside it (:func:`compare_at_equal_top1`).

``<out>`` is a run folder (:func:`runkit.open_run`: ``settings.json`` records the settings,
a rerun with others is refused, naming them). Each finished point is stored at once in
``<out>/results.json`` (atomically); training runs checkpoint every ``checkpoint_every``
steps in nested run folders ``<out>/checkpoints/<point>``; a rerun with the same settings
skips finished points and resumes the interrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from hwmodel.codesign.area import escalate_area_mm2
from hwmodel.codesign.costfn import deployment_layers, layer_latency_share, make_cost_fn
from hwmodel.codesign.search import GradientConfig, gradient_search, make_problem, network_metric
from hwmodel.codesign.space import legal_hardware
from hwmodel.hardware import Hardware, Options, hardware_to_dict, load_hardware
from hwmodel.workload import workload_from_layers
from jaxsparse.penni import hwaware
from jaxsparse.data import load_split_subset
from jaxsparse.models import PRETRAINED_NAMES, evaluate_accuracy, load_pretrained
from jaxsparse.penni.count import describe_layers
from jaxsparse.penni.layers import decompose_model
from jaxsparse.userfiles import resolve_data
from runkit import UsageError, atomic_write_json, check_choice, check_positive, open_run
from runkit.figures import save_figure, subplots
from runkit.runs import as_json


#: Costs the hardware-aware loss and the search can minimise.
METRICS = ("latency", "energy", "edp")


@dataclasses.dataclass(frozen=True)
class CodesignConfig:
    """Settings of :func:`run_codesign` (defaults: the full run; :func:`quick_config` a reduced one).

    Attributes:
      model: pretrained CIFAR ResNet name.
      num_basis: ``d`` basis kernels per 3x3 conv.
      uniform_thresholds: PENNI ``s`` values of the baseline sweep.
      cost_weights: ``lambda`` values of the hardware-aware sweep.
      hwaware_steps: threshold-learning steps (the baseline gets them as extra fine-tuning).
      finetune_steps: fine-tuning steps after pruning.
      batch_size, learning_rate: SGD settings of both phases.
      train_subset: training images used (0: all 50,000).
      test_subset: test images for top-1 (0: all 10,000).
      joint_rounds: hardware-search / re-compression rounds of the joint loop (0: none).
      joint_cost_weight: ``lambda`` of the joint loop (None: the middle of ``cost_weights``).
      metric: cost the hardware-aware loss and the search minimise (``latency``, ``energy``, ``edp``).
      channel_gates: the hardware-aware method also learns per-layer channel thresholds and
        costs the expected live output channels (what the design charges; see
        :mod:`hwmodel.codesign.costfn`); False: coefficient thresholds only.
      seed: data order and augmentation.
    """

    model: str = "resnet20"
    num_basis: int = 5
    uniform_thresholds: tuple[float, ...] = (1.0, 1.4, 0.6, 1.8)
    cost_weights: tuple[float, ...] = (1.0, 2.0, 0.5)
    hwaware_steps: int = 150
    finetune_steps: int = 250
    batch_size: int = 64
    learning_rate: float = 0.01
    threshold_learning_rate: float = 0.05
    train_subset: int = 0
    test_subset: int = 0
    joint_rounds: int = 0
    joint_cost_weight: float | None = None
    metric: str = "latency"
    channel_gates: bool = True
    seed: int = 0
    checkpoint_every: int = 100

    def __post_init__(self):
        if self.model not in PRETRAINED_NAMES:
            raise UsageError(f"model: expected one of {list(PRETRAINED_NAMES)} (pretrained weights needed), got {self.model!r}")
        for name in ("num_basis", "batch_size", "learning_rate", "threshold_learning_rate", "checkpoint_every"):
            check_positive(name, getattr(self, name))
        for name in ("hwaware_steps", "finetune_steps", "train_subset", "test_subset", "joint_rounds"):
            check_positive(name, getattr(self, name), allow_zero=True)
        if not self.uniform_thresholds or not self.cost_weights:
            raise UsageError("uniform_thresholds / cost_weights: expected at least one value each")
        for name in ("uniform_thresholds", "cost_weights"):
            for value in getattr(self, name):
                check_positive(name, value)
        if self.joint_cost_weight is not None:
            check_positive("joint_cost_weight", self.joint_cost_weight)
        check_positive("seed", self.seed, allow_zero=True)
        check_choice("metric", self.metric, METRICS)


def quick_config(**overrides) -> CodesignConfig:
    """A reduced run (minutes on a few CPU cores) that still compares both methods."""
    base = dict(uniform_thresholds=(0.6, 1.0, 1.4, 1.8), cost_weights=(0.5, 2.0), hwaware_steps=60, finetune_steps=40,
                train_subset=8192, test_subset=2000, joint_rounds=1, checkpoint_every=20)
    base.update(overrides)
    return CodesignConfig(**base)


#: Named configurations of ``python -m jaxsparse codesign --preset NAME`` (and the benchmark).
PRESETS = {"full": CodesignConfig(), "quick": quick_config()}


# ----------------------------------------------------------------------------- pieces


class Data:
    """uint8 training/test images (subsets as configured) and a probe batch for activation densities.

    Args:
      config: the subsets (``train_subset``/``test_subset``, 0: all) and the ``seed`` of their choice.
      path: a CIFAR-10 folder (see :func:`jaxsparse.data.load_split`), e.g. from
        :func:`jaxsparse.userfiles.resolve_data`.
    """

    def __init__(self, config: CodesignConfig, path: str | os.PathLike, progress: bool = True):
        kwargs = dict(seed=config.seed, progress=progress)
        train_x, train_y = load_split_subset(path, "train", config.train_subset or None, **kwargs)
        test_x, test_y = load_split_subset(path, "test", config.test_subset or None, **kwargs)
        self.train_x, self.train_y = train_x, np.asarray(train_y, np.int32)
        self.test_x, self.test_y = test_x, np.asarray(test_y, np.int32)
        self.probe = np.asarray(test_x[:64])


def start_model(config: CodesignConfig, shared_root=None) -> nnx.Module:
    """The pretrained model with every 3x3 conv decomposed (deterministic)."""
    model = load_pretrained(config.model, shared_root=shared_root)
    decompose_model(model, config.num_basis)
    return model


def describe(model: nnx.Module, data: Data) -> list[dict]:
    from jaxsparse.data import normalize

    return describe_layers(model, jnp.asarray(normalize(data.probe)))


def exact_cost(layers: list[dict], hw: Hardware, options: Options) -> dict[str, float]:
    """Exact latency (ms), energy (uJ) and EDP of a described model on one design."""
    workload = workload_from_layers(deployment_layers(layers))
    latency = float(network_metric(workload, hw, options, "latency"))
    energy = float(network_metric(workload, hw, options, "energy"))
    return {"latency_ms": latency * 1e3, "energy_uj": energy * 1e6, "edp": latency * energy}


def _point(model, data: Data, hw: Hardware, options: Options, **extra) -> dict[str, Any]:
    layers = describe(model, data)
    top1 = float(evaluate_accuracy(model, data.test_x, data.test_y).accuracy)
    share = np.asarray(layer_latency_share(layers, hw, options))
    return {**extra, "top1": top1, **exact_cost(layers, hw, options),
            "layers": [{"name": r["name"], "basis": r["basis"], "coef_density": r["coef_density"],
                        "live_out_fraction": r["live_out_fraction"], "latency_share": float(s)}
                       for r, s in zip(layers, share)],
            "description": layers}


def _train(config: CodesignConfig, data: Data, hw: Hardware, options: Options, ckpt: Path, progress: bool, tag: str, shared_root,
           *, cost_weight: float, initial_threshold: float, threshold_steps: int, channel_gates: bool = False):
    model = start_model(config, shared_root)
    records = describe(model, data)
    cost_fn = make_cost_fn(records, hw, options, metric=config.metric)
    result = hwaware.hwaware_fit(
        model, data.train_x, data.train_y, cost_fn,
        hwaware.HwAwareConfig(cost_weight=float(cost_weight), steps=config.hwaware_steps + config.finetune_steps,
                              threshold_steps=threshold_steps, initial_threshold=float(initial_threshold),
                              batch_size=config.batch_size, learning_rate=config.learning_rate,
                              threshold_learning_rate=config.threshold_learning_rate,
                              channel_gates=channel_gates, seed=config.seed, checkpoint_every=config.checkpoint_every),
        records=records, checkpoint=ckpt / tag, progress=progress, description=tag)
    hwaware.prune_with_thresholds(model, result.thresholds, result.channel_thresholds or None)
    return model, result


def uniform_point(config: CodesignConfig, data: Data, s: float, hw: Hardware, options: Options, ckpt: Path, progress: bool, shared_root=None) -> dict:
    model, _ = _train(config, data, hw, options, ckpt, progress, f"uniform-{s:g}", shared_root,
                      cost_weight=0.0, initial_threshold=s, threshold_steps=0)
    return _point(model, data, hw, options, method="uniform", threshold=float(s))


def hwaware_point(config: CodesignConfig, data: Data, lam: float, hw: Hardware, options: Options, ckpt: Path, progress: bool,
                  tag: str, shared_root=None) -> dict:
    model, result = _train(config, data, hw, options, ckpt, progress, tag, shared_root,
                           cost_weight=lam, initial_threshold=1.0, threshold_steps=config.hwaware_steps,
                           channel_gates=config.channel_gates)
    return _point(model, data, hw, options, method="hwaware", cost_weight=float(lam), thresholds=result.thresholds,
                  channel_thresholds=result.channel_thresholds, hwaware_history=result.history[-1:] if result.history else [])


def search_hardware(layers: list[dict], hw: Hardware, options: Options, metric: str, seed: int,
                    budget_mm2: float | None = None) -> tuple[Hardware, dict]:
    """Gradient search of the design for one described model (budget: the area of ``hw`` unless given)."""
    problem = make_problem(workload_from_layers(deployment_layers(layers)), hw, options, metric=metric, budget_mm2=budget_mm2)
    found = gradient_search(problem, GradientConfig(), seed=seed)
    return legal_hardware(problem.space, hw, found.indices), found.to_dict() | {"budget_mm2": problem.budget_mm2}


# ----------------------------------------------------------------------------- comparison


def pareto_front(points: list[dict]) -> list[dict]:
    """Points not dominated in (higher top-1, lower latency), sorted by latency."""
    front = [p for p in points if not any(
        (q["top1"] >= p["top1"] and q["latency_ms"] <= p["latency_ms"]) and (q["top1"] > p["top1"] or q["latency_ms"] < p["latency_ms"])
        for q in points)]
    return sorted(front, key=lambda p: p["latency_ms"])


def compare_at_equal_top1(uniform: list[dict], aware: list[dict], tolerance: float = 0.003) -> dict[str, Any]:
    """Best latency reduction of a hardware-aware point over a measured uniform point of equal top-1 (within ``tolerance``).

    For each hardware-aware point ``h``, the reference is the lowest-latency uniform point
    with ``|top1 - top1_h| <= tolerance`` (a much more accurate reference would credit the
    hardware-aware point with accuracy it does not have); the reduction is
    ``1 - latency_h / latency_ref``. Returns the best such pair (``latency_reduction``,
    ``top1_gap = top1_ref - top1_h``), or ``None`` values when no pair is that close.
    """
    best = {"latency_reduction": None, "top1_gap": None, "hwaware": None, "uniform": None}
    for h in aware:
        refs = [u for u in uniform if abs(u["top1"] - h["top1"]) <= tolerance + 1e-12]
        if not refs:
            continue
        ref = min(refs, key=lambda u: u["latency_ms"])
        reduction = 1.0 - h["latency_ms"] / ref["latency_ms"]
        if best["latency_reduction"] is None or reduction > best["latency_reduction"]:
            best = {"latency_reduction": reduction, "top1_gap": ref["top1"] - h["top1"],
                    "hwaware": {k: h[k] for k in ("cost_weight", "top1", "latency_ms")},
                    "uniform": {k: ref[k] for k in ("threshold", "top1", "latency_ms")}}
    return best


def interpolated_uniform_latency(uniform: list[dict], top1: float) -> float | None:
    """Latency of the uniform Pareto front at ``top1``, linear between its two neighbouring points.

    None when ``top1`` lies outside the front's range of top-1 (no extrapolation).
    """
    front = sorted(pareto_front(uniform), key=lambda p: p["top1"])
    if not front or not front[0]["top1"] <= top1 <= front[-1]["top1"]:
        return None
    for lo, hi in zip(front, front[1:]):
        if lo["top1"] <= top1 <= hi["top1"]:
            t = (top1 - lo["top1"]) / (hi["top1"] - lo["top1"]) if hi["top1"] > lo["top1"] else 0.0
            return lo["latency_ms"] + t * (hi["latency_ms"] - lo["latency_ms"])
    return front[-1]["latency_ms"]


def compare_interpolated(uniform: list[dict], aware: list[dict]) -> dict[str, Any]:
    """Per hardware-aware point: latency reduction against the uniform front interpolated at the same top-1."""
    rows = []
    for h in aware:
        ref = interpolated_uniform_latency(uniform, h["top1"])
        rows.append({"cost_weight": h.get("cost_weight"), "top1": h["top1"], "latency_ms": h["latency_ms"],
                     "uniform_latency_ms_at_same_top1": ref,
                     "latency_reduction": None if ref is None else 1.0 - h["latency_ms"] / ref})
    valid = [r["latency_reduction"] for r in rows if r["latency_reduction"] is not None]
    return {"points": rows, "best_latency_reduction": max(valid) if valid else None}


def job_order(config: CodesignConfig) -> list[tuple[str, float]]:
    """Training jobs, the two methods interleaved so that a run cut short still compares both."""
    uniform = [("uniform", s) for s in config.uniform_thresholds]
    aware = [("hwaware", lam) for lam in config.cost_weights]
    jobs = []
    for i in range(max(len(uniform), len(aware))):
        jobs += uniform[i:i + 1] + aware[i:i + 1]
    return jobs


# ----------------------------------------------------------------------------- driver


def _settings(config: CodesignConfig, hw: Hardware, options: Options) -> dict:
    return as_json({"config": dataclasses.asdict(config), "hardware": hardware_to_dict(hw, options)})


def run_codesign(
    config: CodesignConfig,
    out_dir: str | Path,
    *,
    hardware: str | None = None,
    data: str | os.PathLike | None = None,
    shared_root=None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    report_only: bool = False,
) -> dict:
    """Run (or resume) the whole experiment; write ``results.json`` and the plots under ``out_dir``.

    Every invocation's wall time, process CPU time and load averages are kept under
    ``"runs"`` (CPU time is the honest budget figure on a shared machine).

    Args:
      data: the CIFAR-10 folder (default: ``$JAXSPARSE_CIFAR10``, else ``<shared>/data/cifar10-jpeg``;
        :func:`jaxsparse.userfiles.resolve_data`).
      shared_root: the shared folder holding the data and the pretrained weights (default:
        :func:`runkit.find_shared_root`).
      report_only: train nothing; summarise and plot the points already finished (a run cut short).

    Returns:
      The results dict (points, fronts, comparison, joint loop, timings).
    """
    hw, options = load_hardware(hardware)
    settings = _settings(config, hw, options)
    run = open_run(out_dir, settings, option="out", hint="use another folder or delete it")
    out, ckpt = run.path, run.checkpoints
    path = out / "results.json"
    state: dict[str, Any] = {"settings": settings, "points": {}, "joint": {}}
    if path.is_file():
        state = json.loads(path.read_text())
        log(f"resuming: {len(state['points'])} points already done ({path})")

    started, cpu_started = time.time(), time.process_time()
    runs = state.setdefault("runs", [])
    this_run = {"started_unix": round(started), "report_only": bool(report_only)}
    runs.append(this_run)

    def save():
        this_run.update(wall_seconds=round(time.time() - started, 1), cpu_seconds=round(time.process_time() - cpu_started, 1),
                        loadavg=[round(v, 2) for v in os.getloadavg()], cpu_count=os.cpu_count())
        state["resources"] = {"wall_seconds": round(sum(r["wall_seconds"] for r in runs if "wall_seconds" in r), 1),
                              "cpu_seconds": round(sum(r["cpu_seconds"] for r in runs if "cpu_seconds" in r), 1)}
        atomic_write_json(path, state)

    if report_only:
        if not state["points"]:
            raise UsageError(f"out: no finished points to report in {str(path)!r}")
        state["summary"] = summarize(state)
        save()
        plot_all(state, out, log)
        return state

    data = Data(config, resolve_data(data, shared_root), progress)
    jobs = job_order(config)
    for i, (method, value) in enumerate(jobs):
        key = f"{method}-{value:g}"
        if key in state["points"]:
            continue
        t0 = time.time()
        if method == "uniform":
            point = uniform_point(config, data, value, hw, options, ckpt, progress, shared_root)
        else:
            point = hwaware_point(config, data, value, hw, options, ckpt, progress, key, shared_root)
        point["seconds"] = round(time.time() - t0, 1)
        point["loadavg"] = [round(v, 2) for v in os.getloadavg()]
        state["points"][key] = point
        save()
        log(f"[{i + 1}/{len(jobs)}] {key}: top-1 {100 * point['top1']:.2f}%  latency {point['latency_ms']:.4f} ms  "
            f"energy {point['energy_uj']:.2f} uJ  ({point['seconds']:.0f} s)")

    if config.joint_rounds > 0:
        run_joint(config, data, hw, options, state, save, ckpt, progress, shared_root, log)

    state["summary"] = summarize(state)
    state["seconds_total_this_run"] = round(time.time() - started, 1)
    save()
    plot_all(state, out, log)
    return state


def run_joint(config, data, hw, options, state, save, ckpt, progress, shared_root, log) -> None:
    """Alternate hardware search and hardware-aware compression; compare with each alone."""
    joint = state["joint"]
    lam = config.joint_cost_weight if config.joint_cost_weight is not None else sorted(config.cost_weights)[len(config.cost_weights) // 2]
    points = state["points"]
    compression_only = points[f"hwaware-{lam:g}"]
    if "hardware_only" not in joint:
        uniform_ref = min((p for p in points.values() if p["method"] == "uniform"), key=lambda p: abs(p["threshold"] - 1.0))
        found_hw, found = search_hardware(uniform_ref["description"], hw, options, config.metric, config.seed)
        cost = exact_cost(uniform_ref["description"], found_hw, options)
        joint["hardware_only"] = {"threshold": uniform_ref["threshold"], "top1": uniform_ref["top1"], **cost, "search": found,
                                  "hardware": hardware_to_dict(found_hw)}
        save()
        log(f"hardware only (uniform s={uniform_ref['threshold']:g}, searched design): latency {cost['latency_ms']:.4f} ms")
    current_hw = hw
    current = compression_only
    for r in range(config.joint_rounds):
        key = f"round{r + 1}"
        if key not in joint:
            found_hw, found = search_hardware(current["description"], current_hw, options, config.metric, config.seed + r,
                                              budget_mm2=float(escalate_area_mm2(hw)))
            point = hwaware_point(config, data, lam, found_hw, options, ckpt, progress, f"joint{r + 1}", shared_root)
            point["search"] = found
            point["hardware"] = hardware_to_dict(found_hw)
            joint[key] = point
            save()
            log(f"joint round {r + 1}: top-1 {100 * point['top1']:.2f}%  latency {point['latency_ms']:.4f} ms on the searched design")
        current = joint[key]
        current_hw, _ = load_hardware_dict(current["hardware"])
    joint["compression_only"] = {k: compression_only[k] for k in ("cost_weight", "top1", "latency_ms", "energy_uj", "edp")}
    save()


def load_hardware_dict(config: dict) -> tuple[Hardware, Options]:
    from hwmodel.hardware import hardware_from_dict

    return hardware_from_dict({k: v for k, v in config.items() if k != "options"})


def summarize(state: dict) -> dict:
    points = list(state["points"].values())
    uniform = [p for p in points if p["method"] == "uniform"]
    aware = [p for p in points if p["method"] == "hwaware"]
    summary = {"comparison": compare_at_equal_top1(uniform, aware),
               "comparison_interpolated": compare_interpolated(uniform, aware),
               "uniform_front": [{k: p[k] for k in ("threshold", "top1", "latency_ms", "energy_uj")} for p in pareto_front(uniform)],
               "hwaware_front": [{k: p[k] for k in ("cost_weight", "top1", "latency_ms", "energy_uj")} for p in pareto_front(aware)]}
    joint = state.get("joint", {})
    rounds = sorted(k for k in joint if k.startswith("round"))
    if rounds and "hardware_only" in joint and "compression_only" in joint:
        last = joint[rounds[-1]]
        summary["joint"] = {
            "compression_only": {k: joint["compression_only"][k] for k in ("top1", "latency_ms")},
            "hardware_only": {k: joint["hardware_only"][k] for k in ("top1", "latency_ms")},
            "joint": {k: last[k] for k in ("top1", "latency_ms")},
        }
        # Uniform models do not depend on the hardware: re-cost them exactly on the joint design
        # for a second equal-accuracy comparison, against the model compressed for that design.
        if all("description" in p for p in uniform):
            joint_hw, joint_options = load_hardware_dict(last["hardware"])
            recosted = [{**p, **exact_cost(p["description"], joint_hw, joint_options)} for p in uniform]
            summary["comparison_on_searched_design"] = compare_at_equal_top1(recosted, [{**last, "method": "hwaware"}])
    return summary


# ----------------------------------------------------------------------------- plots


def plot_all(state: dict, out: Path, log=print) -> list[Path]:
    """``pareto.png`` (top-1 vs latency and energy), ``hardware.png``, ``layer_density.png``."""
    points = list(state["points"].values())
    uniform = sorted((p for p in points if p["method"] == "uniform"), key=lambda p: p["latency_ms"])
    aware = sorted((p for p in points if p["method"] == "hwaware"), key=lambda p: p["latency_ms"])
    written = []
    fig, axes = subplots(1, 2, figsize=(12, 4.5))
    for ax, key, label in ((axes[0], "latency_ms", "modelled latency (ms)"), (axes[1], "energy_uj", "modelled energy (uJ)")):
        ax.plot([p[key] for p in uniform], [100 * p["top1"] for p in uniform], "o--", label="uniform PENNI rule (s swept)")
        for p in uniform:
            ax.annotate(f"s={p['threshold']:g}", (p[key], 100 * p["top1"]), fontsize=7)
        ax.plot([p[key] for p in aware], [100 * p["top1"] for p in aware], "s-", label="hardware-aware (lambda swept)")
        for p in aware:
            ax.annotate(f"l={p['cost_weight']:g}", (p[key], 100 * p["top1"]), fontsize=7)
        joint = state.get("joint", {})
        rounds = sorted(k for k in joint if k.startswith("round"))
        if key == "latency_ms" and "hardware_only" in joint:
            only = joint["hardware_only"]
            ax.plot([only[key]], [100 * only["top1"]], "P", markersize=10, label=f"hardware only (s={only['threshold']:g}, searched design)")
        if key == "latency_ms" and rounds:
            last = joint[rounds[-1]]
            ax.plot([last[key]], [100 * last["top1"]], "*", markersize=12, label="joint (compressed against its searched design)")
        ax.set(xlabel=label, ylabel="top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("accuracy vs modelled cost on the ESCALATE-style design")
    fig.tight_layout()
    written.append(save_figure(fig, out / "pareto.png", dpi=110))

    joint = state.get("joint", {})
    rounds = sorted(k for k in joint if k.startswith("round"))
    base = state["settings"]["hardware"]
    chosen = {"default": base}
    if "hardware_only" in joint:
        chosen["hardware only"] = joint["hardware_only"]["hardware"]
    if rounds:
        chosen["joint"] = joint[rounds[-1]]["hardware"]
    params = [("escalate", "pes"), ("escalate", "lanes"), ("escalate", "multipliers"), ("escalate", "basis_macs"),
              ("escalate", "pe_buffer_kib"), ("memory", "glb_kib")]
    fig, ax = subplots(figsize=(9, 4))
    width = 0.8 / len(chosen)
    for j, (name, hwd) in enumerate(chosen.items()):
        values = [hwd[s][k] / base[s][k] for s, k in params]
        ax.bar(np.arange(len(params)) + j * width, values, width, label=name)
        for x, (s, k) in enumerate(params):
            ax.annotate(f"{hwd[s][k]:g}", (x + j * width, hwd[s][k] / base[s][k]), fontsize=7, ha="center", va="bottom")
    ax.set_xticks(np.arange(len(params)) + width * (len(chosen) - 1) / 2, [k for _, k in params])
    ax.set_yscale("log")
    ax.set(ylabel="relative to the default design", title="chosen hardware (iso-area)")
    ax.legend()
    fig.tight_layout()
    written.append(save_figure(fig, out / "hardware.png", dpi=110))

    if aware and uniform:
        best_aware = max(aware, key=lambda p: p["top1"])
        ref = min(uniform, key=lambda p: abs(p["threshold"] - 1.0))
        fig, ax = subplots(figsize=(12, 4.5))
        convs = [i for i, layer in enumerate(ref["layers"]) if layer["basis"] > 0]
        names = [ref["layers"][i]["name"] for i in convs]
        x = np.arange(len(convs))
        share = np.asarray([ref["layers"][i]["latency_share"] for i in convs])
        ax.bar(x - 0.2, [ref["layers"][i]["coef_density"] for i in convs], 0.4, label=f"uniform s={ref['threshold']:g}")
        ax.bar(x + 0.2, [best_aware["layers"][i]["coef_density"] for i in convs], 0.4, label=f"hardware-aware lambda={best_aware['cost_weight']:g}")
        ax2 = ax.twinx()
        ax2.plot(x, 100 * share, "k.-", label="latency share (uniform model)")
        ax2.set_ylabel("latency share (%)")
        ax.set_xticks(x, names, rotation=70, fontsize=7)
        ax.set(ylabel="coefficient density", title="per-layer density vs share of modelled latency")
        ax.legend(loc="upper left", fontsize=8)
        ax2.legend(loc="upper right", fontsize=8)
        fig.tight_layout()
        written.append(save_figure(fig, out / "layer_density.png", dpi=110))
    log("wrote " + ", ".join(str(p) for p in written))
    return written


def format_table(state: dict) -> str:
    """Fixed-width table of every point, the equal-top-1 comparison and the joint loop."""
    lines = [f"{'point':<16}{'top-1 %':>9}{'latency ms':>12}{'energy uJ':>11}{'mean density':>14}"]
    for key, p in sorted(state["points"].items(), key=lambda kv: (kv[1]["method"], kv[1]["latency_ms"])):
        dens = [layer["coef_density"] for layer in p["layers"] if layer["basis"] > 0]
        lines.append(f"{key:<16}{100 * p['top1']:>9.2f}{p['latency_ms']:>12.4f}{p['energy_uj']:>11.2f}{np.mean(dens):>14.3f}")
    summary = state.get("summary") or summarize(state)
    c = summary["comparison"]
    lines.append("")
    for row in summary.get("comparison_interpolated", {}).get("points", []):
        if row["latency_reduction"] is None:
            lines.append(f"hardware-aware lambda={row['cost_weight']:g} ({100 * row['top1']:.2f}%): outside the uniform front's top-1 range")
        else:
            lines.append(f"hardware-aware lambda={row['cost_weight']:g} ({100 * row['top1']:.2f}%, {row['latency_ms']:.4f} ms) vs uniform front "
                         f"interpolated at the same top-1 ({row['uniform_latency_ms_at_same_top1']:.4f} ms): "
                         f"{100 * row['latency_reduction']:.1f}% lower latency")
    if c["latency_reduction"] is None:
        lines.append("nearest measured pair within 0.3 points of top-1: none")
    else:
        lines.append(f"nearest measured pair within 0.3 points of top-1: hardware-aware lambda={c['hwaware']['cost_weight']:g} "
                     f"({100 * c['hwaware']['top1']:.2f}%, {c['hwaware']['latency_ms']:.4f} ms) vs uniform s={c['uniform']['threshold']:g} "
                     f"({100 * c['uniform']['top1']:.2f}%, {c['uniform']['latency_ms']:.4f} ms): "
                     f"{100 * c['latency_reduction']:.1f}% lower latency, top-1 gap {100 * c['top1_gap']:+.2f} points")
    if "comparison_on_searched_design" in summary and summary["comparison_on_searched_design"]["latency_reduction"] is not None:
        c = summary["comparison_on_searched_design"]
        lines.append(f"on the joint (searched) design: joint model ({100 * c['hwaware']['top1']:.2f}%, {c['hwaware']['latency_ms']:.4f} ms) vs "
                     f"uniform s={c['uniform']['threshold']:g} ({100 * c['uniform']['top1']:.2f}%, {c['uniform']['latency_ms']:.4f} ms): "
                     f"{100 * c['latency_reduction']:.1f}% lower latency, top-1 gap {100 * c['top1_gap']:+.2f} points")
    if "joint" in summary:
        j = summary["joint"]
        for name in ("compression_only", "hardware_only", "joint"):
            lines.append(f"{name.replace('_', ' '):<18} top-1 {100 * j[name]['top1']:.2f}%  latency {j[name]['latency_ms']:.4f} ms")
    return "\n".join(lines)


def condensed(state: dict) -> dict:
    """``state`` without the per-point model descriptions (small enough to commit as evidence)."""
    out = as_json(state)
    for p in list(out["points"].values()) + [v for v in out.get("joint", {}).values() if isinstance(v, dict)]:
        p.pop("description", None)
    return out
