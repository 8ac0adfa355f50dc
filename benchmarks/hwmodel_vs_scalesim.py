"""Dense systolic cycles: hwmodel's closed form against SCALE-Sim v3, side by side.

For every conv layer of ResNet-20 (CIFAR, 32x32 array) and six layer shapes outside it
(three of them also on a non-square 16x8 array), in the OS, WS and IS dataflows, prints our compute
cycles next to SCALE-Sim's "Total Cycles" and the wall time of both.

SCALE-Sim 3.0.0 needs numpy < 2.4, so it lives in its own environment and is called
through a subprocess (this same file runs as the driver there, importing only the stdlib
and scalesim). Install once:

    python3 -m venv /tmp/scalesim-venv
    /tmp/scalesim-venv/bin/pip install scalesim==3.0.0 "numpy<2.4"

Run (the SCALE-Sim interpreter comes from --scalesim-python or $SCALESIM_PYTHON):

    python benchmarks/hwmodel_vs_scalesim.py --scalesim-python /tmp/scalesim-venv/bin/python

Last line: JSON with max_cycle_diff and speedup_vs_scalesim.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCALESIM_CONFIG = """[general]
run_name = hwmodel

[architecture_presets]
ArrayHeight: {rows}
ArrayWidth: {cols}
IfmapSramSzkB: 4096
FilterSramSzkB: 4096
OfmapSramSzkB: 4096
IfmapOffset: 0
FilterOffset: 100000000
OfmapOffset: 200000000
Dataflow: {dataflow}
ReadRequestBuffer: 32
WriteRequestBuffer: 32

[layout]
IfmapCustomLayout: False
IfmapSRAMBankBandwidth: 10
IfmapSRAMBankNum: 10
IfmapSRAMBankPort: 2
FilterCustomLayout: False
FilterSRAMBankBandwidth: 10
FilterSRAMBankNum: 10
FilterSRAMBankPort: 2

[sparsity]
SparsitySupport: false
SparseRep: ellpack_block
OptimizedMapping: false
BlockSize: 8
RandomNumberGeneratorSeed: 40

