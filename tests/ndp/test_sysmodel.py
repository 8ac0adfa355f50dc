"""System model: timeline validity, monotonicity, energy accounting, vmap equivalence, config validation, CLI."""

from __future__ import annotations

import functools
import json
import math

import jax
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ndp.configs import DLRMConfig
from ndp.sysmodel.calibration import fit_cost_model, predict
from ndp.sysmodel.config import load_system_file, parse_system
from ndp.sysmodel.params import PARAMETER_TABLE, as_arrays, default_hardware, replace_params, stack_params
from ndp.sysmodel.scenarios import cache_sweep
from ndp.sysmodel.systems import SYSTEMS, SystemOptions, simulate, system_tasks
from ndp.sysmodel.timeline import Task, dependency_violations, schedule, steady_state_period
from ndp.sysmodel.workload import movielens_trace, workload_from_zipf

SMALL = DLRMConfig(num_dense=13, table_sizes=(200_000, 50_000, 1_000, 30), embedding_dim=32,
                   bottom_mlp=(64, 32), top_mlp=(64, 1))  # fmt: skip
OPTIONS = (SystemOptions(lookahead_batches=0), SystemOptions(lookahead_batches=2))


@functools.lru_cache(maxsize=None)
def small_workload(exponent=0.9):
    return workload_from_zipf(SMALL, batch_size=512, zipf_exponent=exponent, pooling_factor=2.0, num_bins=64)


@functools.lru_cache(maxsize=None)
def period_fn(system, lookahead):
    wl = small_workload()
    return jax.jit(lambda hw: simulate(system, hw, wl, OPTIONS[lookahead > 0]).period)


BANDWIDTHS = ["gpu_flops", "gpu_hbm_bandwidth", "host_mem_bandwidth", "pcie_bandwidth", "cxl_bandwidth",
              "csd_channel_bandwidth", "csd_flash_write_bandwidth", "csd_dram_bandwidth", "csd_compute_bandwidth",
              "ssd_link_bandwidth", "nvlink_bandwidth", "pcie_small_transfer_efficiency", "host_mem_efficiency"]  # fmt: skip
CACHES = ["csd_dram_bytes", "gpu_cache_load_factor", "gpu_hbm_bytes", "gpu_cache_hbm_budget", "host_cache_bytes"]
random_hw = st.fixed_dictionaries(
    {name: st.floats(0.3, 3.0) for name in ("gpu_flops", "pcie_bandwidth", "cxl_bandwidth", "csd_dram_bandwidth",
                                            "csd_dram_bytes", "host_lookup_time", "csd_flash_read_latency")}
)  # fmt: skip


def _scaled(hw, scales):
    return replace_params(hw, **{k: float(getattr(hw, k)) * v for k, v in scales.items()})


@given(random_hw, st.sampled_from(BANDWIDTHS + CACHES), st.floats(1.0, 8.0), st.sampled_from(SYSTEMS), st.sampled_from([0, 2]))
def test_more_bandwidth_or_cache_never_slows_an_iteration(scales, name, factor, system, lookahead):
    hw = _scaled(default_hardware(), scales)
    value = float(getattr(hw, name)) * factor
    if PARAMETER_TABLE[name].fraction:
        value = min(value, 1.0)
    better = replace_params(hw, **{name: value})
    fn = period_fn(system, lookahead)
    assert float(fn(as_arrays(better))) <= float(fn(as_arrays(hw))) * (1 + 1e-6)


@given(st.sampled_from(SYSTEMS), st.sampled_from([0, 1, 3]), st.lists(st.floats(0.0, 5.0), min_size=12, max_size=12))
def test_timeline_respects_dependencies(system, lookahead, raw):
    """Any durations: no task starts before its dependencies end and no resource runs two tasks at once."""
    options = SystemOptions(lookahead_batches=lookahead)
    tasks = system_tasks(system, options)
    durations = {t.name: np.float32(raw[i % len(raw)]) for i, t in enumerate(tasks)}
    sched = schedule(tasks, durations, num_batches=options.num_batches)
    assert dependency_violations(tasks, sched) == []
    finish, start = np.asarray(sched.finish), np.asarray(sched.start)
    # float32 times: absolute rounding grows with the time stamps (tens of seconds here)
    assert np.allclose(finish - start, np.array([durations[t.name] for t in tasks])[None, :], atol=1e-4)


