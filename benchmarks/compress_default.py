"""The main job as a new user meets it: ``python -m jaxsparse compress`` with no flags, timed.

Runs the default command in a fresh output folder, then again on the finished folder,
and records what each printed and how long it took (wall clock and the CPU time of the
child process), with the machine's load. The report's figures (top-1 before and after,
parameter and MAC reductions) come from the run's own ``report.json``.

Targets: the first run within 5 minutes on 2 cores and within 3 points top-1 of the
dense model with parameters cut by >= 80% and MACs by >= 60%; the rerun under 10 s.

    python benchmarks/compress_default.py            # writes benchmarks/results/compress_default.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "compress_default.json"


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def timed(command: list[str]) -> dict:
    """Run ``command`` from the repository root; its wall time, child CPU time, exit code and output."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = load_average()
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"command": " ".join(command[1:]), "returncode": result.returncode, "wall_s": round(wall, 1),
            "cpu_s": round(cpu, 1), "load_avg_before": load, "load_avg_after": load_average(),
            "last_line": result.stdout.strip().splitlines()[-1] if result.stdout.strip() else "",
            "stdout": result.stdout, "stderr_tail": result.stderr[-3000:]}  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results JSON (default: %(default)s)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="compress_default-") as tmp:
        run_dir = Path(tmp) / "run"
        command = [sys.executable, "-m", "jaxsparse", "compress", "--no-progress", "--out", str(run_dir)]
        first = timed(command)
        if first["returncode"] != 0:
            print(first["stderr_tail"], file=sys.stderr)
            raise SystemExit(f"compress failed with exit code {first['returncode']}")
        rerun = timed(command)
        report = json.loads((run_dir / "report.json").read_text())
    summary = report["summary"]
    headline = {
        "wall_s": first["wall_s"],
        "rerun_wall_s": rerun["wall_s"],
        "top1_dense": summary["top1_dense"],
        "top1_compressed": summary["top1_compressed"],
        "top1_drop_points": round(100 * (summary["top1_dense"] - summary["top1_compressed"]), 2),
        "param_reduction": summary["param_reduction"],
        "mac_reduction": summary["mac_reduction"],
        "same_summary_on_rerun": first["stdout"] == rerun["stdout"],
    }
    result = {
        "command": "python -m jaxsparse compress",
        "model": report["config"]["model"],
        "data": report["data"],
        "config": report["config"],
        "stages": [{k: s[k] for k in ("stage", "top1", "params", "macs", "seconds")} for s in report["stages"]],
        "runs": {"first": first, "rerun": rerun},
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version()},  # fmt: skip
        "headline": headline,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(result, indent=1))
    os.replace(tmp_out, args.out)
    print(first["last_line"])
    print(f"first run {first['wall_s']:.0f} s (CPU {first['cpu_s']:.0f} s, load {first['load_avg_before']} -> "
          f"{first['load_avg_after']}); rerun {rerun['wall_s']:.1f} s; same summary: {headline['same_summary_on_rerun']}")
    print(json.dumps(headline))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
