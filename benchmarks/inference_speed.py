"""Forward throughput of a PENNI-compressed model against its dense original, in one run.

The compressed model (the shrunk, quantized result of ``python -m jaxsparse compress``;
quantized values are baked into float32 tensors) runs through an execution plan chosen
per layer by measurement. Candidates for each decomposed conv layer:

* ``dense``: the shrunk kernel rebuilt once (basis x coefficients) and run as one conv;
* ``basis_first``: depthwise basis conv (``Cin * d`` maps), then a 1x1 coefficient conv;
* ``coef_first``: 1x1 coefficient conv into ``Cout * d`` maps, then a grouped basis conv;
* ``live_basis_first``: :class:`~jaxsparse.penni.layers.LiveBasisFirstConv`, the basis-first
  order with the depthwise step as ``kh*kw`` shifted multiply-adds (fused by XLA) over only
  the live ``(input channel, basis)`` pairs, then one matmul over those pairs;
* ``sparse_cpu``: :class:`~jaxsparse.penni.sparse_cpu.SparseCoefficientConv`, a compiled CPU
  kernel (an XLA custom call) that runs the basis-first order over the live pairs and then
  visits only the non-zero coefficients (3x3 layers of stride 1 or 2; elsewhere it is not a candidate);
* ``sparse_pallas``: :class:`~jaxsparse.penni.sparse_pallas.PallasSparseConv`, the same order as
  one Pallas kernel for GPU and TPU (stencils of the live pairs, their product with the
  coefficients on the matrix unit, the epilogue), a candidate off the CPU backend only.

(Also measured while choosing these, and slower than a dense conv at every ResNet layer
shape on XLA:CPU, so not candidates: im2col + matmul, a sum of 9 shifted 1x1 matmuls,
NCHW layout, and the depthwise step as a batch-folded 1-input-channel conv.)

Each candidate is timed alone on the layer's real input shape (batch ``--batch``, after
warm-up, ``block_until_ready``; a candidate whose first call is over 3x the best so far is
not repeated). Whole-model plans are then chosen by whole-model timing in a phase of their
own: the per-layer forms, the sparse kernel wherever it applies, or dense convs everywhere.
With BatchNorm folded, a model with sparse-kernel layers runs as
:class:`~jaxsparse.penni.inference.PlanarResNet`: the kernels hand channel-planar
activations to each other and apply the folded biases, residual additions and ReLUs in
their epilogues. The per-layer forms and dense convs are tried with the shrunk model's channel
spaces padded with zero channels to a multiple of m (``--pad-multiples``; odd channel
counts left by shrinking can make XLA:CPU's conv slower than the full-width one, see the
conv-efficiency table in the output). Inference-only rewrites that are not about
compression are applied to BOTH models: BatchNorm folded into the conv before it
(``--fold-bn``, default on) and any ``--compiler-options`` (XLA options passed per compiled
function). The whole models are then timed in alternation (median of ``--repeats``).

Also reported: the time breakdown of both models (convs vs everything else, by timing the
model with every conv replaced by a shape-only stand-in, so a sparse kernel's fused epilogue
counts as conv time; BatchNorm folded vs not), every model with one form for all layers,
the realised speedup over the counted (sparse-effective) MAC reduction, and a channel
sweep: the compressed model with a further random fraction of every block's inner channels
removed (``--channel-sweep``), timed the same way, which shows how wall-clock time follows
dense-shape MACs on this backend; the dense model against the chosen plan at small batches
(``--latency-batches``, each compiled for that batch, median of ``--latency-calls``
interleaved calls after warm-up: ``speedup_batch1``, ``speedup_batch8``); and the chosen plan's
top-1 on every test image against the compressed model's training form (``top1_fast_path``,
``top1_reference``). The load average is recorded next to the figures.

The dense side has two engines. XLA's dense conv runs the dense model in this process; with
``--torch-python``, PyTorch runs it too (:mod:`torch_resnet_peer`, in the environment that has
PyTorch): the same ResNet and weights, traced, frozen and rewritten by
``optimize_for_inference`` (BatchNorm folded), in each of ``--torch-formats`` at each of
``--torch-threads``, its logits checked against the JAX dense model's, its calls interleaved
with the JAX models' calls. ``speedup`` and ``speedup_batch1``/``speedup_batch8`` divide the
faster dense engine's median by the compressed model's (``dense_engine`` names it at batch
``--batch``, ``dense_engine_batch<b>`` at the small batches); ``speedup_vs_xla_dense`` is the
ratio against XLA's dense model alone. Every whole-model median is stored with its min and max
(``seconds_per_batch_spread``, with the median process CPU time of a call: the JAX process's, or
the PyTorch worker's for its variants).

Example::

    python -m jaxsparse compress --model resnet56 --out runs/r56 ...
    python benchmarks/inference_speed.py --run-dir runs/r56

    # with PyTorch's dense model as the second dense engine (a separate environment)
    python -m venv ~/torch-env && ~/torch-env/bin/pip install torch==2.13.0 numpy
    python benchmarks/inference_speed.py --run-dir runs/r56 --torch-python ~/torch-env/bin/python
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
from runkit.progress import progress_bar

from runkit import UsageError, atomic_write_json
from runkit.checks import positive_ints
from jaxsparse.penni.count import describe_layers, summarize
from jaxsparse.models import CifarResNet
from jaxsparse.penni.inference import (
    PLAN_FORMS,
    apply_plan,
    bake_quantization,
    fold_batchnorm,
    fuse_sparse_resnet,
    pad_channels,
    plan_module,
)
from jaxsparse.penni.layers import DecomposedConv, LiveBasisFirstConv, get_by_path, iter_layers, set_by_path
from jaxsparse.penni.pipeline import initial_model, load_compressed, run_config
from jaxsparse.penni.shrink import free_channel_layers, shrink
from jaxsparse.penni.sparse_cpu import SparseCoefficientConv, available, supports
from jaxsparse.penni.sparse_pallas import supports as pallas_supports

#: Plan forms timed per layer ("train" rebuilds the kernel on every call; "dense" rebuilds it once).
CANDIDATES = tuple(f for f in PLAN_FORMS if f != "train")

#: ``(H, Cin, Cout)`` of the 3x3 convs (batch ``--batch``) timed for the conv-efficiency table.
EFFICIENCY_SHAPES = ((32, 16, 16), (32, 16, 13), (32, 16, 12), (32, 16, 8), (32, 16, 4), (32, 13, 16),
                     (16, 32, 32), (16, 31, 31), (16, 32, 24), (8, 64, 64), (8, 63, 63), (8, 64, 56))


def time_fn(fn, *args, repeats: int, give_up_above: float = float("inf")) -> float:
    """Median seconds of ``fn(*args)`` after one warm-up call.

    When the warm-up call alone takes over ``give_up_above`` seconds, its time is returned
    without repeats (a candidate that far behind cannot win; this keeps the plan search short).
    """
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t
    if first > give_up_above:
        return first
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def compile_fn(fn, *args, options: dict):
    """``fn`` jitted and compiled for ``args`` with the given XLA compiler options."""
    return jax.jit(fn).lower(*args).compile(compiler_options=options)


def jitted_forward(model: nnx.Module, x: jax.Array, options: dict):
    model.eval()
    graphdef, state = nnx.split(model)
    forward = compile_fn(lambda s, v: nnx.merge(graphdef, s)(v), state, x, options=options)
    return lambda v: forward(state, v)


class ShapeOnlyConv(nnx.Module):
    """Stands in for a conv in the time breakdown: output of the conv's shape and layout, (almost) no work."""

    def __init__(self, layer):
        self.out_features = int(layer.out_features)
        strides = layer.strides if layer.strides is not None else 1
        self.stride = int(strides[0] if isinstance(strides, (tuple, list)) else strides)
        self.planar_in = getattr(layer, "layout_in", "NHWC") == "NCHW"
        self.planar_out = getattr(layer, "layout_out", "NHWC") == "NCHW"

    def __call__(self, x: jax.Array, *residual, **residual_options) -> jax.Array:
        del residual, residual_options  # a fused kernel's epilogue counts as conv time
        axis = 1 if self.planar_in else 3
        x = x[:, :, :: self.stride, :: self.stride] if self.planar_in else x[:, :: self.stride, :: self.stride, :]
        c = x.shape[axis]
        if c >= self.out_features:
            x = jax.lax.slice_in_dim(x, 0, self.out_features, axis=axis)
        else:
            widths = [(0, 0)] * 4
            widths[axis] = (0, self.out_features - c)
            x = jnp.pad(x, widths)
        if self.planar_in != self.planar_out:
            x = jnp.transpose(x, (0, 2, 3, 1) if self.planar_in else (0, 3, 1, 2))
        return x


