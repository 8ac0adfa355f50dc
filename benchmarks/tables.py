"""Figure tables of README.md and docs/*.md, rendered from benchmarks/results/*.json.

Every table of figures in the documentation sits between two markers::

    <!-- table:NAME -->
    | ... rendered rows ... |

    Source: `benchmarks/results/FILE.json`
    <!-- /table:NAME -->

and ``TABLES`` maps ``NAME`` to a function that renders the block from the JSON files it
reads; the files read are listed under the table. Nothing between the markers is written by
hand, so a table cannot drift from the benchmark results it quotes.

    python benchmarks/tables.py            # rewrite every table in place
    python benchmarks/tables.py --check    # exit 1, listing tables that differ or are unknown

Example::

    >>> text = "<!-- table:hw_search -->\\n<!-- /table:hw_search -->\\n"
    >>> new_text, problems = render_text(text, Results())
    >>> problems, new_text.count("| ResNet-20 |")
    ([], 1)
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"

# <!-- table:NAME --> ... <!-- /table:NAME -->; NAME is letters, digits, "_" and "-".
_OPEN = re.compile(r"<!-- table:([\w-]+) -->")
_CLOSE = re.compile(r"<!-- /table:([\w-]+) -->")


def documents(root: Path = REPO) -> list[Path]:
    """The Markdown files whose tables are generated: README.md and docs/*.md."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


@dataclass
class Results:
    """Loads ``benchmarks/results/*.json`` on demand and remembers which files were read.

    Args:
      directory: folder of the JSON files.
      overrides: file name -> already-parsed content, used instead of the file (tests).
    """

    directory: Path = RESULTS
    overrides: dict = field(default_factory=dict)
    used: list[str] = field(default_factory=list)

    def __call__(self, name: str):
        if name not in self.used:
            self.used.append(name)
        if name in self.overrides:
            return self.overrides[name]
        return json.loads((self.directory / name).read_text())


TABLES: dict[str, Callable[[Results], str]] = {}


def table(name: str):
    """Registers ``fn(results) -> markdown`` as the renderer of the table ``name``."""

    def register(fn):
        if name in TABLES:
            raise ValueError(f"table {name!r} is registered twice")
        TABLES[name] = fn
        return fn

    return register


# ---------------------------------------------------------------- formatting


def md_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown pipe table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def pct(x: float, digits: int = 1) -> str:
    """0.8679 -> '86.79%' with digits=2."""
    return f"{100 * x:.{digits}f}%"


def times(x: float, digits: int = 2) -> str:
    """2.4815 -> '2.48x'."""
    return f"{x:.{digits}f}x"


def fixed(x: float, digits: int = 2) -> str:
    return f"{x:.{digits}f}"


def grouped(n: float) -> str:
    """848954 -> '848,954'."""
    return f"{round(n):,}"


def sci(x: float, digits: int = 1) -> str:
    """83474412.8 -> '8.3e7'."""
    mantissa, exponent = f"{x:.{digits}e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def plain(x: float) -> str:
    """3000000.0 -> '3,000,000'; 1.05 -> '1.05' (shortest exact form, float32 noise rounded off)."""
    x = float(f"{x:.6g}")
    return grouped(x) if x.is_integer() else f"{x:g}"


def ms(seconds: float, digits: int = 2) -> str:
    return fixed(1e3 * seconds, digits)


def spread_ms(s: dict, digits: int = 1) -> str:
    """{'median', 'min', 'max'} in ms -> 'median [min, max]'."""
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}, {s['max']:.{digits}f}]"


def mib(nbytes: float) -> str:
    return f"{nbytes / 1e6:.2f} MB"


# ---------------------------------------------------------------- README


@table("headline")
def _headline(r: Results) -> str:
    cd = r("compress_default.json")["headline"]
    pc = r("penni_cifar_resnet56.json")
    inf = r("inference_speed_resnet56.json")
    gpu = r("inference_speed_resnet56_gpu.json")
    r20 = r("inference_speed_resnet20_quick.json")
    thr = r("hwmodel_throughput.json")
    ss = r("hwmodel_vs_scalesim.json")["headline"]
    sim = r("hwmodel_sim_compare.json")["headline"]
    srch = r("hw_search.json")["headline"]
    cs = r("codesign_cifar.json")["headline"]
    et = r("embedding_train.json")["headline"]
    sc = r("embedding_scaling.json")["headline"]
    nd = r("ndrec_table.json")
    cpu, cache = nd["systems"]["cpu_gpu"], nd["systems"]["gpu_cache"]
    ndrec = nd["systems"]["ndrec"]
    rows = [
        [f"compress ResNet-20 (quick default): params -{pct(cd['param_reduction'], 0)}, MACs -{pct(cd['mac_reduction'], 0)}, "
         f"top-1 -{fixed(cd['top1_drop_points'], 1)} points, {fixed(cd['wall_s'] / 60, 1)} min",
         "`python -m jaxsparse compress`", "[jaxsparse](docs/jaxsparse.md#the-main-job)"],
        [f"compress ResNet-56 (CPU schedule): params -{pct(pc['param_reduction'])}, MACs -{pct(pc['mac_reduction'])}, "
         f"top-1 {fixed(pc['accuracy_drop_points'], 2)} points below the fine-tuned baseline",
         "`python benchmarks/penni_cifar.py --model resnet56`", "[jaxsparse](docs/jaxsparse.md#resnet-56-on-the-cpu-schedule)"],
        [f"compressed ResNet-56 inference: {times(inf['speedup'])} XLA's dense model (CPU), {times(gpu['speedup'])} (GPU); "
         f"ResNet-20: {times(r20['speedup'])} the faster dense engine ({_engine(r20['dense_engine'])}) at batch {r20['batch']}, "
         f"{times(r20['speedup_batch1'])} at batch 1",
         "`python benchmarks/inference_speed.py`", "[jaxsparse](docs/jaxsparse.md#inference-speed)"],
        [f"co-design: {pct(cs['latency_reduction'])} lower modelled latency at equal top-1",
         "`python benchmarks/codesign_cifar.py`", "[jaxsparse](docs/jaxsparse.md#co-design-hardware-aware-compression)"],
        [f"accelerator model: {sci(thr['forward_exact_evals_per_s'])} layer x design evaluations/s, "
         f"gradient {times(thr['grad_over_exact_forward'], 1)} the forward",
         "`python benchmarks/hwmodel_throughput.py`", "[hwmodel](docs/hwmodel.md#throughput)"],
        [f"dense systolic cycles vs SCALE-Sim: max difference {ss['max_cycle_diff']}; analytic vs cycle-level "
         f"simulator: max error {pct(sim['max_rel_cycle_error'])}",
         "`python benchmarks/hwmodel_vs_scalesim.py`", "[hwmodel](docs/hwmodel.md#validation)"],
        [f"accelerator search: grid optimum with {times(srch['evaluation_ratio_grid_over_gradient'], 1)} fewer evaluations",
         "`python benchmarks/hw_search.py`", "[hwmodel](docs/hwmodel.md#accelerator-search)"],
        [f"embedding training step: {times(et['speedup_vs_fbgemm_sgd'])} FBGEMM's SGD, "
         f"{times(et['speedup_vs_fbgemm_rowwise_adagrad'])} its row-wise Adagrad",
         "`python benchmarks/embedding_train.py`", "[ndp](docs/ndp.md#embedding-step-against-fbgemm-and-pytorch)"],
        [f"DLRM step on 2 processes: {times(sc['scaling_2proc'])} the throughput of 1",
         "`python benchmarks/embedding_scaling.py`", "[ndp](docs/ndp.md#scaling-out-1-process-against-2)"],
        [f"NDRec-style system model: {times(cpu['period_s'] / ndrec['period_s'])} faster than CPU-GPU, "
         f"{times(cache['period_s'] / ndrec['period_s'])} than GPU caching",
         "`python benchmarks/ndrec_table.py`", "[ndp](docs/ndp.md#paper-like-comparison)"],
    ]
    return md_table(["figure", "command", "details"], rows)


# ---------------------------------------------------------------- jaxsparse


def _stage_rows(stages, with_time: str) -> list[list[str]]:
    return [[s["stage"], pct(s["top1"], 2), grouped(s["params"]), grouped(s["macs"]), fixed(s[with_time], 1)] for s in stages]


@table("compress_default_stages")
def _compress_default_stages(r: Results) -> str:
    d = r("compress_default.json")
    rows = _stage_rows(d["stages"], "seconds")
    first, rerun = d["runs"]["first"], d["runs"]["rerun"]
    return (md_table(["stage", "top-1", "params", "MACs (sparse-effective)", "seconds"], rows)
            + f"\n\n{d['data']['train']:,} training / {d['data']['test']:,} test images; the run took "
              f"{fixed(first['wall_s'], 1)} s wall ({fixed(first['cpu_s'], 1)} s CPU), "
              f"a rerun of the finished run {fixed(rerun['wall_s'], 1)} s.")


@table("compress_default_output")
def _compress_default_output(r: Results) -> str:
    d = r("compress_default.json")
    line = d["runs"]["first"]["last_line"]
    # The benchmark runs in a temporary folder; a plain run writes to the default --out,
    # runs/compress/<model>-<preset> (the default command runs the quick preset).
    line = re.sub(r"report in \S+$", f"report in runs/compress/{d['model']}-quick/", line)
    first, rerun = d["runs"]["first"], d["runs"]["rerun"]
    return (f"```\n{line}\n```\n\nThe run took {fixed(first['wall_s'] / 60, 1)} minutes on {d['machine']['cpus']} cores; "
            f"rerunning the finished run prints the same summary in {fixed(rerun['wall_s'], 1)} s.")


@table("penni_resnet56_stages")
def _penni_resnet56_stages(r: Results) -> str:
    d = r("penni_cifar_resnet56.json")
    dense = d["stages"][0]
    baseline = [f"dense baseline ({d['retrain_epochs'] + d['finetune_epochs']} epochs)", pct(d["top1_dense_baseline"], 2),
                grouped(dense["params"]), grouped(dense["macs"]), fixed(d["baseline_cpu_seconds"], 1)]
    rows = _stage_rows(d["stages"], "cpu_seconds")
    rows[0][0] = "pretrained"
    rows.insert(1, baseline)
    return md_table(["stage", "top-1", "params", "MACs (sparse-effective)", "CPU seconds"], rows)


@table("penni_resnet56_summary")
def _penni_resnet56_summary(r: Results) -> str:
    d = r("penni_cifar_resnet56.json")
    rows = [
        ["parameters removed", pct(d["param_reduction"])],
        ["MACs removed (sparse-effective)", pct(d["mac_reduction"])],
        ["top-1: pretrained / fine-tuned baseline / compressed",
         f"{pct(d['top1_pretrained'], 2)} / {pct(d['top1_dense_baseline'], 2)} / {pct(d['top1_compressed'], 2)}"],
        ["points below the baseline", fixed(d["accuracy_drop_points"], 2)],
        ["training / test images", f"{d['train_images']:,} / {d['test_images']:,}"],
        ["epochs: retrain + fine-tune (baseline: their sum)", f"{d['retrain_epochs']} + {d['finetune_epochs']}"],
        ["prune threshold s, distillation weight", f"{d['prune_std']}, {d['distill']}"],
        ["process CPU time (core-minutes) / wall minutes", f"{fixed(d['cpu_minutes'], 1)} / {fixed(d['wall_minutes'], 1)}"],
    ]
    for name, paper in d["paper"].items():
        figures = [f"{label} {pct(paper[key], 1)}" for key, label in
                   (("param_reduction", "params removed"), ("mac_reduction", "MACs removed"),
                    ("top1_dense", "top-1 dense"), ("top1_compressed", "top-1 compressed")) if key in paper]
        rows.append([f"reference: {name}", ", ".join(figures) + (f" ({paper['note']})" if "note" in paper else "")])
    return md_table(["figure", "value"], rows)


_INFERENCE = [("inference_speed_resnet20_quick.json", "ResNet-20 (quick default run), CPU"),
              ("inference_speed_resnet56.json", "ResNet-56 (CPU schedule), CPU"),
              ("inference_speed_resnet56_gpu.json", "ResNet-56 (CPU schedule), GPU")]


def _engine(name: str) -> str:
    """A dense engine's short label: the JAX model runs on XLA, the others are PyTorch variants."""
    return "XLA" if name == "dense model" else name.removeprefix("dense model, ")


@table("inference_speed")
def _inference_speed(r: Results) -> str:
    rows = []
    for name, label in _INFERENCE:
        d = r(name)
        plan = ", ".join(f"{k} {v}" for k, v in d["plan"].items() if v)
        spb = d["seconds_per_batch"]
        engine = d.get("dense_engine", "dense model")  # runs without a PyTorch peer had XLA only
        rows.append([label, f"{plan} (channels to x{d['channel_padding']})", f"{ms(spb[engine])} ({_engine(engine)})",
                     ms(spb["compressed, measured plan"]), f"**{times(d['speedup'])}**", times(d["mac_reduction"]),
                     fixed(d["realised_over_theoretical"]), times(d["dense_shape_mac_reduction"])])
    return md_table(["model, device", "plan (layers per form)", f"faster dense engine, ms / batch of {d['batch']}", "compressed ms",
                     "speedup", "counted MAC reduction", "realised / counted", "dense-shape MAC reduction"], rows)


@table("inference_small_batches")
def _inference_small_batches(r: Results) -> str:
    d = r("inference_speed_resnet20_quick.json")
    rows = []
    for batch, lat in d["latency"].items():
        engine = d.get(f"dense_engine_batch{batch}", "dense model")
        dense, xla, fast = lat[engine], lat["dense model"], lat["compressed, measured plan"]
        rows.append([batch, f"{fixed(dense['median_ms'])} ({_engine(engine)})", fixed(xla["median_ms"]), fixed(fast["median_ms"]),
                     f"{fixed(fast['min_ms'])}-{fixed(fast['max_ms'])}", f"**{times(dense['median_ms'] / fast['median_ms'])}**", dense["calls"]])
    engine = d.get("dense_engine", "dense model")
    spb = d["seconds_per_batch"]
    spread = d.get("seconds_per_batch_spread", {}).get("compressed, measured plan")
    rows.append([d["batch"], f"{ms(spb[engine], 1)} ({_engine(engine)})", ms(spb["dense model"], 1),
                 ms(spb["compressed, measured plan"], 1), f"{ms(spread['min_s'], 1)}-{ms(spread['max_s'], 1)}" if spread else "",
                 f"**{times(d['speedup'])}**", spread["calls"] if spread else ""])
    torch = d.get("torch")
    return (md_table(["batch", "faster dense engine, ms (median)", "XLA dense ms", "compressed ms (median)", "compressed min-max",
                      "speedup", "calls"], rows)
            + (f"\n\nPyTorch {torch['torch_version']} ran in the same run (frozen, `optimize_for_inference`; NCHW and "
               f"channels_last, 1 and 2 threads; the table names the faster engine at each batch)." if torch else "")
            + f"\n\nTop-1 on {d['test_images']:,} test images: {pct(d['top1_reference'], 2)} through the training "
              f"form, {pct(d['top1_fast_path'], 2)} through the chosen plan.")


@table("inference_time_breakdown")
def _inference_time_breakdown(r: Results) -> str:
    rows = []
    for name, label in _INFERENCE:
        tb = r(name)["time_breakdown"]
        for model in ("dense", "compressed"):
            t = tb[model]
            rows.append([label, model, ms(t["total_s"]), ms(t["without_convs_s"]), pct(t["conv_share"], 0),
                         ms(t["bn_not_folded_s"]), times(t["bn_folding_gain"])])
    return md_table(["model, device", "model", "ms / batch", "ms without convs", "conv share",
                     "ms, BatchNorm not folded", "gain from folding"], rows)


@table("inference_layer_forms")
def _inference_layer_forms(r: Results) -> str:
    rows = []
    for name, label in _INFERENCE[1:]:
        layers = r(name)["layer_seconds"]
        for form in next(iter(layers.values())):
            t = [v[form] for v in layers.values() if form in v]
            fastest = sum(1 for v in layers.values() if min(v, key=v.get) == form)
            rows.append([label, form, fixed(1e3 * statistics.median(t), 3), ms(sum(t), 1), f"{fastest} of {len(layers)}"])
    return md_table(["device", "form", "median ms per layer", "ms summed over layers", "fastest in"], rows)


@table("inference_conv_efficiency")
def _inference_conv_efficiency(r: Results) -> str:
    rows = []
    for name, label in _INFERENCE[1:]:
        for c in r(name)["conv_efficiency"]:
            rows.append([label, f"{c['hw']}x{c['hw']}", f"{c['c_in']} -> {c['c_out']}", fixed(c["ms"]), fixed(c["gmac_per_s"], 1)])
    return md_table(["device", "feature map", "channels", "ms", "GMAC/s"], rows)


@table("inference_channel_sweep")
def _inference_channel_sweep(r: Results) -> str:
    rows = []
    for name, label in _INFERENCE[1:]:
        for what, s in r(name)["channel_sweep"].items():
            rows.append([label, what.removeprefix("sweep: "), times(s["dense_shape_mac_reduction"]), times(s["speedup"])])
    return md_table(["device", "model", "dense-shape MAC reduction", "speedup"], rows)


@table("value_dependence")
def _value_dependence(r: Results) -> str:
    d = r("value_dependence_resnet56_gpu.json")
    rows = []
    for key in sorted((k for k in d if k.startswith("batch_")), key=lambda k: int(k.split("_")[1])):
        b = d[key]
        rows.append([key.split("_")[1], fixed(b["ms"]["dense"]), fixed(b["ms"][f"compressed_x{d['pad_multiple']}"]),
                     fixed(b["ms"]["dense_graph_compressed_values"]), times(b["speedup_compressed"]),
                     f"**{times(b['speedup_from_values'])}**", "yes" if b["same_executable"] else "no"])
    return md_table(["batch", "dense ms", f"compressed (x{d['pad_multiple']}) ms", "dense executable, compressed values ms",
                     "speedup, compressed", "speedup from values alone", "same executable"], rows) + (
        f"\n\n{d['device']}; {d['tensors_swapped']} of {d['tensors_total']} tensors swapped.")


def _codesign_points(d: dict) -> list[list[str]]:
    pts = sorted(d["points"].values(), key=lambda p: (p["method"] != "uniform", p.get("threshold") or p.get("cost_weight")))
    rows = []
    for p in pts:
        decomposed = [layer["coef_density"] for layer in p.get("layers", []) if layer["basis"] > 0]
        label = f"uniform s={p['threshold']:g}" if p["method"] == "uniform" else f"hardware-aware lambda={p['cost_weight']:g}"
        density = fixed(statistics.mean(decomposed), 3) if decomposed else ""
        rows.append([label, pct(p["top1"], 2), fixed(p["latency_ms"], 4), fixed(p["energy_uj"], 1), density])
    return rows


def _codesign_reductions(d: dict) -> str:
    parts = [f"lambda={p['cost_weight']:g}: {pct(p['latency_reduction'])}"
             for p in sorted(d["summary"]["comparison_interpolated"]["points"], key=lambda p: p["cost_weight"])]
    h = d["headline"]
    return (f"\n\nModelled latency reduction at equal top-1 on the interpolated uniform front: {'; '.join(parts)}. "
            f"{h['test_images']:,} test images; {fixed(h['cpu_minutes'], 1)} min of process CPU time, "
            f"{fixed(h['wall_minutes'], 1)} min wall.")


@table("codesign_points")
def _codesign_full(r: Results) -> str:
    d = r("codesign_cifar.json")
    header = ["point", "top-1", "latency (ms)", "energy (uJ)", "mean coef. density"]
    return md_table(header, _codesign_points(d)) + _codesign_reductions(d)


@table("codesign_quick_points")
def _codesign_quick(r: Results) -> str:
    d = r("codesign_cifar_quick.json")
    header = ["point", "top-1", "latency (ms)", "energy (uJ)", "mean coef. density"]
    rows = _codesign_points(d)
    j = d["joint"]
    rows.append([f"hardware only: uniform s={j['hardware_only']['threshold']:g} on the searched design",
                 pct(j["hardware_only"]["top1"], 2), fixed(j["hardware_only"]["latency_ms"], 4),
                 fixed(j["hardware_only"]["energy_uj"], 1), ""])
    rows.append([f"joint: lambda={j['round1']['cost_weight']:g} against the searched design", pct(j["round1"]["top1"], 2),
                 fixed(j["round1"]["latency_ms"], 4), fixed(j["round1"]["energy_uj"], 1), ""])
    h = d["headline"]
    return md_table(header, rows) + _codesign_reductions(d) + (
        f" Joint latency: {times(h['joint_latency_vs_hardware_only'])} hardware-only, "
        f"{times(h['joint_latency_vs_compression_only'])} compression-only.")


# ---------------------------------------------------------------- hwmodel


@table("scalesim")
def _scalesim(r: Results) -> str:
    d = r("hwmodel_vs_scalesim.json")
    groups: dict[tuple, list] = {}
    for layer in d["layers"]:
        groups.setdefault((layer["suite"], layer["array"], layer["dataflow"]), []).append(layer["diff"])
    rows = [[suite, array, flow.upper(), len(diffs), max(abs(x) for x in diffs)] for (suite, array, flow), diffs in groups.items()]
    t = d["timing"]
    return md_table(["layers", "array", "dataflow", "convs", "max cycle difference"], rows) + (
        f"\n\nTime per layer: SCALE-Sim {fixed(t['scalesim_s_per_layer'], 2)} s, hwmodel {sci(t['hwmodel_s_per_layer'])} s "
        f"(one jitted call for a suite in all three dataflows).")


@table("hwmodel_throughput")
def _hwmodel_throughput(r: Results) -> str:
    d = r("hwmodel_throughput.json")
    n = d["evaluations_per_call"]
    names = [("forward_exact", "exact forward"), ("forward_relaxed_whole_grid", "relaxed forward, whole grid"),
             ("forward_relaxed_blocked", f"relaxed forward, blocks of {d['design_block']}"),
             ("value_and_grad", "value + gradient, fused (`escalate_grid`)"),
             ("value_and_grad_autodiff", "value + gradient, autodiff of `evaluate_grid`")]
    rows = []
    for key, label in names:
        s = {k: 1e3 * v for k, v in d["wall_s_spread"][key].items() if k != "n"}
        rows.append([label, spread_ms(s), ms(d["cpu_s"][key], 1), sci(n / d["wall_s_spread"][key]["median"])])
    ratios = (f"\n\n{d['layers']} layers x {d['designs']} designs per call, {d['wall_s_spread']['forward_exact']['n']} interleaved rounds. "
              f"Gradient over exact forward {times(d['grad_over_exact_forward'], 1)}, over relaxed forward "
              f"{times(d['grad_over_relaxed_forward'], 1)} (CPU time {times(d['grad_over_relaxed_forward_cpu'], 1)}); "
              f"autodiff {times(d['autodiff_grad_over_relaxed_forward'], 1)} the relaxed forward, so the fused gradient is "
              f"{times(d['fused_vs_autodiff_speedup'], 1)} faster; gradients agree to {sci(d['fused_vs_autodiff_max_rel_grad_diff'])} relative.")
    return md_table(["call", "wall ms: median [min, max]", "CPU ms (median)", "evaluations/s"], rows) + ratios


@table("hwmodel_hlo_loops")
def _hwmodel_hlo_loops(r: Results) -> str:
    d = r("hwmodel_throughput.json")
    rows = [[k, v["fusions"], v["grid_loops"], v["block_loops"]] for k, v in d["hlo_loops"].items()]
    return md_table(["compiled function", "fusions", "loops over the grid", "loops per block"], rows)


@table("sim_compare")
def _sim_compare(r: Results) -> str:
    d = r("hwmodel_sim_compare.json")
    labels = {"random": "random small layers (in the tested domain)", "short_layers": "random layers under 500 modelled cycles",
              "resnet20": "ResNet-20 convs, one-shot pruned, both stage orders"}
    rows = [[labels.get(name, name), s["count"], pct(s["max_abs_rel_error"]), pct(s["mean_abs_rel_error"]) if "mean_abs_rel_error" in s else "",
             pct(s["p90_abs_rel_error"]) if "p90_abs_rel_error" in s else ""] for name, s in d["summary"].items()]
    return md_table(["cases", "count", "max error", "mean error", "90th percentile"], rows)


@table("escalate_table")
def _escalate_table(r: Results) -> str:
    d = r("escalate_table.json")
    rows = []
    for model, m in d["models"].items():
        for design, t in m["totals"].items():
            rows.append([model, design, fixed(t["latency_ms"], 3), fixed(t["energy_uj"], 1), pct(t["utilization"], 0)])
    table_ = md_table(["model", "design", "latency (ms)", "energy (uJ)", "utilization"], rows)
    ratio_rows = [[k.replace("_", " "), times(v), times(d["paper"][k])] for k, v in d["headline"].items()]
    return (table_ + f"\n\nDensities: {', '.join(sorted({m['source'] for m in d['models'].values()}))}.\n\n"
            + md_table(["ESCALATE-style advantage (geometric mean)", "this model", "paper (recalled)"], ratio_rows))


@table("hw_search")
def _hw_search(r: Results) -> str:
    d = r("hw_search.json")
    names = {"resnet20": "ResNet-20", "resnet56": "ResNet-56", "vgg16": "VGG-16"}
    rows = [[names.get(x["workload"], x["workload"]), grouped(x["grid_feasible"]), x["median_gradient_evaluations"],
             times(x["evaluation_ratio_grid_over_gradient"], 1), pct(x["median_gradient_gap"], 3),
             pct(x["median_random_gap"]), f"{x['gradient_beats_or_ties_random']}/{len(x['seeds'])}"] for x in d["results"]]
    s = d["settings"]
    return md_table(["workload", "feasible grid", "gradient evaluations (median)", "grid / gradient", "gradient gap to grid",
                     "random gap (same evaluations)", "gradient <= random"], rows) + (
        f"\n\nMetric {s['metric'].upper()}, iso-area, {s['seeds']} seeds, {s['starts']} starts, {s['steps']} steps; "
        f"space of {grouped(d['results'][0]['space_size'])} designs.")


@table("hwmodel_designs")
def _hwmodel_designs(r: Results) -> str:
    hw = r("codesign_cifar.json")["settings"]["hardware"]
    e, sy, sc, sp = hw["escalate"], hw["systolic"], hw["scnn"], hw["sparten"]
    rows = [["ESCALATE-style", f"{e['pes']:g} PEs x {e['multipliers']:g} multipliers + {e['basis_macs']:g} basis MACs; "
             f"{e['lanes']:g} butterfly lanes, FIFO depth {e['fifo_depth']:g}, {e['pe_buffer_kib']:g} KiB per PE",
             f"{e['pes'] * e['multipliers'] + e['basis_macs']:g}"],
            ["dense systolic", f"{sy['rows']:g} x {sy['cols']:g} array, dataflow {hw['options']['dataflow'].upper()}", f"{sy['rows'] * sy['cols']:g}"],
            ["SCNN-like", f"{sc['pes']:g} PEs of {sc['weight_vector']:g} x {sc['act_vector']:g}, {pct(sc['conflict_overhead'], 0)} "
             f"accumulator conflicts, {sc['index_bits']:g}-bit indices", f"{sc['pes'] * sc['weight_vector'] * sc['act_vector']:g}"],
            ["SparTen-like", f"{sp['units']:g} units, {sp['chunk']:g}-position chunks", f"{sp['units']:g}"]]
    m = hw["memory"]
    return md_table(["design", "configuration", "multipliers"], rows) + (
        f"\n\nShared: {m['glb_kib']:g} KiB global buffer, {m['dram_gbps']:g} GB/s DRAM at {m['clock_ghz']:g} GHz, "
        f"{m['act_bits']:g}-bit activations, {m['acc_bits']:g}-bit intermediates; stage order `{hw['options']['stage_order']}`.")


@table("hwmodel_energy")
def _hwmodel_energy(r: Results) -> str:
    e = r("codesign_cifar.json")["settings"]["hardware"]["energy"]
    labels = {"mult_8x8_pj": "8x8-bit multiply (scaled by a*b/64)", "add_32_pj": "32-bit add (linear in width)",
              "sram_64b_8kib_pj": "SRAM, 64 bits at 8 KiB (scaled by sqrt(size / 8 KiB))", "dram_64b_pj": "DRAM, 64 bits",
              "switch_bit_pj": "one bit through one 2x2 butterfly switch (estimate)"}
    rows = [[labels.get(k, k), plain(v)] for k, v in e.items() if k != "technology_scale"]
    return md_table(["event", "pJ"], rows) + f"\n\n`technology_scale` {e['technology_scale']:g} (45 nm)."


@table("density_profile")
def _density_profile(r: Results) -> str:
    p = r("escalate_table.json")["density_profile"]
    return md_table(["field", "value"], [[f"`{k}`", f"{v:g}"] for k, v in p.items()])


@table("hw_search_space")
def _hw_search_space(r: Results) -> str:
    x = r("hw_search.json")["results"][0]
    rows = [[f"`{k}`", ", ".join(f"{v:g}" for v in values)] for k, values in x["space"].items()]
    return md_table(["parameter", "legal values"], rows) + (
        f"\n\n{grouped(x['space_size'])} legal designs, {grouped(x['grid_feasible'])} within the default budget of "
        f"{fixed(x['budget_mm2'])} mm^2 (the default design's area).")


# ---------------------------------------------------------------- ndp


@table("embedding_train")
def _embedding_train(r: Results) -> str:
    d = r("embedding_train.json")
    wall, cpu = d["median_step_ms"], d["median_cpu_ms_per_step"]

    def cell(key):
        return f"{fixed(wall[key])} ({fixed(cpu[key])})"

    peers = ["fbgemm_sgd", "fbgemm_rowwise_adagrad", "torch_embeddingbag_sgd"]
    rows = [["ndp", cell("ndp_sgd"), cell("ndp_rowwise_adagrad"), "", "", ""]]
    for threads in sorted({k.rsplit("_", 1)[1] for k in wall if k.endswith("thread")}):
        n = threads.removesuffix("thread")
        rows.append([f"peers, {n} torch thread{'' if n == '1' else 's'}", "", "", *(cell(f"{p}_{threads}") for p in peers)])
    w = d["workload"]
    return md_table(["", "ndp SGD", "ndp row-wise Adagrad", "FBGEMM SGD", "FBGEMM row-wise Adagrad", "torch EmbeddingBag SGD"], rows) + (
        f"\n\nMedian ms per step, wall clock (process CPU time); {w['tables']} tables, {grouped(w['rows'])} rows, "
        f"dim {w['dim']}, batch {w['batch_size']}, Zipf {w['zipf']}, ndp on {w['devices']} device; load average "
        f"{d['machine']['load_avg_start'][0]} at the start, {d['machine']['load_avg_end'][0]} at the end.")


@table("embedding_train_headline")
def _embedding_train_headline(r: Results) -> str:
    d = r("embedding_train.json")
    h = d["headline"]
    rows = [["ndp over FBGEMM SGD (peer at its faster thread count)", times(h["speedup_vs_fbgemm_sgd"])],
            ["ndp over FBGEMM row-wise Adagrad", times(h["speedup_vs_fbgemm_rowwise_adagrad"])],
            ["ndp over torch EmbeddingBag", times(h["speedup_vs_torch_embeddingbag"])],
            ["`slowdown_at_10x_rows` (same lookups, tables x10)", f"{fixed(h['slowdown_at_10x_rows'])} (CPU time {fixed(d['slowdown_at_10x_rows_cpu_time'])})"],
            ["`slowdown_at_10x_rows_new_draws`", f"{fixed(h['slowdown_at_10x_rows_new_draws'])} (CPU time {fixed(d['slowdown_at_10x_rows_new_draws_cpu_time'])})"],
            ["headline tables over tables x0.1", fixed(d["slowdown_full_vs_0p1x_rows"])],
            ["peak RSS, headline / x10 tables", f"{grouped(h['peak_rss_mb'])} / {grouped(h['peak_rss_mb_at_10x_rows'])} MB"]]
    for name in ("sgd", "rowwise_adagrad"):
        rows.append([f"step temporaries, {name}", mib(d["ndp"][name]["temp_bytes"])])
    return md_table(["figure", "value"], rows)


@table("embedding_train_rows")
def _embedding_train_rows(r: Results) -> str:
    d = r("embedding_train_rows.json")
    rows = []
    for key in ("sgd_small_tables", "sgd"):
        x = d["ndp"][key]
        rows.append([grouped(x["rows"]), grouped(x["table_mb"]), fixed(d["median_step_ms"][f"ndp_{key}"]),
                     fixed(d["median_cpu_ms_per_step"][f"ndp_{key}"]), grouped(x["peak_rss_mb"])])
    return md_table(["rows", "table MB", "ms / step", "CPU ms / step", "peak RSS (MB)"], rows) + (
        f"\n\nSlowdown at 10x rows: {fixed(d['headline']['slowdown_at_10x_rows'])} "
        f"(CPU time {fixed(d['slowdown_at_10x_rows_cpu_time'])}); SGD, row cap {grouped(d['workload']['row_cap'])}.")


@table("embedding_scaling")
def _embedding_scaling(r: Results) -> str:
    d = r("embedding_scaling.json")
    rows = []
    for key, label in (("full", "full DLRM step"), ("embedding", "embedding step alone")):
        f = d["figures"][key]
        pr = f["scaling_paired_rounds"]
        rows.append([label, spread_ms(f["1proc"]["step_ms"], 1), spread_ms(f["2proc"]["step_ms"], 1),
                     f"**{times(f['scaling'])}** (per round {fixed(pr['min'])}-{fixed(pr['max'])}, median {fixed(pr['median'])})",
                     pct(d["collectives"][key]["collective_share"]["median"], 0)])
    return md_table(["step", "1 process (ms)", "2 processes (ms)", "throughput ratio", "collective share (2 processes)"], rows)


@table("embedding_layouts")
def _embedding_layouts(r: Results) -> str:
    d = r("embedding_scaling.json")["layouts"]
    rows = [[k, mib(max(v["exchange_bytes_per_device"])), fixed(v["imbalance"])] for k, v in d["layouts"].items()]
    return md_table([f"layout ({d['devices']} devices)", "bytes one device sends per step", "row imbalance"], rows)


@table("ndrec_calibration")
def _ndrec_calibration(r: Results) -> str:
    d = r("ndrec_calibration.json")
    h, c = d["headline"], d["coefficients"]
    rows = [["cases fitted / held out", f"{h['fit_cases']} / {h['heldout_cases']}"],
            ["`max_heldout_rel_err` (mean)", f"{pct(h['max_heldout_rel_err'])} ({pct(h['mean_heldout_rel_err'])})"],
            ["worst fitted case", pct(h["max_fit_rel_err"])],
            ["`max_loo_rel_err` (leave one out)", pct(h["max_loo_rel_err"])],
            ["per-lookup cost (`host_lookup_time`)", f"{fixed(1e9 * c['seconds_per_lookup'], 0)} ns"],
            ["gather efficiency (`host_mem_efficiency`)", pct(h["host_mem_efficiency"])],
            ["measured streaming bandwidth", f"{fixed(d['memory_bandwidth_bytes_per_s'] / 1e9, 1)} GB/s"],
            ["last-level cache assumed", f"{d['llc_bytes'] / 2**20:g} MiB"]]
    for key, label in (("rows_per_table", "rows per table"), ("batch_size", "batch"), ("bag_length", "bag length"),
                       ("zipf_exponent", "Zipf exponent")):
        rows.append([f"cases: {label}", ", ".join(plain(v) for v in sorted({c[key] for c in d["cases"]}))])
    return md_table(["figure", "value"], rows)


@table("ndrec_systems")
def _ndrec_systems(r: Results) -> str:
    d = r("ndrec_table.json")
    rows = [[f"`{k}`", ms(s["period_s"]), fixed(s["hit_rate"], 3), fixed(s["total_energy_j"])] for k, s in d["systems"].items()]
    w = d["configuration"]["workload"]
    return md_table(["system", "ms / iteration", "cache hit rate", "J / iteration"], rows) + (
        f"\n\n{w['model']}: {fixed(w['total_rows'] / 1e6, 1)}M rows, {fixed(w['table_gb'], 0)} GB of tables; batch "
        f"{w['batch_size']}, {w['optimizer']}, Zipf {w['zipf_exponent']}, pooling factor {w['pooling_factor']:g}; "
        f"{d['configuration']['hardware']['csd_count']:g} CSDs, lookahead {d['configuration']['options']['lookahead_batches']} batches.")


@table("ndrec_figures")
def _ndrec_figures(r: Results) -> str:
    d = r("ndrec_table.json")
    s, up, paper = d["systems"], d["up_to"], d["paper_reported"]
    cpu_e = s["cpu_gpu"]["total_energy_j"]
    rows = [["speedup vs CPU-GPU", times(s["cpu_gpu"]["period_s"] / s["ndrec"]["period_s"]), times(up["speedup_vs_cpu_gpu"]), times(paper["speedup_vs_cpu_gpu"])],
            ["speedup vs GPU caching", times(s["gpu_cache"]["period_s"] / s["ndrec"]["period_s"]), times(up["speedup_vs_gpu_cache"]), times(paper["speedup_vs_gpu_cache"])],
            ["energy saving vs CPU-GPU", pct(1 - s["ndrec"]["total_energy_j"] / cpu_e), pct(up["energy_reduction_vs_cpu_gpu"]), pct(paper["energy_reduction"])]]
    g = d["grid"]

    def span(key):
        vals = sorted({x[key] for x in g})
        return f"{vals[0]:g}-{vals[-1]:g}" if len(vals) > 2 else " and ".join(f"{v:g}" for v in vals)

    return md_table(["figure", "this model", "max over grid", "NDRec paper (up to)"], rows) + (
        f"\n\nGrid ({len(g)} points): Zipf {span('zipf_exponent')}, batch {span('batch_size')}, "
        f"pooling factor {span('pooling_factor')}, CSDs {span('csd_count')}.")


_NDREC_FIGURES = {"speedup_vs_cpu_gpu": "speedup vs CPU-GPU", "speedup_vs_gpu_cache": "speedup vs GPU caching"}


@table("ndrec_sensitivity")
def _ndrec_sensitivity(r: Results) -> str:
    d = r("ndrec_table.json")
    f = d["sensitivity_factor"]
    rows = []
    for figure, params in d["sensitivity"].items():
        for name, (low, high) in list(params.items())[:3]:
            rows.append([_NDREC_FIGURES.get(figure, figure), f"`{name}`", times(low), times(high)])
    return md_table(["figure", "parameter (three most influential)", f"parameter / {f:g}", f"parameter x {f:g}"], rows)


# ---------------------------------------------------------------- in-place rendering


def render_block(name: str, results_dir: Path = RESULTS, overrides: dict | None = None) -> str:
    """The text between the markers of table ``name``: the table and the JSON files it read."""
    results = Results(results_dir, overrides or {})
    body = TABLES[name](results)
    sources = ", ".join(f"`benchmarks/results/{u}`" for u in results.used)
    return f"{body}\n\nSource: {sources}\n"


def _fenced_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of fenced code blocks (lines opening and closing with ```), ends included."""
    spans, start, offset = [], None, 0
    for line in text.splitlines(keepends=True):
        if line.lstrip().startswith("```"):
            if start is None:
                start = offset
            else:
                spans.append((start, offset + len(line)))
                start = None
        offset += len(line)
    if start is not None:
        spans.append((start, len(text)))
    return spans


def _markers(text: str) -> list[re.Match]:
    """Opening and closing table markers outside fenced code blocks, in order."""
    spans = _fenced_spans(text)
    found = sorted([*_OPEN.finditer(text), *_CLOSE.finditer(text)], key=lambda m: m.start())
    return [m for m in found if not any(a <= m.start() < b for a, b in spans)]


def render_text(text: str, results: Results | None = None) -> tuple[str, list[str]]:
    """Re-renders every marked table of a Markdown text.

    Markers inside fenced code blocks are not tables (they are examples) and are left alone.

    Args:
      text: Markdown with ``<!-- table:NAME -->`` ... ``<!-- /table:NAME -->`` blocks.
      results: where the JSON files are read (``Results()``: benchmarks/results).

    Returns:
      ``(new_text, problems)``: problems name unknown tables and unmatched or nested markers;
      their text is left as it is.
    """
    results = results or Results()
    problems: list[str] = []
    out: list[str] = []
    pos = 0
    markers = _markers(text)
    i = 0
    while i < len(markers):
        m = markers[i]
        name = m.group(1)
        if m.re is _CLOSE:
            problems.append(f"table:{name}: closing marker without an opening one")
            i += 1
            continue
        close = markers[i + 1] if i + 1 < len(markers) else None
        if close is None or close.re is not _CLOSE or close.group(1) != name:
            problems.append(f"table:{name}: no <!-- /table:{name} --> before the next marker or the end")
            i += 1
            continue
        out.append(text[pos:m.end()])
        if name in TABLES:
            out.append("\n" + render_block(name, results.directory, results.overrides))
        else:
            problems.append(f"table:{name}: unknown table (known: {', '.join(sorted(TABLES))})")
            out.append(text[m.end():close.start()])
        out.append(close.group(0))
        pos = close.end()
        i += 2
    out.append(text[pos:])
    return "".join(out), problems


def differing_tables(old: str, new: str) -> list[str]:
    """Names of the marked tables whose blocks differ between two renderings of a text."""

    def blocks(text):
        markers, found = _markers(text), {}
        for m, close in zip(markers, markers[1:]):
            if m.re is _OPEN and close.re is _CLOSE and close.group(1) == m.group(1):
                found[m.group(1)] = text[m.start():close.end()]
        return found

    a, b = blocks(old), blocks(new)
    return sorted(n for n in a.keys() | b.keys() if a.get(n) != b.get(n))


def check(paths: list[Path] | None = None, results: Results | None = None) -> list[str]:
    """Every disagreement between the documents and what their JSON renders, as messages."""
    problems = []
    for path in paths or documents():
        text = path.read_text()
        new, found = render_text(text, results)
        problems += [f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}: {p}" for p in found]
        for name in differing_tables(text, new):
            problems.append(f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}: table:{name} differs from its JSON "
                            f"(run python benchmarks/tables.py)")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 listing tables that differ")
    args = parser.parse_args(argv)
    if args.check:
        problems = check()
        for p in problems:
            print(p)
        return 1 if problems else 0
    sys.path.insert(0, str(REPO))
    from runkit import atomic_write_text

    status = 0
    for path in documents():
        text = path.read_text()
        new, problems = render_text(text)
        for p in problems:
            print(f"{path.relative_to(REPO)}: {p}")
            status = 1
        changed = differing_tables(text, new)
        if new != text:
            atomic_write_text(path, new)
        print(f"{path.relative_to(REPO)}: {len(changed)} table(s) rewritten" + (f" ({', '.join(changed)})" if changed else ""))
    return status


if __name__ == "__main__":
    raise SystemExit(main())
