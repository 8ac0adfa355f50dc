"""Named compression jobs: the pipeline's settings together with the images that train and test it.

``python -m jaxsparse compress --preset NAME`` starts from one of :data:`PRESETS`; every
option the user gives overrides it. Stated once here, the presets are also what the
benchmarks use.

* ``quick``: minutes on 2 CPU cores. A short CIFAR schedule cannot recover from the paper's
  one-shot prune, so the pruning is ramped while retraining (``gradual_prune``), basis and
  coefficients train jointly and the dense model is distilled from.
* ``digits``: the same idea on scikit-learn's 8x8 digits with a small CNN trained from scratch
  (the default preset of ``--model digits-cnn``).
* ``cifar-cpu``: the CPU schedule of ``benchmarks/penni_cifar.py`` (10,000 training images, 5 + 2
  epochs, the whole test set, ``s = 1.15`` ramped over two thirds of retraining, distillation).
* ``full``: the paper's CIFAR recipe, 100 retraining + 30 fine-tuning epochs on all images
  (a GPU job).

Example:
    >>> PRESETS["full"].config.retrain_epochs, PRESETS["quick"].train_subset
    (100, 4096)
"""

from __future__ import annotations

import dataclasses

from runkit import check_positive
from jaxsparse.penni.pipeline import CompressConfig


@dataclasses.dataclass(frozen=True)
class CompressRun:
    """A compression job.

    Attributes:
      config: the pipeline's settings (:class:`~jaxsparse.penni.pipeline.CompressConfig`).
      train_subset: use N training images, a seeded choice (none: all).
      test_subset: evaluate on N test images, a seeded choice (none: all).
    """

    config: CompressConfig = CompressConfig()
    train_subset: int | None = None
    test_subset: int | None = None

    def __post_init__(self):
        for name in ("train_subset", "test_subset"):
            if getattr(self, name) is not None:
                check_positive(name, getattr(self, name))


#: The named jobs of ``python -m jaxsparse compress --preset NAME``.
PRESETS = {
    "quick": CompressRun(CompressConfig(retrain_epochs=3, finetune_epochs=1, alternate_every=0, batch_size=64, gradual_prune=0.67,
                                        distill=0.7), train_subset=4096, test_subset=2000),
    "digits": CompressRun(CompressConfig(model="digits-cnn", retrain_epochs=6, finetune_epochs=3, alternate_every=2, pretrain_epochs=15,
                                         batch_size=64, augment_pad=1)),
    "cifar-cpu": CompressRun(CompressConfig(retrain_epochs=5, finetune_epochs=2, alternate_every=0, prune_std=1.15, gradual_prune=2 / 3,
                                            distill=0.7), train_subset=10000),
    "full": CompressRun(CompressConfig()),
}
