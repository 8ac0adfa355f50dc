"""Does one compiled model run faster with a compressed model's weight values? A control for inference_speed.py.

``inference_speed.py`` may pick, for the compressed ResNet, dense convs with its channel spaces
padded back up (``--pad-multiples``). At x16 padding the shrunk ResNet-56's convs have exactly the
dense model's shapes, so any speedup left must come from somewhere other than MACs. This script
separates graph from values. It times, in alternation (median of ``--rounds``):

* ``dense``: the dense model, BatchNorm folded;
* ``compressed_x16``: the compressed model, dense convs, channels padded to x16, BatchNorm folded;
* ``dense_graph_compressed_values``: the dense model's graph with every tensor replaced by the
  compressed model's tensor of the same path and shape (the function differs, since the shrunk
  blocks route channels through index maps, but the work does not).

It also checks that the first and third compile to the same optimized HLO (metadata stripped),
i.e. the same kernels and the same autotuned conv algorithms. A speedup of the third over the
first is then a property of the values (zero-heavy weights and activations), not of the graph.

Example::

    python benchmarks/value_dependence.py --run-dir runs/penni_cifar-resnet56-cpu/pipeline
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import statistics
import sys
import time
from pathlib import Path

import jax
from flax import nnx
from runkit.progress import progress_bar

from runkit import atomic_write_json
from jaxsparse.penni.inference import apply_plan, bake_quantization, fold_batchnorm, pad_channels
from jaxsparse.penni.pipeline import initial_model, load_compressed, run_config


def _strip_metadata(hlo: str) -> str:
    return re.sub(r", metadata=\{[^}]*\}", "", hlo)


def kernel_census(hlo: str) -> dict[str, int]:
    """Custom-call targets and fusion count of an optimized HLO module's text."""
    census = collections.Counter(re.findall(r'custom_call_target="([^"]+)"', hlo))
    census["fusions"] = len(re.findall(r"^\s*\S+ = \S+ fusion\(", hlo, re.M))
    return dict(census)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, default=Path("runs/penni_cifar-resnet56-cpu/pipeline"),
                        help="a finished compress run of a CIFAR ResNet (default: %(default)s)")
    parser.add_argument("--batches", default="128,1024", help="batch sizes (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=40, help="timed calls of each model per batch (default: %(default)s)")
    parser.add_argument("--pad-multiple", type=int, default=16,
                        help="channel padding of the compressed model (default: %(default)s, the dense ResNets' shapes)")
    parser.add_argument("--out", type=Path, default=None,
                        help="results JSON (default: benchmarks/results/value_dependence_<model>_<platform>.json)")
    args = parser.parse_args(argv)
    try:
        batches = tuple(int(b) for b in args.batches.split(","))
    except ValueError:
        batches = ()
    if not batches or min(batches) < 1:
        parser.error(f"--batches: expected comma-separated positive integers, got {args.batches!r}")
    if args.rounds < 1 or args.pad_multiple < 1:
        parser.error(f"--rounds and --pad-multiple: expected positive integers, got {args.rounds} and {args.pad_multiple}")

    config, weights = run_config(args.run_dir)
    if not config.model.startswith("resnet"):
        parser.error(f"--run-dir: expected a run of a CIFAR ResNet, got model {config.model!r}")

    def dense():
        return fold_batchnorm(initial_model(config, weights))

    compressed = bake_quantization(load_compressed(args.run_dir))
    pad_channels(compressed, args.pad_multiple)
    fold_batchnorm(apply_plan(compressed, "dense"))
    swapped = dense()
    source = dict(nnx.to_flat_state(nnx.state(compressed)))
    flat = nnx.to_flat_state(nnx.state(swapped))
    copied = 0
    for path, variable in flat:
        other = source.get(path)
        if other is not None and other.get_value().shape == variable.get_value().shape:
            variable.set_value(other.get_value())
            copied += 1
    nnx.update(swapped, nnx.from_flat_state(flat))
    models = {"dense": dense(), "compressed_x16": compressed, "dense_graph_compressed_values": swapped}

    device = jax.devices()[0]
    results = {"model": config.model, "device": device.device_kind, "platform": device.platform,
               "tensors_swapped": copied, "tensors_total": len(flat), "pad_multiple": args.pad_multiple}
    for batch in batches:
        x = jax.random.normal(jax.random.key(1), (batch, 32, 32, 3))
        forwards, hlo = {}, {}
        for name, model in models.items():
            model.eval()
            graphdef, state = nnx.split(model)
            compiled = jax.jit(lambda s, v, g=graphdef: nnx.merge(g, s)(v)).lower(state, x).compile()
            forwards[name] = lambda v, c=compiled, s=state: c(s, v)
            hlo[name] = _strip_metadata(compiled.as_text())
        for forward in forwards.values():
            for _ in range(3):
                jax.block_until_ready(forward(x))
        samples = {name: [] for name in forwards}
        for _ in progress_bar(range(args.rounds), desc=f"batch {batch}", file=sys.stderr):
            for name, forward in forwards.items():
                t = time.perf_counter()
                jax.block_until_ready(forward(x))
                samples[name].append(time.perf_counter() - t)
        ms = {name: 1e3 * statistics.median(v) for name, v in samples.items()}
        results[f"batch_{batch}"] = {
            "ms": ms,
            "same_executable": hlo["dense"] == hlo["dense_graph_compressed_values"],
            "kernels": {name: kernel_census(text) for name, text in hlo.items()},
            "speedup_compressed": ms["dense"] / ms["compressed_x16"],
            "speedup_from_values": ms["dense"] / ms["dense_graph_compressed_values"],
        }
        print(f"batch {batch}: " + ", ".join(f"{n} {v:.3f} ms" for n, v in ms.items())
              + f"; same executable: {results[f'batch_{batch}']['same_executable']}")

    first = f"batch_{batches[0]}"
    headline = {"speedup_compressed": results[first]["speedup_compressed"],
                "speedup_from_values": results[first]["speedup_from_values"],
                "same_executable": all(results[f"batch_{b}"]["same_executable"] for b in batches),
                "batch": batches[0], "model": config.model, "device": device.device_kind, "platform": device.platform}
    out = args.out or Path(f"benchmarks/results/value_dependence_{config.model}_{device.platform}.json")
    atomic_write_json(out, {**headline, **results})
    print(json.dumps(headline))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
