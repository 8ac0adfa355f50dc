"""Accelerator design search: the hardware half of co-design.

* :mod:`hwmodel.codesign.area` -- a documented 45 nm area model (the search's budget);
* :mod:`hwmodel.codesign.space` -- the legal design space and its continuous relaxation;
* :mod:`hwmodel.codesign.search` -- gradient search (relax, round, re-evaluate exactly),
  random and exhaustive grid baselines, all counting cost evaluations;
* :mod:`hwmodel.codesign.costfn` -- differentiable cost of per-layer densities, the
  ``cost_fn`` that hardware-aware compression (:mod:`jaxsparse.penni.hwaware`) trains against;

The CIFAR co-design experiment, which joins this search with PENNI compression, lives
in :mod:`jaxsparse.codesign` (the one place where ``jaxsparse`` uses ``hwmodel``);
nothing in ``hwmodel`` imports ``jaxsparse``.
"""
