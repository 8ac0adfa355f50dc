"""Forward throughput of a PENNI-compressed model against its dense original, in one run.

The compressed model (the shrunk, quantized result of ``python -m jaxsparse compress``;
quantized values are baked into float32 tensors) runs through an execution plan chosen
per layer by measurement. Candidates for each decomposed conv layer:

* ``dense``: the shrunk kernel rebuilt once (basis x coefficients) and run as one conv;
* ``basis_first``: depthwise basis conv (``Cin * d`` maps), then a 1x1 coefficient conv;
* ``coef_first``: 1x1 coefficient conv into ``Cout * d`` maps, then a grouped basis conv;
* ``live_basis_first``: :class:`~jaxsparse.penni.layers.LiveBasisFirstConv`, the basis-first
  order with the depthwise step as ``kh*kw`` shifted multiply-adds (fused by XLA) over only
  the live ``(input channel, basis)`` pairs, then one matmul over those pairs.

(Also measured while choosing these, and slower than a dense conv at every ResNet layer
shape on XLA:CPU, so not candidates: im2col + matmul, a sum of 9 shifted 1x1 matmuls,
NCHW layout, and the depthwise step as a batch-folded 1-input-channel conv.)

Each candidate is timed alone on the layer's real input shape (batch ``--batch``, after
warm-up, ``block_until_ready``); the fastest is kept. The whole models are then timed in
alternation (median of ``--repeats``). Also reported: every model with one form for all
layers, the realised speedup over the counted (sparse-effective) MAC reduction, and a
channel sweep: the compressed model with a further random fraction of every block's inner
channels removed (``--channel-sweep``), timed the same way, which shows how wall-clock time
follows dense-shape MACs on this backend. The load average is recorded next to the figures.

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
from jaxsparse.penni.layers import DecomposedConv, LiveBasisFirstConv, get_by_path, iter_layers, set_by_path
from jaxsparse.penni.pipeline import CompressConfig, initial_model, load_compressed
from jaxsparse.penni.shrink import free_channel_layers, shrink

CANDIDATES = ("dense", "basis_first", "coef_first", "live_basis_first")


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


#: Candidates that replace the layer with another module (the rest are forms of the layer itself).
_REPLACEMENTS = {"dense": as_dense_conv, "live_basis_first": LiveBasisFirstConv}


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


def layer_plan(model: nnx.Module, batch: int, repeats: int, image_shape, candidates=CANDIDATES) -> tuple[dict, dict]:
    """Time every candidate of every decomposed layer on its input shape; return (choice, timings)."""
    records = {r["name"]: r for r in describe_layers(model, input_shape=(1, *image_shape))}
    choice, timings = {}, {}
    layers = list(iter_layers(model, DecomposedConv))
    for path, layer in tqdm(layers, desc="per-layer plan", file=sys.stderr):
        r = records[path]
        x = jax.nn.relu(jax.random.normal(jax.random.key(0), (batch, r["h_in"], r["w_in"], r["c_in"])))
        per = {}
        for form in candidates:
            replaced = form in _REPLACEMENTS
            module = _REPLACEMENTS[form](layer) if replaced else layer
            graphdef, state = nnx.split(module)
            fn = jax.jit(lambda s, v, f=form, g=graphdef, r=replaced: nnx.merge(g, s)(v) if r else nnx.merge(g, s)(v, f))
            per[form] = time_fn(fn, state, x, repeats=repeats)
        timings[path] = per
        choice[path] = min(per, key=per.get)
    return choice, timings


def apply_plan(model: nnx.Module, choice: dict) -> None:
    for path, layer in list(iter_layers(model, DecomposedConv)):
        if choice[path] in _REPLACEMENTS:
            set_by_path(model, path, _REPLACEMENTS[choice[path]](layer))
        else:
            layer.form = choice[path]


def drop_inner_channels(model: nnx.Module, fraction: float, seed: int = 0) -> None:
    """Zero a random ``fraction`` of the output channels of every layer whose channels can die alone."""
    rng = np.random.default_rng(seed)
    for path in free_channel_layers(model):
        layer = get_by_path(model, path)
        if isinstance(layer, DecomposedConv):
            c = np.array(layer.coefficients[...])
            dead = rng.permutation(c.shape[1])[: int(round(fraction * c.shape[1]))]
            c[:, dead, :] = 0.0
            layer.coefficients[...] = jnp.asarray(c)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, default=Path("runs/penni_cifar-resnet56-cpu/pipeline"),
                        help="a finished compress run (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per measurement (median)")
    parser.add_argument("--layer-repeats", type=int, default=5)
    parser.add_argument("--candidates", default=",".join(CANDIDATES),
                        help="forms the per-layer plan chooses among (default: %(default)s)")
    parser.add_argument("--uniform-forms", default=",".join(CANDIDATES),
                        help="forms also timed as a whole model with that form in every layer (default: %(default)s)")
    parser.add_argument("--channel-sweep", default="0.5,0.75",
                        help="fractions of inner channels additionally removed at random for the sweep ('' = none; default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/inference_speed.json"))
    args = parser.parse_args(argv)
    candidates = tuple(f for f in args.candidates.split(",") if f)
    uniform = tuple(f for f in args.uniform_forms.split(",") if f)
    for name, forms in (("--candidates", candidates), ("--uniform-forms", uniform)):
        unknown = [f for f in forms if f not in CANDIDATES]
        if unknown or not forms and name == "--candidates":
            parser.error(f"{name}: expected a comma-separated subset of {list(CANDIDATES)}, got {','.join(forms)!r}")

    _, meta = load_checkpoint(args.run_dir / "checkpoints" / "finetune.npz")
    config = CompressConfig(**meta["settings"]["config"])
    weights = meta["settings"]["weights"]
    image_shape = (8, 8, 3) if config.model == "digits-cnn" else (32, 32, 3)
    dense = initial_model(config, weights)
    compressed = load_compressed(args.run_dir)
    bake_quantization(compressed)
    dense_totals = summarize(describe_layers(dense, input_shape=(1, *image_shape)))
    compressed_totals = summarize(describe_layers(compressed, input_shape=(1, *image_shape)))

    choice, layer_timings = layer_plan(compressed, args.batch, args.layer_repeats, image_shape, candidates)
    x = jax.random.normal(jax.random.key(1), (args.batch, *image_shape))
    variants = {"dense model": dense}
    for form in uniform:
        variant = load_compressed(args.run_dir)
        bake_quantization(variant)
        apply_plan(variant, {p: form for p in choice})
        variants[f"compressed, all {form}"] = variant
    planned = load_compressed(args.run_dir)
    bake_quantization(planned)
    apply_plan(planned, choice)
    variants["compressed, measured plan"] = planned
    sweep = [float(f) for f in args.channel_sweep.split(",") if f.strip()]
    sweep_macs = {}
    for fraction in sweep:
        variant = load_compressed(args.run_dir, shrunk=False)
        drop_inner_channels(variant, fraction)
        shrink(variant)
        bake_quantization(variant)
        name = f"sweep: {int(round(100 * fraction))}% inner channels dropped, dense convs"
        apply_plan(variant, {p: "dense" for p, _ in iter_layers(variant, DecomposedConv)})
        sweep_macs[name] = summarize(describe_layers(variant, input_shape=(1, *image_shape)))["macs_dense"]
        variants[name] = variant

    forwards = {name: jitted_forward(m) for name, m in variants.items()}
    reference = np.asarray(forwards["compressed, measured plan"](x))
    for name, fn in forwards.items():  # warm-up + the variants of one model agree
        out = np.asarray(fn(x))
        if name != "dense model" and not name.startswith("sweep"):
            np.testing.assert_allclose(out, reference, rtol=1e-3, atol=1e-3 * float(np.abs(reference).max()))
    samples = {name: [] for name in forwards}
    for _ in tqdm(range(args.repeats), desc="whole models", file=sys.stderr):
        for name, fn in forwards.items():  # interleaved, so load changes hit every variant alike
            t = time.perf_counter()
            jax.block_until_ready(fn(x))
            samples[name].append(time.perf_counter() - t)
    load_during = list(os.getloadavg())
    seconds = {name: statistics.median(v) for name, v in samples.items()}
    throughput = {name: args.batch / s for name, s in seconds.items()}
    speedup = seconds["dense model"] / seconds["compressed, measured plan"]
    mac_factor = dense_totals["macs_dense"] / compressed_totals["macs_sparse"]

    device = jax.devices()[0]
    print(f"\n{config.model} from {args.run_dir}, batch {args.batch}, {device.device_kind} ({os.cpu_count()} CPUs visible)")
    print(f"{'variant':<52} {'images/s':>10} {'vs dense':>9} {'dense-shape MACs':>17}")
    shape_macs = {"dense model": dense_totals["macs_dense"], **sweep_macs}
    for name in forwards:
        macs = shape_macs.get(name, compressed_totals["macs_dense"])
        print(f"{name:<52} {throughput[name]:>10.1f} {seconds['dense model'] / seconds[name]:>8.2f}x "
              f"{dense_totals['macs_dense'] / macs:>16.2f}x")
    print(f"load average during timing: {load_during}")
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
        "candidates": list(candidates),
        "load_average": [round(v, 2) for v in load_during],
        "cpus_visible": os.cpu_count(),
    }
    atomic_write_json(args.out, {**headline, "images_per_second": throughput, "seconds_per_batch": seconds,
                                 "layer_choice": choice, "layer_seconds": layer_timings, "run_dir": str(args.run_dir),
                                 "macs": {"dense": dense_totals, "compressed": compressed_totals},
                                 "channel_sweep": {name: {"speedup": seconds["dense model"] / seconds[name],
                                                          "dense_shape_mac_reduction": dense_totals["macs_dense"] / m}
                                                   for name, m in sweep_macs.items()}})
    print(json.dumps(headline))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
