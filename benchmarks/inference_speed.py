"""Forward throughput of a PENNI-compressed model against its dense original, in one run.

The compressed model (the shrunk, quantized result of ``python -m jaxsparse compress``;
quantized values are baked into float32 tensors) runs through an execution plan chosen
per layer by measurement. Candidates for each decomposed conv layer:

* ``dense``: the shrunk kernel rebuilt once (basis x coefficients) and run as one conv;
* ``basis_first``: depthwise basis conv (``Cin * d`` maps), then a 1x1 coefficient conv;
* ``coef_first``: 1x1 coefficient conv into ``Cout * d`` maps, then a grouped basis conv.

Each candidate is timed alone on the layer's real input shape (batch ``--batch``, after
warm-up, ``block_until_ready``); the fastest is kept. The whole models are then timed in
alternation (median of ``--repeats``). Also reported: every model with one form for all
layers, and the realised speedup over the counted (sparse-effective) MAC reduction.

Example::

    python -m jaxsparse compress --model resnet56 --out runs/r56 ...
    python benchmarks/inference_speed.py --run-dir runs/r56
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from jaxsparse.common import atomic_write_json, load_checkpoint
from jaxsparse.penni.count import describe_layers, summarize
from jaxsparse.penni.layers import DecomposedConv, iter_layers, set_by_path, set_form
from jaxsparse.penni.pipeline import CompressConfig, initial_model, load_compressed

CANDIDATES = ("dense", "basis_first", "coef_first")


def bake_quantization(model: nnx.Module) -> None:
    """Store the fake-quantized tensors as plain float32 values (what a deployed model holds)."""
    for _, layer in iter_layers(model, DecomposedConv):
        basis, coefficients = layer.effective_tensors()
        layer.basis[...], layer.coefficients[...] = basis, coefficients
        layer.coef_bits = layer.basis_bits = 0


def as_dense_conv(layer: DecomposedConv) -> nnx.Conv:
    """The layer as one ``nnx.Conv`` holding the rebuilt kernel."""
    conv = nnx.Conv(layer.in_features, layer.out_features, kernel_size=layer.kernel_size, strides=layer.strides,
                    padding=layer.padding, use_bias=False, rngs=nnx.Rngs(0))
    conv.kernel[...] = layer.kernel()
    return conv


def time_fn(fn, *args, repeats: int) -> float:
    """Median seconds of ``fn(*args)`` after one warm-up call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def jitted_forward(model: nnx.Module):
    model.eval()
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
    return lambda x: forward(state, x)


def layer_plan(model: nnx.Module, batch: int, repeats: int, image_shape) -> tuple[dict, dict]:
    """Time every candidate of every decomposed layer on its input shape; return (choice, timings)."""
    records = {r["name"]: r for r in describe_layers(model, input_shape=(1, *image_shape))}
    choice, timings = {}, {}
    layers = list(iter_layers(model, DecomposedConv))
    for path, layer in tqdm(layers, desc="per-layer plan", file=sys.stderr):
        r = records[path]
        x = jax.nn.relu(jax.random.normal(jax.random.key(0), (batch, r["h_in"], r["w_in"], r["c_in"])))
        per = {}
        for form in CANDIDATES:
            module = as_dense_conv(layer) if form == "dense" else layer
            graphdef, state = nnx.split(module)
            fn = jax.jit(lambda s, v, f=form, g=graphdef: nnx.merge(g, s)(v) if f == "dense" else nnx.merge(g, s)(v, f))
            per[form] = time_fn(fn, state, x, repeats=repeats)
        timings[path] = per
        choice[path] = min(per, key=per.get)
    return choice, timings