def without_convs(model: nnx.Module) -> nnx.Module:
    """The model with every 3x3 conv replaced by :class:`ShapeOnlyConv` (times everything else)."""
    for path, layer in list(iter_layers(model, (nnx.Conv, DecomposedConv, LiveBasisFirstConv, SparseCoefficientConv))):
        set_by_path(model, path, ShapeOnlyConv(layer))
    return model


def layer_plan(model: nnx.Module, batch: int, repeats: int, image_shape, candidates=CANDIDATES,
               options: dict | None = None) -> tuple[dict, dict]:
    """Time every candidate of every decomposed layer on its input shape; return (choice, timings)."""
    records = {r["name"]: r for r in describe_layers(model, input_shape=(1, *image_shape))}
    choice, timings = {}, {}
    layers = list(iter_layers(model, DecomposedConv))
    for path, layer in progress_bar(layers, desc="per-layer plan", file=sys.stderr):
        r = records[path]
        x = jax.nn.relu(jax.random.normal(jax.random.key(0), (batch, r["h_in"], r["w_in"], r["c_in"])))
        per = {}
        for form in candidates:
            try:
                module = plan_module(layer, form)
            except ValueError:  # a form that cannot run this layer (e.g. the CPU kernel on a conv that is not 3x3)
                continue
            graphdef, state = nnx.split(module)
            fn = compile_fn(lambda s, v, g=graphdef: nnx.merge(g, s)(v), state, x, options=options or {})
            per[form] = time_fn(fn, state, x, repeats=repeats, give_up_above=3.0 * min(per.values(), default=np.inf))
        timings[path] = per
        choice[path] = min(per, key=per.get)
    return choice, timings


