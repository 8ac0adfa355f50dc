"""The settings of a compression job and its named presets, importable without JAX.

:class:`CompressConfig` holds the pipeline's settings (:func:`jaxsparse.penni.pipeline.compress`);
:class:`CompressRun` adds the images that train and test it. ``python -m jaxsparse compress``
builds its options from these classes and checks them before JAX starts, so a mistyped option
or a bad file is reported at once. ``--preset NAME`` starts from one of :data:`PRESETS`; every
option the user gives overrides it. Stated once here, the presets are also what the benchmarks use.

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
    >>> CompressConfig(batch_size=0)
    Traceback (most recent call last):
    ...
    runkit.checks.UsageError: batch_size: expected a value > 0, got 0
"""

from __future__ import annotations

import dataclasses

from runkit import UsageError, check_choice, check_positive
from jaxsparse.userfiles import MODEL_NAMES

#: Models :func:`~jaxsparse.penni.pipeline.compress` accepts: the package's CIFAR models and the small digits CNN.
PIPELINE_MODELS = MODEL_NAMES + ("digits-cnn",)


@dataclasses.dataclass(frozen=True)
class CompressConfig:
    """Settings of one compression run (the published CIFAR recipe where it has one).

    Attributes:
      model: one of :data:`PIPELINE_MODELS`.
      num_basis: ``d`` basis kernels per 3x3 layer (5 in the paper).
      centered: PCA (True) instead of SVD (False) directions for the basis.
      l1: weight of the L1 penalty on the coefficients while retraining.
      retrain_epochs, finetune_epochs: epochs of the two training stages (100 and 30 in the paper).
      pretrain_epochs: epochs to train the dense model first (for models without weights; 0: none).
      alternate_every: epochs per phase of basis/coefficient alternation (0: joint training).
      prune_std: ``s`` of the pruning rule ``|c| < s * std(c)``.
      gradual_prune: 0 (the paper): prune once, after retraining. ``f > 0``: apply the rule
        while retraining, its threshold rising from 0 to ``prune_std`` along the cubic ramp
        ``s_t = s (1 - (1 - t / T)^3)`` over the first ``T = f * steps`` retraining steps,
        masks held in the optimizer state (they only shrink); the network adapts to the
        pruning as it happens instead of losing most coefficients at once. The prune stage
        then applies the final rule (it removes little more).
      channel_sparsity: 0 (the paper): no channel rule. ``r > 0``: also remove the fraction
        ``r`` of output channels of every layer whose channels can die alone (a ResNet
        block's first conv, every VGG conv; :func:`~jaxsparse.penni.shrink.free_channel_layers`),
        those whose coefficients have the smallest L2 norm, so that ``shrink`` slices them
        away (ramped with ``gradual_prune`` when that is on).
      coef_bits, basis_bits: quantization bit widths (0: keep float32).
      per_channel: per-output-channel coefficient scales.
      qat: fine-tune with fake-quantization (quantization-aware) instead of quantizing after.
      batch_size, learning_rate, finetune_learning_rate, weight_decay, momentum: the SGD recipe.
      augment_pad: random-crop padding (4 for CIFAR, 1 for 8x8 digits, 0: none).
      distill: 0 (the paper): cross-entropy only. ``a > 0``: retraining and fine-tuning also
        match a teacher's softened logits with weight ``a``
        (:func:`~jaxsparse.penni.train.distillation_loss`); the teacher is the dense
        model the run starts from unless :func:`~jaxsparse.penni.pipeline.compress` is given another.
      distill_temperature: softmax temperature of the distillation term.
      seed: data order, augmentation and initialisation.
    """

    model: str = "resnet20"
    num_basis: int = 5
    centered: bool = False
    l1: float = 1e-4
    retrain_epochs: int = 100
    finetune_epochs: int = 30
    pretrain_epochs: int = 0
    alternate_every: int = 2
    prune_std: float = 1.0
    gradual_prune: float = 0.0
    channel_sparsity: float = 0.0
    coef_bits: int = 4
    basis_bits: int = 8
    per_channel: bool = False
    qat: bool = True
    batch_size: int = 128
    learning_rate: float = 0.01
    finetune_learning_rate: float = 0.01
    pretrain_learning_rate: float = 0.05
    weight_decay: float = 1e-4
    momentum: float = 0.9
    augment_pad: int = 4
    distill: float = 0.0
    distill_temperature: float = 4.0
    seed: int = 0

    def __post_init__(self):
        check_choice("model", self.model, PIPELINE_MODELS)
        check_positive("num_basis", self.num_basis)
        if self.num_basis > 9:
            raise UsageError(f"num_basis: expected at most 9 (3x3 kernels), got {self.num_basis}")
        for name in ("retrain_epochs", "finetune_epochs", "pretrain_epochs", "alternate_every", "l1", "prune_std", "augment_pad"):
            check_positive(name, getattr(self, name), allow_zero=True)
        for name in ("coef_bits", "basis_bits"):
            value = getattr(self, name)
            if value != 0 and not 2 <= value <= 16:
                raise UsageError(f"{name}: expected 0 (no quantization) or 2..16, got {value!r}")
        check_positive("batch_size", self.batch_size)
        if not 0.0 <= self.gradual_prune <= 1.0:
            raise UsageError(f"gradual_prune: expected a fraction of the retraining steps in [0, 1], got {self.gradual_prune!r}")
        if not 0.0 <= self.channel_sparsity < 1.0:
            raise UsageError(f"channel_sparsity: expected a fraction in [0, 1), got {self.channel_sparsity!r}")
        if not 0.0 <= self.distill <= 1.0:
            raise UsageError(f"distill: expected a weight in [0, 1], got {self.distill!r}")
        check_positive("distill_temperature", self.distill_temperature)
        for name in ("learning_rate", "finetune_learning_rate", "pretrain_learning_rate"):
            check_positive(name, getattr(self, name))
        for name in ("weight_decay", "seed"):
            check_positive(name, getattr(self, name), allow_zero=True)
        if not 0.0 <= self.momentum < 1.0:
            raise UsageError(f"momentum: expected a value in [0, 1), got {self.momentum!r}")


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