def test_schedule_hand_computed_pipeline():
    """Two-stage pipeline with lookahead: period is the slower stage, not the sum."""
    tasks = (Task("read", "disk", deps=(("use", 2),), lead=1), Task("use", "cpu", deps=(("read", 0),)))
    sched = schedule(tasks, {"read": np.float32(3.0), "use": np.float32(1.0)}, num_batches=8)
    assert math.isclose(float(steady_state_period(sched)), 3.0, rel_tol=1e-6)
    serial = (Task("read", "disk", deps=(("use", 1),)), Task("use", "cpu", deps=(("read", 0),)))
    sched = schedule(serial, {"read": np.float32(3.0), "use": np.float32(1.0)}, num_batches=8)
    assert math.isclose(float(steady_state_period(sched)), 4.0, rel_tol=1e-6)
    with pytest.raises(ValueError, match="issued after it"):
        schedule((Task("a", "x", deps=(("b", 0),)), Task("b", "y")), {"a": 1.0, "b": 1.0})


@pytest.mark.parametrize("system", SYSTEMS)
def test_energy_is_sum_of_component_energies(system):
    hw, wl = default_hardware(), small_workload()
    out = simulate(system, as_arrays(hw), wl, SystemOptions())
    tasks = system_tasks(system, SystemOptions())
    period = float(out.period)
    busy = lambda *res: sum(float(out.durations[t.name]) for t in tasks if t.resource in res)  # noqa: E731
    expected_gpu = hw.gpu_count * (hw.gpu_idle_power * period + (hw.gpu_active_power - hw.gpu_idle_power) * min(busy("gpu"), period))
    expected_host = hw.host_idle_power * period + (hw.host_active_power - hw.host_idle_power) * min(busy("host"), period)
    assert math.isclose(float(out.energy["gpu"]), expected_gpu, rel_tol=1e-4)
    assert math.isclose(float(out.energy["host"]), expected_host, rel_tol=1e-4)
    if system == "ndrec":
        expected_csd = hw.csd_count * (hw.csd_idle_power * period + (hw.csd_active_power - hw.csd_idle_power)
                                       * min(busy("flash", "csd_compute"), period))  # fmt: skip
        assert math.isclose(float(out.energy["csd"]), expected_csd, rel_tol=1e-4)
    assert all(float(v) >= 0 for v in out.energy.values())
    assert math.isclose(float(out.total_energy), sum(float(v) for v in out.energy.values()), rel_tol=1e-6)


def test_vmapped_sweep_equals_one_by_one():
    hw, wl = default_hardware(), small_workload()
    fractions = [1e-3, 1e-2, 0.2]
    swept = cache_sweep(hw, wl, fractions, SystemOptions(), systems=("ndrec", "gpu_cache"))
    table_bytes = float(wl.total_rows) * float(wl.row_bytes)
    for i, f in enumerate(fractions):
        one = replace_params(hw, csd_dram_bytes=f * table_bytes / hw.csd_count, gpu_cache_load_factor=f, gpu_cache_hbm_budget=1.0)
        for system in ("ndrec", "gpu_cache"):
            direct = float(simulate(system, as_arrays(one), wl).period)
            assert math.isclose(float(swept[system][i]), direct, rel_tol=1e-5)
    assert np.all(np.diff(np.asarray(swept["ndrec"])) <= 1e-9)


def test_lookahead_hides_flash_reads_and_skew_helps_caches():
    hw = as_arrays(replace_params(default_hardware(), csd_dram_bytes=1e6))  # tiny CSD cache: many flash reads
    wl = small_workload()
    serial = float(simulate("ndrec", hw, wl, SystemOptions(lookahead_batches=0)).period)
    ahead = float(simulate("ndrec", hw, wl, SystemOptions(lookahead_batches=2)).period)
    assert ahead < serial
    flat, skewed = small_workload(0.2), small_workload(1.2)
    assert float(simulate("gpu_cache", hw, skewed).hit_rate) > float(simulate("gpu_cache", hw, flat).hit_rate)


