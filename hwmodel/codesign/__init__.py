"""Co-design of compressed models and the ESCALATE-style accelerator.

* :mod:`hwmodel.codesign.area` -- a documented 45 nm area model (the search's budget);
* :mod:`hwmodel.codesign.space` -- the legal design space and its continuous relaxation;
* :mod:`hwmodel.codesign.search` -- gradient search (relax, round, re-evaluate exactly),
  random and exhaustive grid baselines, all counting cost evaluations;
* :mod:`hwmodel.codesign.costfn` -- differentiable cost of per-layer densities, the
  ``cost_fn`` that hardware-aware compression (:mod:`jaxsparse.hwaware`) trains against;
* :mod:`hwmodel.codesign.experiment` -- the CIFAR experiment: hardware-aware vs uniform
  PENNI thresholds, and the joint loop (hardware search and compression in turn).
"""
