"""The CIFAR co-design driver: equal-accuracy comparison, Pareto fronts, CLI argument errors."""

from __future__ import annotations

import argparse

import pytest

from jaxsparse.cli import codesign as cli
from jaxsparse.codesign.experiment import (CodesignConfig, compare_at_equal_top1, compare_interpolated, interpolated_uniform_latency,
                                         job_order, pareto_front, quick_config)


def _u(s, top1, latency):
    return {"method": "uniform", "threshold": s, "top1": top1, "latency_ms": latency}


def _h(lam, top1, latency):
    return {"method": "hwaware", "cost_weight": lam, "top1": top1, "latency_ms": latency}


def test_equal_top1_comparison_pairs_only_points_within_the_tolerance():
    uniform = [_u(0.6, 0.90, 10.0), _u(1.0, 0.881, 8.0), _u(1.4, 0.80, 6.0), _u(1.8, 0.879, 9.0)]
    aware = [_h(0.5, 0.882, 6.0), _h(2.0, 0.70, 4.0)]
    result = compare_at_equal_top1(uniform, aware)
    # lambda=0.5 at 88.2%: uniform points within 0.3 points are s=1.0 (88.1%, 8 ms) and s=1.8 (87.9%, 9 ms) -> 8 ms.
    # lambda=2 at 70% has no uniform point within 0.3 points (s=1.4 at 80% is far more accurate: not a pair).
    assert result["uniform"]["threshold"] == 1.0 and result["hwaware"]["cost_weight"] == 0.5
    assert result["latency_reduction"] == pytest.approx(1 - 6.0 / 8.0)
    assert result["top1_gap"] == pytest.approx(-0.001)
    assert compare_at_equal_top1([_u(1.0, 0.5, 1.0)], [_h(1.0, 0.9, 2.0)])["latency_reduction"] is None


def test_interpolated_comparison_reads_the_uniform_front_at_the_same_top1():
    uniform = [_u(0.6, 0.90, 10.0), _u(1.0, 0.88, 8.0), _u(1.4, 0.80, 6.0), _u(2.0, 0.79, 9.0)]  # s=2 is dominated
    # 0.89 lies halfway between (0.88, 8 ms) and (0.90, 10 ms); 0.82 a quarter of the way from (0.80, 6) to (0.88, 8).
    assert interpolated_uniform_latency(uniform, 0.89) == pytest.approx(9.0)
    assert interpolated_uniform_latency(uniform, 0.82) == pytest.approx(6.5)
    assert interpolated_uniform_latency(uniform, 0.95) is None and interpolated_uniform_latency(uniform, 0.70) is None
    result = compare_interpolated(uniform, [_h(1.0, 0.89, 6.3), _h(2.0, 0.95, 1.0)])
    assert result["points"][0]["latency_reduction"] == pytest.approx(0.3)
    assert result["points"][1]["latency_reduction"] is None and result["best_latency_reduction"] == pytest.approx(0.3)


def test_jobs_interleave_the_two_methods():
    config = quick_config(uniform_thresholds=(0.6, 1.0, 1.4), cost_weights=(0.5,))
    assert job_order(config) == [("uniform", 0.6), ("hwaware", 0.5), ("uniform", 1.0), ("uniform", 1.4)]


def test_pareto_front_drops_dominated_points():
    points = [_u(0.6, 0.90, 10.0), _u(1.0, 0.88, 12.0), _u(1.4, 0.80, 6.0), _u(2.0, 0.80, 7.0)]
    assert [p["threshold"] for p in pareto_front(points)] == [1.4, 0.6]


def test_cli_arguments_are_checked_and_name_the_flag(capsys):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--preset", "quick", "--cost-weights", "0.5,x"])
    assert "--cost-weights" in capsys.readouterr().err
    args = parser.parse_args(["--preset", "quick", "--uniform-thresholds", "0.5,1", "--hwaware-steps", "7"])
    config = cli.config_from_args(args)
    assert config == quick_config(uniform_thresholds=(0.5, 1.0), hwaware_steps=7)
    assert cli.config_from_args(parser.parse_args(["--seed", "3"])) == CodesignConfig(seed=3)  # the default preset: full
    assert cli.config_from_args(parser.parse_args(["--no-channel-gates"])).channel_gates is False
    with pytest.raises(ValueError, match="^--cost-weights: expected a value > 0, got -1.0"):
        cli.config_from_args(parser.parse_args(["--cost-weights", "0.5,-1"]))
    with pytest.raises(ValueError, match="model: expected one of"):
        CodesignConfig(model="vgg16")
    with pytest.raises(ValueError, match="metric"):
        CodesignConfig(metric="area")


def test_a_run_folder_of_other_settings_is_refused_naming_them(tmp_path):
    from jaxsparse.codesign.experiment import run_codesign

    with pytest.raises(ValueError, match="out: no finished points"):  # records the settings, trains nothing
        run_codesign(quick_config(), tmp_path, report_only=True, log=lambda message: None)
    with pytest.raises(ValueError, match=r"out: run folder .* other settings: config\.hwaware_steps: expected 60, got 7; "):
        run_codesign(quick_config(hwaware_steps=7), tmp_path, report_only=True, log=lambda message: None)
