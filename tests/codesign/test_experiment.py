"""The CIFAR co-design driver: equal-accuracy comparison, Pareto fronts, CLI argument errors."""

from __future__ import annotations

import argparse

import pytest

from hwmodel.cli import codesign as cli
from hwmodel.codesign.experiment import CodesignConfig, compare_at_equal_top1, pareto_front, quick_config


def _u(s, top1, latency):
    return {"method": "uniform", "threshold": s, "top1": top1, "latency_ms": latency}


def _h(lam, top1, latency):
    return {"method": "hwaware", "cost_weight": lam, "top1": top1, "latency_ms": latency}


def test_equal_top1_comparison_takes_the_fastest_uniform_point_that_is_as_accurate():
    uniform = [_u(0.6, 0.90, 10.0), _u(1.0, 0.88, 8.0), _u(1.4, 0.80, 6.0)]
    aware = [_h(0.5, 0.882, 6.0), _h(2.0, 0.70, 4.0)]
    result = compare_at_equal_top1(uniform, aware)
    # lambda=0.5 at 88.2%: uniform points with top-1 >= 87.9% are s=0.6 (10 ms) and s=1.0 (8 ms) -> 8 ms.
    # lambda=2 at 70%: every uniform point qualifies, the fastest is 6 ms -> 1 - 4/6 = 33%.
    assert result["uniform"]["threshold"] == 1.4 and result["hwaware"]["cost_weight"] == 2.0
    assert result["latency_reduction"] == pytest.approx(1 - 4.0 / 6.0)
    assert result["top1_gap"] == pytest.approx(0.10)
    assert compare_at_equal_top1([_u(1.0, 0.5, 1.0)], [_h(1.0, 0.9, 2.0)])["latency_reduction"] is None


def test_pareto_front_drops_dominated_points():
    points = [_u(0.6, 0.90, 10.0), _u(1.0, 0.88, 12.0), _u(1.4, 0.80, 6.0), _u(2.0, 0.80, 7.0)]
    assert [p["threshold"] for p in pareto_front(points)] == [1.4, 0.6]


def test_cli_arguments_are_checked_and_name_the_flag():
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--quick", "--lambdas", "0.5,x"])
    with pytest.raises(ValueError, match="--lambdas: expected comma-separated numbers"):
        cli.config_from_args(args)
    args = parser.parse_args(["--quick", "--uniform", "0.5,1", "--hwaware-steps", "7"])
    config = cli.config_from_args(args)
    assert config == quick_config(uniform_thresholds=(0.5, 1.0), hwaware_steps=7)
    with pytest.raises(ValueError, match="model: expected one of"):
        CodesignConfig(model="vgg16")
    with pytest.raises(ValueError, match="metric"):
        CodesignConfig(metric="area")
