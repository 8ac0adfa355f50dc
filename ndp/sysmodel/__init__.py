"""Performance and energy model of NDRec-style recommendation training and its baselines.

* :mod:`~ndp.sysmodel.params`: every hardware parameter, with unit and source, as one pytree.
* :mod:`~ndp.sysmodel.cache`: trace-driven cache simulators (static, LRU, LFU, lookahead)
  and analytic power-law hit-rate models.
* :mod:`~ndp.sysmodel.workload`: what an iteration asks for (lookups, MLP work, cache curves).
* :mod:`~ndp.sysmodel.timeline`: max-plus schedule of tasks on resources across iterations.
* :mod:`~ndp.sysmodel.systems`: the ``ndrec``, ``cpu_gpu``, ``gpu_cache`` and ``ssd`` systems.
* :mod:`~ndp.sysmodel.config`: validated JSON system files (bundled in ``configs/``).
* :mod:`~ndp.sysmodel.scenarios`: named workloads and vmapped sweeps.
* :mod:`~ndp.sysmodel.calibration`: the CPU cost model fitted to measured training steps.

Example:
    >>> from ndp.sysmodel import default_hardware, as_arrays, simulate_all, speedups
    >>> from ndp.sysmodel.scenarios import build_workload
    >>> from ndp.sysmodel.config import WorkloadSettings
    >>> results = simulate_all(as_arrays(default_hardware()), build_workload("mlperf", WorkloadSettings()))
    >>> sorted(speedups(results))
    ['cpu_gpu', 'gpu_cache', 'ssd']
"""

from ndp.sysmodel.params import PARAMETER_TABLE, HardwareParams, as_arrays, default_hardware, replace_params, stack_params
from ndp.sysmodel.systems import SYSTEMS, SimulationResult, SystemOptions, simulate, simulate_all, speedups, system_tasks
from ndp.sysmodel.workload import Workload, workload_from_trace, workload_from_zipf

__all__ = [
    "PARAMETER_TABLE",
    "SYSTEMS",
    "HardwareParams",
    "SimulationResult",
    "SystemOptions",
    "Workload",
    "as_arrays",
    "default_hardware",
    "replace_params",
    "simulate",
    "simulate_all",
    "speedups",
    "stack_params",
    "system_tasks",
    "workload_from_trace",
    "workload_from_zipf",
]