def apply_plan(model: nnx.Module, choice: dict) -> None:
    for path, layer in list(iter_layers(model, DecomposedConv)):
        if choice[path] == "dense":
            set_by_path(model, path, as_dense_conv(layer))
        else:
            layer.form = choice[path]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, default=Path("runs/penni_cifar-resnet56-cpu/pipeline"),
                        help="a finished compress run (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per measurement (median)")
    parser.add_argument("--layer-repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/inference_speed.json"))
    args = parser.parse_args(argv)

    _, meta = load_checkpoint(args.run_dir / "checkpoints" / "finetune.npz")
    config = CompressConfig(**meta["settings"]["config"])
    weights = meta["settings"]["weights"]
    image_shape = (8, 8, 3) if config.model == "digits-cnn" else (32, 32, 3)
    dense = initial_model(config, weights)
    compressed = load_compressed(args.run_dir)
    bake_quantization(compressed)
    dense_totals = summarize(describe_layers(dense, input_shape=(1, *image_shape)))
    compressed_totals = summarize(describe_layers(compressed, input_shape=(1, *image_shape)))

    choice, layer_timings = layer_plan(compressed, args.batch, args.layer_repeats, image_shape)
    x = jax.random.normal(jax.random.key(1), (args.batch, *image_shape))
    variants = {"dense model": dense}
    for form in CANDIDATES:
        variant = load_compressed(args.run_dir)
        bake_quantization(variant)
        if form == "dense":
            apply_plan(variant, {p: "dense" for p in choice})
        else:
            set_form(variant, form)
        variants[f"compressed, all {form}"] = variant
    planned = load_compressed(args.run_dir)
    bake_quantization(planned)
    apply_plan(planned, choice)
    variants["compressed, measured plan"] = planned

    forwards = {name: jitted_forward(m) for name, m in variants.items()}
    reference = np.asarray(forwards["compressed, all basis_first"](x))
    for name, fn in forwards.items():  # warm-up + the variants of one model agree
        out = np.asarray(fn(x))
        if name != "dense model":
            np.testing.assert_allclose(out, reference, rtol=1e-3, atol=1e-3 * float(np.abs(reference).max()))
    samples = {name: [] for name in forwards}
    for _ in tqdm(range(args.repeats), desc="whole models", file=sys.stderr):
        for name, fn in forwards.items():  # interleaved, so load changes hit every variant alike
            t = time.perf_counter()
            jax.block_until_ready(fn(x))
            samples[name].append(time.perf_counter() - t)
    seconds = {name: statistics.median(v) for name, v in samples.items()}
    throughput = {name: args.batch / s for name, s in seconds.items()}
    speedup = seconds["dense model"] / seconds["compressed, measured plan"]
    mac_factor = dense_totals["macs_dense"] / compressed_totals["macs_sparse"]

    device = jax.devices()[0]
    print(f"\n{config.model} from {args.run_dir}, batch {args.batch}, {device.device_kind} ({os.cpu_count()} CPUs visible)")
    print(f"{'variant':<32} {'images/s':>10} {'vs dense':>9}")
    for name in forwards:
        print(f"{name:<32} {throughput[name]:>10.1f} {seconds['dense model'] / seconds[name]:>8.2f}x")
    counts = {f: sum(1 for c in choice.values() if c == f) for f in CANDIDATES}
    print(f"plan: {counts}; MACs dense {dense_totals['macs_dense']:,} -> sparse-effective {compressed_totals['macs_sparse']:,} "
          f"({mac_factor:.2f}x fewer); realised/theoretical = {speedup / mac_factor:.2f}")
    headline = {
        "speedup": speedup,
        "realised_over_theoretical": speedup / mac_factor,
        "mac_reduction": mac_factor,
        "mac_reduction_fraction": 1.0 - 1.0 / mac_factor,
        "dense_shape_mac_reduction": dense_totals["macs_dense"] / compressed_totals["macs_dense"],
        "model": config.model,
        "device": device.device_kind,
        "platform": device.platform,
        "batch": args.batch,
        "plan": counts,
    }
    atomic_write_json(args.out, {**headline, "images_per_second": throughput, "seconds_per_batch": seconds,
                                 "layer_choice": choice, "layer_seconds": layer_timings, "run_dir": str(args.run_dir),
                                 "macs": {"dense": dense_totals, "compressed": compressed_totals}})
    print(json.dumps(headline))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