def conv_efficiency(batch: int, repeats: int, options: dict) -> list[dict]:
    """GMAC/s of single 3x3 convs (stride 1, padding 1) at the channel counts of :data:`EFFICIENCY_SHAPES`."""
    rows = []
    for h, cin, cout in EFFICIENCY_SHAPES:
        x = jax.random.normal(jax.random.key(0), (batch, h, h, cin))
        kernel = jax.random.normal(jax.random.key(1), (3, 3, cin, cout))
        fn = compile_fn(lambda v, k: jax.lax.conv_general_dilated(v, k, (1, 1), ((1, 1), (1, 1)),
                                                                   dimension_numbers=("NHWC", "HWIO", "NHWC")),
                        x, kernel, options=options)
        seconds = min(time_fn(fn, x, kernel, repeats=repeats) for _ in range(2))
        macs = batch * h * h * 9 * cin * cout
        rows.append({"hw": h, "c_in": cin, "c_out": cout, "ms": 1e3 * seconds, "gmac_per_s": macs / seconds / 1e9})
    return rows


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


def runnable_plan(model: nnx.Module, plan) -> dict:
    """``plan`` as layer path -> form, with ``"dense"`` for every layer its form cannot run."""
    runnable = {}
    for path, layer in iter_layers(model, DecomposedConv):
        form = plan if isinstance(plan, str) else plan.get(path, "dense")
        kernel_ok = {"sparse_cpu": supports, "sparse_pallas": pallas_supports}.get(form, lambda _: (True, ""))
        runnable[path] = form if kernel_ok(layer)[0] else "dense"
    return runnable


