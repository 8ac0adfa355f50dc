"""Co-design of compressed CNNs and the ESCALATE-style accelerator.

This package is the one seam between ``jaxsparse`` and ``hwmodel``: it joins PENNI
compression (with the hardware-aware training method of :mod:`jaxsparse.penni.hwaware`)
and the accelerator search of :mod:`hwmodel.codesign`. Nothing else in ``jaxsparse``
imports ``hwmodel``, and nothing in ``hwmodel`` imports ``jaxsparse``; the per-layer
record that passes between them is defined once, in :mod:`runkit`.

* :mod:`jaxsparse.codesign.experiment` -- the CIFAR experiment: hardware-aware vs
  uniform PENNI thresholds, and the joint loop (hardware search and compression in turn).
"""