def test_stack_params_vmaps_over_csd_count():
    wl = small_workload()
    hws = stack_params([replace_params(default_hardware(), csd_count=c) for c in (1, 2, 4)])
    periods = jax.vmap(lambda h: simulate("ndrec", h, wl).period)(hws)
    assert periods.shape == (3,) and np.all(np.diff(np.asarray(periods)) <= 1e-9)


def test_calibration_fit_recovers_known_coefficients():
    rng = np.random.default_rng(0)
    features = np.column_stack([np.ones(12), rng.uniform(1e8, 1e9, 12), rng.uniform(1e3, 1e5, 12), rng.uniform(0, 1e-3, 12)])
    truth = np.array([2e-4, 1e-11, 5e-8, 3.0])
    fitted = fit_cost_model(features, features @ truth)
    assert np.allclose(fitted, truth, rtol=1e-6)
    assert np.allclose(predict(features, fitted), features @ truth, rtol=1e-6)


def test_system_files_validate_with_clear_errors(tmp_path):
    for name in ("paper_like", "multi_gpu"):
        assert load_system_file(name).hardware.csd_count >= 1
    with pytest.raises(ValueError, match=r"hardware: unknown key\(s\) \['csd_cout'\]"):
        parse_system({"hardware": {"csd_cout": 4}})
    with pytest.raises(ValueError, match=r"gpu_cache_load_factor: expected a value in \(0, 1\], got 1.5"):
        parse_system({"hardware": {"gpu_cache_load_factor": 1.5}})
    with pytest.raises(ValueError, match="csd_count: expected a whole number, got 2.5"):
        parse_system({"hardware": {"csd_count": 2.5}})
    with pytest.raises(ValueError, match="cxl_bandwidth: expected a finite number, got 'fast'"):
        parse_system({"hardware": {"cxl_bandwidth": "fast"}})
    with pytest.raises(ValueError, match="csd_cache_policy: expected one of"):
        parse_system({"options": {"csd_cache_policy": "fifo"}})
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_system_file(bad)
    with pytest.raises(FileNotFoundError, match="bundled"):
        load_system_file(tmp_path / "missing.json")


def test_movielens_trace_is_in_time_order(shared_root):
    path = shared_root / "data" / "ml-100k" / "u.data"
    keys, (users, items) = movielens_trace(path)
    data = np.loadtxt(path, dtype=np.int64)
    assert (users, items) == (943, 1682) and keys.size == 2 * data.shape[0]
    first = data[np.argmin(data[:, 3])]
    assert keys[0] == first[0] - 1 and keys[1] == first[1] - 1 + users


@pytest.mark.slow
def test_cli_simulate_writes_report_and_plots(tmp_path, shared_root, capsys):
    from ndp.__main__ import main

    out = tmp_path / "sim"
    # 4 trace batches (default 16): what is checked here is the report's structure, not its values
    status = main(["simulate", "--workload", "movielens", "--batch-size", "256", "--trace-batches", "4",
                   "--shared", str(shared_root), "--out", str(out)])  # fmt: skip
    assert status == 0
    report = json.loads((out / "simulation.json").read_text())
    assert set(report["systems"]) == set(SYSTEMS)
    for s in SYSTEMS:
        r = report["systems"][s]
        assert math.isclose(r["total_energy_j"], sum(r["energy_j"].values()), rel_tol=1e-6)
    policies = report["policy_hit_rates"]
    assert {"static", "lru", "lfu", "lookahead_2"} <= set(policies)
    assert all(0.0 <= v <= 1.0 for k in ("static", "lru", "lfu", "lookahead_2") for v in policies[k])
    for png in ("gantt.png", "speedup_vs_cache.png", "speedup_vs_skew.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert "ms/iteration" in capsys.readouterr().out
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"hardware": {"pcie_bandwidth": -1}}))
    assert main(["simulate", "--config", str(bad), "--workload", "mlperf", "--no-plots", "--out", str(out)]) == 1
    assert "pcie_bandwidth: expected a value > 0, got -1" in capsys.readouterr().err