class TorchPeer:
    """The PyTorch dense engine (``benchmarks/torch_resnet_peer.py``) in its own environment, one request at a time."""

    def __init__(self, python: str, weights: str, depth: int):
        import subprocess

        script = Path(__file__).with_name("torch_resnet_peer.py")
        self.process = subprocess.Popen([python, str(script), "--weights", str(weights), "--depth", str(depth)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
        self.info = self._read()

    def _read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"--torch-python: the PyTorch peer exited (status {self.process.wait()})")
        reply = json.loads(line)
        if "error" in reply:
            raise SystemExit(f"--torch-python: the PyTorch peer answered {reply['error']}")
        return reply

    def ask(self, **request) -> dict:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.process.stdin.close()
            self.process.wait(timeout=60)


def torch_variants(peer: TorchPeer | None, batch: int, formats, threads) -> dict:
    """Name -> one-call timer of every PyTorch variant at ``batch`` (built, frozen and warmed up first)."""
    if peer is None:
        return {}
    timers = {}
    for fmt in formats:
        peer.ask(op="build", batch=batch, format=fmt)
        for t in threads:
            timers[f"dense model, PyTorch {fmt} {t} thread{'s' if t > 1 else ''}"] = (
                lambda fmt=fmt, t=t: _peer_call(peer.ask(op="time", batch=batch, format=fmt, threads=t, calls=1)))
    return timers


def _peer_call(reply: dict) -> tuple[float, float]:
    """Wall and process CPU seconds of the one call a peer timed."""
    return reply["seconds"][0], reply["cpu_seconds"]


def interleaved_samples(timers: dict, repeats: int, desc: str) -> tuple[dict, dict]:
    """Wall and process CPU seconds of every call of every timer (name -> zero-argument function returning one
    call's ``(wall, cpu)`` seconds), called in alternation so load changes hit all alike."""
    wall, cpu = {name: [] for name in timers}, {name: [] for name in timers}
    for _ in progress_bar(range(repeats), desc=desc, file=sys.stderr):
        for name, timer in timers.items():
            w, c = timer()
            wall[name].append(w)
            cpu[name].append(c)
    return wall, cpu


def jax_timer(fn, x):
    """One timed call of a compiled forward (``block_until_ready``): wall and process CPU seconds."""

    def timer():
        t, c = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn(x))
        return time.perf_counter() - t, time.process_time() - c

    return timer


def interleaved_seconds(forwards: dict, x: jax.Array, repeats: int, desc: str, peers: dict | None = None) -> tuple[dict, dict]:
    """Median seconds per call of every forward (and peer timer), timed in alternation, and each one's min and max."""
    samples, cpu = interleaved_samples({**{n: jax_timer(fn, x) for n, fn in forwards.items()}, **(peers or {})}, repeats, desc)
    return ({name: statistics.median(v) for name, v in samples.items()},
            {name: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v), "calls": len(v),
                    "cpu_median_s": statistics.median(cpu[name])} for name, v in samples.items()})  # fmt: skip


def latency(variants: dict, batches, calls: int, image_shape, options: dict, peer: TorchPeer | None = None, formats=(),
            threads=()) -> dict:
    """Median milliseconds per call (with min and max) of every variant (and PyTorch peer variant) at each small
    batch: each compiled for that batch, warmed up, then called ``calls`` times in alternation with the others."""
    out = {}
    for batch in batches:
        x = jax.random.normal(jax.random.key(2), (batch, *image_shape))
        forwards = {name: jitted_forward(model, x, options) for name, model in variants.items()}
        for fn in forwards.values():
            for _ in range(3):
                jax.block_until_ready(fn(x))
        timers = {**{n: jax_timer(fn, x) for n, fn in forwards.items()}, **torch_variants(peer, batch, formats, threads)}
        samples, cpu = interleaved_samples(timers, calls, f"latency, batch {batch}")
        out[batch] = {name: {"median_ms": 1e3 * statistics.median(v), "min_ms": 1e3 * min(v), "max_ms": 1e3 * max(v),
                             "cpu_median_ms": 1e3 * statistics.median(cpu[name]), "calls": len(v)}
                      for name, v in samples.items()}  # fmt: skip
    return out


def fastest_dense(times: dict, key=lambda v: v) -> str:
    """The name of the fastest dense engine among ``times`` (the JAX dense model and the PyTorch variants)."""
    dense = [n for n in times if n == "dense model" or n.startswith("dense model, PyTorch")]
    return min(dense, key=lambda n: key(times[n]))