[run_presets]
InterfaceBandwidth: CALC
UseRamulatorTrace: False
"""

# Layer shapes outside ResNet-20: (name, h_in, c_in, c_out, k, stride, padding)
EXTRA_LAYERS = [
    ("vgg16.conv1_2", 32, 64, 64, 3, 1, 1),
    ("vgg16.conv5_1", 2, 512, 512, 3, 1, 1),
    ("conv1_7x7_s2", 32, 3, 64, 7, 2, 3),
    ("1x1_expand", 14, 64, 256, 1, 1, 0),
    ("5x5_conv", 13, 64, 96, 5, 1, 2),
    ("odd.5x5_s2", 23, 37, 45, 5, 2, 2),
]


def _driver(args: argparse.Namespace) -> int:
    """Runs inside the SCALE-Sim environment: one topology, one dataflow; prints JSON."""
    from scalesim.scale_sim import scalesim  # noqa: PLC0415 (only available in that environment)

    start = time.perf_counter()
    sim = scalesim(save_disk_space=True, verbose=False, config=args.config, topology=args.topology, layout=args.layout)
    sim.run_scale(top_path=args.workdir)
    wall = time.perf_counter() - start
    report = next(Path(args.workdir).glob("*/COMPUTE_REPORT.csv"))
    lines = [l.split(",") for l in report.read_text().strip().splitlines()[1:]]
    print(json.dumps({"cycles": [int(l[2]) for l in lines], "wall_s": wall}))
    return 0


def _run_scalesim(python: str, layers, rows: int, cols: int, dataflow: str) -> tuple[list[int], float]:
    with tempfile.TemporaryDirectory(prefix="scalesim_") as tmp:
        tmp = Path(tmp)
        (tmp / "config.cfg").write_text(SCALESIM_CONFIG.format(rows=rows, cols=cols, dataflow=dataflow))
        topo = ["Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, Num Filter, Strides,"]
        layout = ["Layer name, a, b, c, d, e, f, g, h, i,"]
        for name, h_in, c_in, c_out, k, stride, padding in layers:
            # SCALE-Sim has no padding and computes ceil((H - k + s) / s) outputs: give it the
            # padded rows the convolution actually reads, (h_out - 1) * s + k
            h_out = (h_in + 2 * padding - k) // stride + 1
            padded = (h_out - 1) * stride + k
            topo.append(f"{name}, {padded}, {padded}, {k}, {k}, {c_in}, {c_out}, {stride},")
            layout.append(f"{name}, 1, 1, 1, 1, 1, 1, 1, 1, 1,")
        (tmp / "topology.csv").write_text("\n".join(topo) + "\n")
        (tmp / "layout.csv").write_text("\n".join(layout) + "\n")
        command = [python, os.path.abspath(__file__), "--driver", "--config", str(tmp / "config.cfg"), "--topology", str(tmp / "topology.csv"), "--layout", str(tmp / "layout.csv"), "--workdir", str(tmp / "out")]
        done = subprocess.run(command, cwd=tmp, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"SCALE-Sim failed ({python}):\n{done.stderr[-2000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["cycles"], result["wall_s"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scalesim-python", default=os.environ.get("SCALESIM_PYTHON", "/tmp/scalesim-venv/bin/python"), help="Python interpreter of the SCALE-Sim environment (default: $SCALESIM_PYTHON or /tmp/scalesim-venv/bin/python)")
    parser.add_argument("--out", default="benchmarks/results/hwmodel_vs_scalesim.json")
    parser.add_argument("--repeats", type=int, default=20, help="timed repetitions of our model")
    parser.add_argument("--driver", action="store_true", help=argparse.SUPPRESS)
    for hidden in ("--config", "--topology", "--layout", "--workdir"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.driver:
        return _driver(args)
    if not Path(args.scalesim_python).exists():
        raise SystemExit(f"--scalesim-python: expected the Python of a SCALE-Sim 3.0.0 environment, got {args.scalesim_python!r} (not found). Install: python3 -m venv /tmp/scalesim-venv && /tmp/scalesim-venv/bin/pip install scalesim==3.0.0 'numpy<2.4'")

    import jax
    import jax.numpy as jnp
    import numpy as np

    from hwmodel.cost import systolic_compute_cycles
    from hwmodel.workload import model_layers
    from runkit import atomic_write_json

    resnet = [(l["name"], l["h_in"], l["c_in"], l["c_out"], l["kernel_size"], l["stride"], (l["kernel_size"] - 1) // 2) for l in model_layers("resnet20") if l["kind"] == "conv"]
    # a non-square array too (SCALE-Sim is slow on small arrays: three of the shapes)
    small = [l for l in EXTRA_LAYERS if l[0] in ("conv1_7x7_s2", "1x1_expand", "odd.5x5_s2")]
    suites = [("resnet20", resnet, 32, 32), ("extra", EXTRA_LAYERS, 32, 32), ("extra", small, 16, 8)]

    @jax.jit
    def ours(m, k, n, rows, cols):
        return {df: systolic_compute_cycles(m, k, n, rows, cols, df) for df in ("os", "ws", "is")}

    rows_out, max_diff, scalesim_wall, scalesim_layers, our_wall, our_layers = [], 0, 0.0, 0, 0.0, 0
    for suite, layers, rows, cols in suites:
        h_out = [(h + 2 * p - k) // s + 1 for _, h, _, _, k, s, p in layers]
        m = jnp.asarray([h * h for h in h_out], jnp.float32)
        kk = jnp.asarray([k * k * c_in for _, _, c_in, _, k, _, _ in layers], jnp.float32)
        n = jnp.asarray([c_out for _, _, _, c_out, _, _, _ in layers], jnp.float32)
        r, c = jnp.float32(rows), jnp.float32(cols)
        jax.block_until_ready(ours(m, kk, n, r, c))  # compile
        start = time.perf_counter()
        for _ in range(args.repeats):
            result = jax.block_until_ready(ours(m, kk, n, r, c))
        our_wall += (time.perf_counter() - start) / args.repeats
        our_layers += len(layers)
        for dataflow in ("os", "ws", "is"):
            theirs, wall = _run_scalesim(args.scalesim_python, layers, rows, cols, dataflow)
            scalesim_wall += wall
            scalesim_layers += len(layers)
            mine = np.asarray(result[dataflow]).astype(np.int64)
            for layer, a, b in zip(layers, mine, theirs):
                diff = int(a) - int(b)
                max_diff = max(max_diff, abs(diff))
                rows_out.append({"suite": suite, "array": f"{rows}x{cols}", "dataflow": dataflow, "layer": layer[0], "hwmodel": int(a), "scalesim": int(b), "diff": diff})
            print(f"{suite:>8} {rows}x{cols} {dataflow}: {len(layers)} layers, max |diff| = {max(abs(r_['diff']) for r_ in rows_out[-len(layers):])}, SCALE-Sim {wall:.2f}s")

    print(f"\n{'suite':<9}{'array':<7}{'df':<4}{'layer':<22}{'hwmodel':>10}{'SCALE-Sim':>11}{'diff':>6}")
    for r_ in rows_out:
        print(f"{r_['suite']:<9}{r_['array']:<7}{r_['dataflow']:<4}{r_['layer']:<22}{r_['hwmodel']:>10}{r_['scalesim']:>11}{r_['diff']:>6}")
    per_layer_scalesim = scalesim_wall / scalesim_layers
    per_layer_ours = our_wall / (our_layers * 3)
    headline = {"max_cycle_diff": max_diff, "speedup_vs_scalesim": per_layer_scalesim / per_layer_ours}
    atomic_write_json(args.out, {
        "headline": headline, "layers": rows_out,
        "timing": {"scalesim_s_per_layer": per_layer_scalesim, "hwmodel_s_per_layer": per_layer_ours, "hwmodel_note": "one jitted call evaluates all layers of a suite in all three dataflows; time per layer-dataflow", "repeats": args.repeats},
        "machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg(), "jax_backend": jax.default_backend()},
    })
    print(f"SCALE-Sim {per_layer_scalesim * 1e3:.1f} ms per layer; hwmodel {per_layer_ours * 1e6:.2f} us per layer")
    print(json.dumps(headline))
    return 0


if __name__ == "__main__":
    sys.exit(main())
