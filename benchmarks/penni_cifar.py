"""PENNI on CIFAR-10 from pretrained ResNets, next to a dense baseline fine-tuned as long.

The shared CIFAR-10 copy is JPEG re-encoded, which costs the pretrained ResNets several
points; the fair reference is therefore the same pretrained model fine-tuned on this data
for the same number of epochs as the pipeline trains (retraining + fine-tuning).

Schedules:

* ``--schedule cpu`` (default): 10,000 training images, 5 retraining + 2 fine-tuning epochs
  (baseline: 7 epochs), evaluated on the whole test set (10,000 images). Three departures from the
  paper's recipe make up for the short schedule: PENNI's pruning rule (``s = 1.15``) is applied
  gradually during retraining (``gradual_prune=2/3``: the threshold rises over the first two
  thirds of it) instead of at once afterwards; basis and coefficients are retrained jointly
  (``alternate_every=0``: with the paper's 2-epoch turns the coefficients would rest for
  whole turns while the pruning threshold still rises); and retraining and
  fine-tuning distil from the fine-tuned dense baseline (``distill=0.7``, temperature 4;
  ``--teacher pretrained`` distils from the pretrained model instead, ``--distill 0`` turns it
  off). Sized for
  <= 60 minutes, i.e. <= 120 core-minutes of process CPU time, on 2 CPU cores for ResNet-56
  (7 x 10,000 baseline passes, 7 x 10,000 pipeline passes each with a teacher forward pass,
  plus evaluation); the script records wall time, CPU time and load.
* ``--schedule full``: the paper's recipe, 100 retraining + 30 fine-tuning epochs on all
  50,000 images, full test set, one-shot pruning: a GPU job.

Any of ``--train-subset/--test-subset/--retrain-epochs/--finetune-epochs/--alternate-every/--gradual-prune/
--channel-sparsity/--prune-std/--distill/--batch-size/--seed`` overrides the schedule (e.g. for a smoke run). Work is
kept in run folders under ``--work-dir`` (``baseline/``, ``pipeline/``; :func:`runkit.open_run`): rerunning resumes, and
a rerun with other settings is refused, naming them.

Example::

    python benchmarks/penni_cifar.py --model resnet56                 # CPU schedule
    python benchmarks/penni_cifar.py --model resnet56 --schedule full  # GPU
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import jax
from flax import nnx

from jaxsparse.data import load_split_subset
from jaxsparse.models import evaluate_accuracy
from jaxsparse.penni.pipeline import CompressConfig, Dataset, compress, initial_model
from jaxsparse.compress_settings import PRESETS
from jaxsparse.penni.train import TrainConfig, fit
from jaxsparse.userfiles import resolve_data, resolve_weights
from runkit import atomic_write_json, open_run

#: --schedule -> the compression preset it runs (jaxsparse.compress_settings.PRESETS).
SCHEDULES = {"cpu": "cifar-cpu", "full": "full"}
#: The settings a flag of this script can override (the job's subsets, the rest its CompressConfig's fields).
PLAN_KEYS = ("train_subset", "test_subset", "retrain_epochs", "finetune_epochs", "alternate_every", "gradual_prune", "channel_sparsity",
             "prune_std", "distill", "batch_size", "seed")
#: The keys of PLAN_KEYS that are not CompressConfig fields.
SUBSET_KEYS = ("train_subset", "test_subset")


def schedule_plan(name: str) -> dict:
    """The overridable settings of a schedule, read from its preset."""
    run = PRESETS[SCHEDULES[name]]
    return {key: getattr(run, key) if key in SUBSET_KEYS else getattr(run.config, key) for key in PLAN_KEYS}


def build_plan(args: argparse.Namespace) -> tuple[dict, CompressConfig]:
    """The schedule's settings with the flags given applied, and the pipeline's config (its preset's, replaced)."""
    plan = schedule_plan(args.schedule)
    plan.update({key: getattr(args, key) for key in PLAN_KEYS if getattr(args, key) is not None})
    config = dataclasses.replace(PRESETS[SCHEDULES[args.schedule]].config, model=args.model,
                                 **{key: plan[key] for key in PLAN_KEYS if key not in SUBSET_KEYS})  # fmt: skip
    return plan, config


#: Published figures (PENNI, ICML 2020; public code) for the table.
PAPER = {
    "resnet18 (paper)": {"param_reduction": 0.97, "mac_reduction": 0.92, "note": "CIFAR-10, no accuracy loss"},
    "vgg16 (public code)": {"top1_dense": 0.9349, "top1_compressed": 0.9313, "mac_reduction": 1 - 22.6 / 313},
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet56", choices=("resnet20", "resnet32", "resnet44", "resnet56"))
    parser.add_argument("--schedule", default="cpu", choices=tuple(SCHEDULES))
    parser.add_argument("--train-subset", type=int)
    parser.add_argument("--test-subset", type=int)
    parser.add_argument("--retrain-epochs", type=int)
    parser.add_argument("--finetune-epochs", type=int)
    parser.add_argument("--alternate-every", type=int, help="epochs per turn of basis/coefficient alternation in retraining (0: joint)")
    parser.add_argument("--gradual-prune", type=float, help="fraction of retraining over which the prune threshold rises (0: at once)")
    parser.add_argument("--channel-sparsity", type=float, help="fraction of each block's inner channels removed (0: off)")
    parser.add_argument("--prune-std", type=float, help="s of the pruning rule |c| < s * std(c)")
    parser.add_argument("--distill", type=float, help="weight of distillation from the teacher (0: off)")
    parser.add_argument("--teacher", default="baseline", choices=("baseline", "pretrained"),
                        help="distil from the fine-tuned dense baseline (default) or the pretrained model")
    parser.add_argument("--batch-size", type=int, help="SGD batch size (default: the schedule's)")
    parser.add_argument("--data", type=Path)
    parser.add_argument("--shared", type=Path)
    parser.add_argument("--work-dir", type=Path, help="checkpoints (default: runs/penni_cifar-<model>-<schedule>)")
    parser.add_argument("--out", type=Path, help="results JSON (default: benchmarks/results/penni_cifar_<model>.json)")
    parser.add_argument("--seed", type=int, help="data order, augmentation and subsets (default: the schedule's)")
    args = parser.parse_args(argv)

    plan, config = build_plan(args)
    work = args.work_dir or Path("runs") / f"penni_cifar-{args.model}-{args.schedule}"
    out = args.out or Path("benchmarks/results") / f"penni_cifar_{args.model}.json"
    started, cpu_started = time.time(), time.process_time()

    data_path = resolve_data(args.data, args.shared)
    weights = resolve_weights(args.model, None, args.shared)
    xtr, ytr = load_split_subset(data_path, "train", plan["train_subset"], seed=config.seed, cache_dir=None, progress=True)
    xte, yte = load_split_subset(data_path, "test", plan["test_subset"], seed=config.seed, cache_dir=None, progress=True)
    data = Dataset(xtr, ytr, xte, yte, f"cifar10:{data_path.name}")
    total_epochs = plan["retrain_epochs"] + plan["finetune_epochs"]

    # Dense baseline: the pretrained model fine-tuned for the same number of epochs, in its own run folder
    # (settings.json: a rerun of other settings is refused, naming them).
    dense = initial_model(config, str(weights))
    top1_pretrained = evaluate_accuracy(dense, xte, yte).accuracy
    baseline_config = TrainConfig(epochs=total_epochs, batch_size=config.batch_size, alternate_every=0, seed=config.seed)
    baseline = open_run(work / "baseline", {"model": args.model, "weights": str(weights), "data": data.name,
                                            "train_images": int(len(xtr)), "train": dataclasses.asdict(baseline_config)},
                        option="work-dir", hint="use another --work-dir or delete it")  # fmt: skip
    if baseline.has("model"):
        state, meta = baseline.load("model", like=nnx.state(dense))
        nnx.update(dense, state)
        baseline_seconds, baseline_cpu = meta["seconds"], meta["cpu_seconds"]
    else:
        t, c = time.time(), time.process_time()
        fit(dense, xtr, ytr, baseline_config, checkpoint=baseline.checkpoints / "epoch", description="dense baseline")
        baseline_seconds, baseline_cpu = time.time() - t, time.process_time() - c
        baseline.save("model", nnx.state(dense), {"seconds": baseline_seconds, "cpu_seconds": baseline_cpu,
                                                  "load_average": list(os.getloadavg())})  # fmt: skip
    top1_baseline = evaluate_accuracy(dense, xte, yte).accuracy

    t, c = time.time(), time.process_time()
    # The baseline is the better teacher: it has adapted to the JPEG data (the pretrained model has not).
    teacher = dense if args.teacher == "baseline" else None
    report = compress(config, data, work / "pipeline", weights=str(weights), teacher=teacher,
                      teacher_name=f"{args.teacher} {args.model}", log=lambda m: print(m, file=sys.stderr))
    pipeline_seconds, pipeline_cpu = time.time() - t, time.process_time() - c
    s = report["summary"]
    rows = [("pretrained", top1_pretrained, s["params_dense"], s["macs_dense"]),
            (f"dense baseline ({total_epochs} ep)", top1_baseline, s["params_dense"], s["macs_dense"])]
    rows += [(r["stage"], r["top1"], r["params"], r["macs"]) for r in report["stages"]]
    print(f"\n{args.model}, schedule {args.schedule}: {len(xtr)} train / {len(xte)} test images, "
          f"{plan['retrain_epochs']} + {plan['finetune_epochs']} epochs, {jax.devices()[0].device_kind}")
    print(f"{'stage':<24} {'top-1':>7} {'params':>11} {'MACs':>14}")
    for name, top1, params, macs in rows:
        print(f"{name:<24} {100 * top1:6.2f}% {params:>11,} {macs:>14,}")
    print(f"ours: params -{100 * s['param_reduction']:.1f}%, MACs -{100 * s['mac_reduction']:.1f}%, "
          f"top-1 {100 * top1_baseline:.2f}% (baseline) -> {100 * s['top1_compressed']:.2f}%")
    for name, figures in PAPER.items():
        print(f"paper {name}: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items()))

    headline = {
        "param_reduction": s["param_reduction"],
        "mac_reduction": s["mac_reduction"],
        "top1_dense_baseline": top1_baseline,
        "top1_compressed": s["top1_compressed"],
        "top1_pretrained": top1_pretrained,
        "accuracy_drop_points": 100 * (top1_baseline - s["top1_compressed"]),
        "model": args.model,
        "schedule": args.schedule,
        "schedule_overrides": {k: v for k, v in plan.items() if v != schedule_plan(args.schedule)[k]},
        "train_images": int(len(xtr)),
        "test_images": int(len(xte)),
        "retrain_epochs": plan["retrain_epochs"],
        "finetune_epochs": plan["finetune_epochs"],
        "device": jax.devices()[0].device_kind,
        "alternate_every": plan["alternate_every"],
        "gradual_prune": plan["gradual_prune"],
        "channel_sparsity": plan["channel_sparsity"],
        "prune_std": plan["prune_std"],
        "distill": plan["distill"],
        "teacher": args.teacher if plan["distill"] > 0 else None,
        # Budget figures from the checkpoints (so they survive resuming): dense baseline +
        # every pipeline stage; process CPU time is the honest figure on a shared machine.
        "cpu_minutes": round(((baseline_cpu or 0.0) + sum(r.get("cpu_seconds", 0.0) for r in report["stages"])) / 60, 1),
        "wall_minutes": round((baseline_seconds + sum(r["seconds"] for r in report["stages"])) / 60, 1),
        "baseline_cpu_recorded": baseline_cpu is not None,
        "minutes_this_process": round((time.time() - started) / 60, 1),
        "cpu_minutes_this_process": round((time.process_time() - cpu_started) / 60, 1),
        "load_average_end": [round(v, 2) for v in os.getloadavg()],
    }
    atomic_write_json(out, {**headline, "stages": report["stages"], "baseline_seconds": baseline_seconds,
                            "baseline_cpu_seconds": baseline_cpu, "pipeline_seconds": pipeline_seconds,
                            "pipeline_cpu_seconds": pipeline_cpu,
                            "config": dataclasses.asdict(config), "paper": PAPER,
                            # per-channel densities are in the run's report.json; kept out to keep this file small
                            "layers": [{k: v for k, v in r.items() if k != "coef_density_per_out_channel"} for r in report["layers"]]})
    print(json.dumps(headline))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