def fast_path_accuracy(args, config, fast_forward, image_shape) -> dict:
    """Top-1 of the timed fast path (the chosen plan, one fixed batch shape) and of the compressed model
    in its training form (fake-quantized, BatchNorm unfolded), on every test image of the CIFAR-10 split."""
    if config.model == "digits-cnn" or (args.test_data is not None and str(args.test_data).lower() == "none"):
        return {"top1_fast_path": None, "top1_reference": None, "test_images": 0}
    from jaxsparse.data import load_split
    from jaxsparse.data.transforms import normalize
    from jaxsparse.models import evaluate_accuracy
    from jaxsparse.userfiles import resolve_data

    folder = resolve_data(args.test_data, None)
    images, labels, _ = load_split(folder, "test", progress=False)
    predictions = []
    for start in range(0, len(images), args.batch):
        chunk = images[start : start + args.batch]
        padded = np.concatenate([chunk, np.zeros((args.batch - len(chunk), *chunk.shape[1:]), chunk.dtype)])
        logits = np.asarray(fast_forward(normalize(jnp.asarray(padded))))[: len(chunk)]
        predictions.append(np.argmax(logits, -1))
    fast = float(np.mean(np.concatenate(predictions) == labels))
    reference = evaluate_accuracy(load_compressed(args.run_dir), images, labels).accuracy
    return {"top1_fast_path": fast, "top1_reference": reference, "test_images": int(len(images)),
            "top1_gap_points": 100 * abs(fast - reference)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, default=Path("runs/penni_cifar-resnet56-cpu/pipeline"),
                        help="a finished compress run (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per measurement (median)")
    parser.add_argument("--layer-repeats", type=int, default=5)
    parser.add_argument("--candidates", default=",".join(CANDIDATES),
                        help="forms the per-layer plan chooses among (default: %(default)s)")
    parser.add_argument("--uniform-forms", default="dense",
                        help="forms also timed as a whole model with that form in every layer "
                             f"(subset of {','.join(CANDIDATES)}; default: %(default)s)")
    parser.add_argument("--pad-multiples", default="1,8,16",
                        help="channel-padding candidates of the plan: every channel space of the shrunk model rounded "
                             "up to a multiple of m with zero channels (1 = none; default: %(default)s)")
    parser.add_argument("--fold-bn", action=argparse.BooleanOptionalAction, default=True,
                        help="fold BatchNorm into the convs of BOTH models for the headline (default: on)")
    parser.add_argument("--compiler-options", type=json.loads, default={},
                        help='XLA compiler options for every compiled function of both models, as JSON '
                             '(e.g. \'{"xla_cpu_enable_fast_math": true}\'; default: none)')
    parser.add_argument("--channel-sweep", default="0.5,0.75",
                        help="fractions of inner channels additionally removed at random for the sweep ('' = none; default: %(default)s)")
    parser.add_argument("--out", type=Path, default=None,
                        help="results JSON (default: benchmarks/results/inference_speed_<model>.json)")
    parser.add_argument("--latency-batches", default="1,8",
                        help="small batches also timed, dense model against the chosen plan ('' = none; default: %(default)s)")
    parser.add_argument("--latency-calls", type=int, default=200,
                        help="timed calls per model and small batch, interleaved, after warm-up (default: %(default)s)")
    parser.add_argument("--torch-python", default=None,
                        help="python of an environment with PyTorch (CPU build): its frozen dense ResNet is timed in the "
                             "same run as a second dense engine (default: none, XLA's dense model only)")
    parser.add_argument("--torch-threads", default="2,1", help="PyTorch intra-op thread counts timed (default: %(default)s)")
    parser.add_argument("--torch-formats", default="nchw,channels_last",
                        help="PyTorch memory formats timed (default: %(default)s)")
    parser.add_argument("--test-data", type=Path, default=None,
                        help="CIFAR-10 folder whose test split scores the fast path (default: $JAXSPARSE_CIFAR10, else <shared>/data/cifar10-jpeg; "
                             "'none' skips it)")
    args = parser.parse_args(argv)
    candidates = tuple(f for f in args.candidates.split(",") if f)
    try:
        latency_batches = positive_ints("--latency-batches", args.latency_batches) if args.latency_batches.strip() else ()
        pad_multiples = positive_ints("--pad-multiples", args.pad_multiples)
        torch_threads = positive_ints("--torch-threads", args.torch_threads)
    except UsageError as error:
        parser.error(str(error))
    if args.latency_calls < 1:
        parser.error(f"--latency-calls: expected a positive integer, got {args.latency_calls!r}")
    uniform = tuple(f for f in args.uniform_forms.split(",") if f)
    for name, forms in (("--candidates", candidates), ("--uniform-forms", uniform)):
        unknown = [f for f in forms if f not in CANDIDATES]
        if unknown or not forms and name == "--candidates":
            parser.error(f"{name}: expected a comma-separated subset of {list(CANDIDATES)}, got {','.join(forms)!r}")
    if not isinstance(args.compiler_options, dict):
        parser.error(f"--compiler-options: expected a JSON object, got {args.compiler_options!r}")
    options = args.compiler_options
    torch_formats = tuple(f for f in args.torch_formats.split(",") if f.strip())
    if not torch_formats or set(torch_formats) - {"nchw", "channels_last"}:
        parser.error(f"--torch-formats: expected a comma-separated subset of nchw,channels_last, got {args.torch_formats!r}")

    config, weights = run_config(args.run_dir)
    if args.torch_python is not None and not (config.model.startswith("resnet") and weights):
        parser.error(f"--torch-python: the PyTorch peer runs the CIFAR ResNets from their weights file; the run in "
                     f"{str(args.run_dir)!r} compressed {config.model!r} (weights: {weights!r})")
    out_path = args.out or Path(f"benchmarks/results/inference_speed_{config.model}.json")
    image_shape = (8, 8, 3) if config.model == "digits-cnn" else (32, 32, 3)
    padding_applies = config.model.startswith("resnet")
    if not padding_applies:
        pad_multiples = (1,)
    dense = initial_model(config, weights)
    compressed = bake_quantization(load_compressed(args.run_dir))
    dense_totals = summarize(describe_layers(dense, input_shape=(1, *image_shape)))
    compressed_totals = summarize(describe_layers(compressed, input_shape=(1, *image_shape)))
    x = jax.random.normal(jax.random.key(1), (args.batch, *image_shape))
    fold = fold_batchnorm if args.fold_bn else (lambda m: m)

    def compressed_model(plan, pad: int = 1, *, fold_bn: bool = args.fold_bn) -> nnx.Module:
        """The compressed model run by ``plan`` (a form, or layer path -> form; layers a form cannot run stay dense).

        With BatchNorm folded, a ResNet with sparse-kernel layers is chained channel-planar with the
        biases, residual additions and ReLUs in the kernels' epilogues (``fuse_sparse_resnet``).
        """
        model = bake_quantization(load_compressed(args.run_dir))
        if pad > 1:
            pad_channels(model, pad)
        apply_plan(model, runnable_plan(model, plan))
        if not fold_bn:
            return model
        fold_batchnorm(model)
        if isinstance(model, CifarResNet) and any(iter_layers(model, SparseCoefficientConv)):
            return fuse_sparse_resnet(model)
        return model

    efficiency = conv_efficiency(args.batch, args.layer_repeats, options) if image_shape[0] == 32 else []

    # Per-layer forms are timed on the shrunk layers; the whole-model plan (those forms or all dense
    # convs, at each channel padding) is then chosen by whole-model timing in a phase of its own, so
    # the headline figures below come from fresh samples.
    choice, layer_timings = layer_plan(compressed, args.batch, args.layer_repeats, image_shape, candidates, options)
    plans = {}
    for m in pad_multiples:
        plans[f"all dense, channels to x{m}"] = (m, "dense")
        if any(f != "dense" for f in choice.values()):
            plans[f"per-layer forms, channels to x{m}"] = (m, choice)
    if "sparse_cpu" in candidates and available()[0]:
        # The kernel skips zero channels whatever their number: no padding variants.
        plans["sparse kernel wherever it applies"] = (1, "sparse_cpu")
    if "sparse_pallas" in candidates and jax.default_backend() != "cpu":  # Pallas compiles on GPU/TPU only
        plans["Pallas kernel wherever it applies"] = (1, "sparse_pallas")
    plan_seconds = {}
    if len(plans) > 1:
        plan_forwards = {name: jitted_forward(compressed_model(form, m), x, options) for name, (m, form) in plans.items()}
        plan_seconds, _ = interleaved_seconds(plan_forwards, x, max(3, args.repeats // 2), "whole-model plan candidates")
    chosen = min(plan_seconds, key=plan_seconds.get) if plan_seconds else next(iter(plans))
    pad, plan = plans[chosen]
    choice = runnable_plan(compressed, plan)

    variants = {"dense model": fold(initial_model(config, weights)),
                "compressed, measured plan": compressed_model(choice, pad)}
    if args.fold_bn:
        variants["dense model, BatchNorm not folded"] = initial_model(config, weights)
        variants["compressed, measured plan, BatchNorm not folded"] = compressed_model(choice, pad, fold_bn=False)
    for form in uniform:
        variants[f"compressed, all {form}"] = compressed_model(form)
    variants["dense model, convs removed"] = without_convs(fold(initial_model(config, weights)))
    variants["compressed, measured plan, convs removed"] = without_convs(compressed_model(choice, pad))
    sweep = [float(f) for f in args.channel_sweep.split(",") if f.strip()]
    sweep_macs = {}
    for fraction in sweep:
        variant = load_compressed(args.run_dir, shrunk=False)
        drop_inner_channels(variant, fraction)
        shrink(variant)
        bake_quantization(variant)
        name = f"sweep: {int(round(100 * fraction))}% inner channels dropped, dense convs"
        sweep_macs[name] = summarize(describe_layers(variant, input_shape=(1, *image_shape)))["macs_dense"]
        variants[name] = fold(apply_plan(variant, "dense"))

    forwards = {name: jitted_forward(m, x, options) for name, m in variants.items()}
    outputs = {name: np.asarray(fn(x)) for name, fn in forwards.items()}  # warm-up
    for name, out in outputs.items():  # every variant of one model computes that model
        if "convs removed" not in name and not name.startswith("sweep"):
            ref = outputs["dense model" if name.startswith("dense") else "compressed, measured plan"]
            np.testing.assert_allclose(out, ref, rtol=1e-3, atol=1e-3 * float(np.abs(ref).max()), err_msg=name)
    peer = TorchPeer(args.torch_python, weights, int(config.model.removeprefix("resnet"))) if args.torch_python else None
    peer_logits = {}
    if peer is not None:  # the peer computes the same dense model
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            np.save(Path(folder) / "x.npy", np.asarray(x, np.float32))
            for fmt in torch_formats:
                peer.ask(op="build", batch=args.batch, format=fmt)
                logits = np.load(peer.ask(op="logits", batch=args.batch, format=fmt, input=str(Path(folder) / "x.npy"))["logits"])
                ref = outputs["dense model"]
                peer_logits[fmt] = float(np.max(np.abs(logits - ref)) / np.max(np.abs(ref)))
                np.testing.assert_allclose(logits, ref, rtol=1e-3, atol=1e-3 * float(np.abs(ref).max()), err_msg=f"PyTorch {fmt}")
    peers = torch_variants(peer, args.batch, torch_formats, torch_threads)
    seconds, spread = interleaved_seconds(forwards, x, args.repeats, "whole models", peers)
    load_during = list(os.getloadavg())
    throughput = {name: args.batch / s for name, s in seconds.items()}
    dense_engine = fastest_dense(seconds)
    speedup = seconds[dense_engine] / seconds["compressed, measured plan"]
    mac_factor = dense_totals["macs_dense"] / compressed_totals["macs_sparse"]

    breakdown = {}
    for model_name, prefix in (("dense", "dense model"), ("compressed", "compressed, measured plan")):
        total, rest = seconds[prefix], seconds[f"{prefix}, convs removed"]
        breakdown[model_name] = {"total_s": total, "without_convs_s": rest, "convs_s": total - rest,
                                 "conv_share": (total - rest) / total}
        if args.fold_bn:
            unfolded = seconds[f"{prefix}, BatchNorm not folded"]
            breakdown[model_name].update(bn_not_folded_s=unfolded, bn_folding_gain=unfolded / total)

    accuracy = fast_path_accuracy(args, config, forwards["compressed, measured plan"], image_shape)
    small = latency({"dense model": variants["dense model"], "compressed, measured plan": variants["compressed, measured plan"]},
                    latency_batches, args.latency_calls, image_shape, options, peer, torch_formats, torch_threads)  # fmt: skip
    if peer is not None:
        peer.close()
    small_engine = {b: fastest_dense(r, key=lambda v: v["median_ms"]) for b, r in small.items()}
    small_speedup = {b: r[small_engine[b]]["median_ms"] / r["compressed, measured plan"]["median_ms"] for b, r in small.items()}

    device = jax.devices()[0]
    print(f"\n{config.model} from {args.run_dir}, batch {args.batch}, {device.device_kind} ({os.cpu_count()} CPUs visible)"
          f"{', BatchNorm folded into convs (both models)' if args.fold_bn else ''}")
    if efficiency:
        print("3x3 conv efficiency: " + ", ".join(f"{r['hw']}px {r['c_in']}->{r['c_out']}: {r['gmac_per_s']:.1f}" for r in efficiency)
              + " GMAC/s")
    if plan_seconds:
        print("whole-model plan candidates (s/batch): " + ", ".join(f"{n}: {s:.3f}" for n, s in plan_seconds.items())
              + f" -> {chosen}")
    print(f"{'variant':<58} {'images/s':>10} {'vs dense':>9} {'dense-shape MACs':>17}")
    shape_macs = {"dense model": dense_totals["macs_dense"], "dense model, BatchNorm not folded": dense_totals["macs_dense"], **sweep_macs}
    for name in seconds:
        macs = shape_macs.get(name, dense_totals["macs_dense"] if "PyTorch" in name else compressed_totals["macs_dense"])
        print(f"{name:<58} {throughput[name]:>10.1f} {seconds['dense model'] / seconds[name]:>8.2f}x "
              f"{'' if 'removed' in name else format(dense_totals['macs_dense'] / macs, '16.2f') + 'x'}")
    for model_name, b in breakdown.items():
        print(f"time breakdown, {model_name}: convs {b['convs_s']:.3f} s ({100 * b['conv_share']:.0f}%), "
              f"everything else {b['without_convs_s']:.3f} s"
              + (f"; BatchNorm folding {b['bn_folding_gain']:.2f}x" if args.fold_bn else ""))
    print(f"load average during timing: {load_during}")
    print("process CPU per call (median): " + ", ".join(f"{n}: {1e3 * spread[n]['cpu_median_s']:.1f} ms"
                                                        for n in dict.fromkeys(("compressed, measured plan", dense_engine, "dense model"))
                                                        if n in spread))  # fmt: skip
    for b, r in small.items():
        print(f"batch {b}: dense ({small_engine[b]}) {r[small_engine[b]]['median_ms']:.2f} ms, compressed "
              f"{r['compressed, measured plan']['median_ms']:.2f} ms (median of {r['dense model']['calls']} calls) -> {small_speedup[b]:.2f}x")
    if accuracy.get("top1_fast_path") is not None:
        print(f"top-1 on {accuracy['test_images']} test images: fast path {100 * accuracy['top1_fast_path']:.2f}%, "
              f"training form {100 * accuracy['top1_reference']:.2f}%")
    counts = {f: sum(1 for c in choice.values() if c == f) for f in CANDIDATES}
    print(f"plan: {counts}, channels padded to x{pad}; MACs dense {dense_totals['macs_dense']:,} -> sparse-effective "
          f"{compressed_totals['macs_sparse']:,} ({mac_factor:.2f}x fewer); realised/theoretical = {speedup / mac_factor:.2f}")
    print(f"faster dense engine at batch {args.batch}: {dense_engine}")
    headline = {
        "speedup": speedup,
        "dense_engine": dense_engine,
        "speedup_vs_xla_dense": seconds["dense model"] / seconds["compressed, measured plan"],
        "realised_over_theoretical": speedup / mac_factor,
        "mac_reduction": mac_factor,
        "mac_reduction_fraction": 1.0 - 1.0 / mac_factor,
        "dense_shape_mac_reduction": dense_totals["macs_dense"] / compressed_totals["macs_dense"],
        "model": config.model,
        "device": device.device_kind,
        "platform": device.platform,
        "batch": args.batch,
        "plan": counts,
        "channel_padding": pad,
        "batchnorm_folded": args.fold_bn,
        "conv_share_dense": breakdown["dense"]["conv_share"],
        "candidates": list(candidates),
        "load_average": [round(v, 2) for v in load_during],
        "cpus_visible": os.cpu_count(),
        **accuracy,
        **{f"speedup_batch{b}": v for b, v in small_speedup.items()},
        **{f"dense_engine_batch{b}": v for b, v in small_engine.items()},
        "torch": peer.info if peer is not None else None,
    }
    atomic_write_json(out_path, {**headline, "images_per_second": throughput, "seconds_per_batch": seconds,
                                 "seconds_per_batch_spread": spread, "torch_logits_max_relative_difference": peer_logits,
                                 "time_breakdown": breakdown, "compiler_options": options,
                                 "plan_candidates_seconds": plan_seconds,
                                 "latency": {str(b): r for b, r in small.items()},
                                 "conv_efficiency": efficiency,
                                 "layer_choice": choice, "layer_seconds": layer_timings, "run_dir": str(args.run_dir),
                                 "macs": {"dense": dense_totals, "compressed": compressed_totals},
                                 "channel_sweep": {name: {"speedup": seconds["dense model"] / seconds[name],
                                                          "dense_shape_mac_reduction": dense_totals["macs_dense"] / m}
                                                   for name, m in sweep_macs.items()}})
    print(json.dumps(headline))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
