"""Top-1 accuracy and throughput of a classifier over uint8 images, data-parallel over all devices."""

from __future__ import annotations

import sys
import time
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from runkit import UsageError, check_positive
from runkit.progress import progress_bar
from jaxsparse.data.transforms import CIFAR_MEAN, CIFAR_STD, normalize


class EvalResult(NamedTuple):
    """Outcome of :func:`evaluate_accuracy`.

    ``images_per_second`` counts the whole loop (host-to-device copies, forward pass,
    arg-max, copy back) in wall-clock time, after a warm-up call that compiles the step.
    ``cpu_seconds`` is the CPU time of this process (all threads) over the same loop: on
    a shared machine, ``total / cpu_seconds`` (images per CPU-second) is far less noisy
    than the wall-clock rate.
    """

    correct: int
    total: int
    accuracy: float
    seconds: float
    images_per_second: float
    cpu_seconds: float
    batch_size: int
    num_devices: int


@partial(jax.jit, static_argnames=("graphdef", "mean", "std"))
def _predict(graphdef, state, images, mean, std):
    logits = nnx.merge(graphdef, state)(normalize(images, mean, std))
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def make_predict_fn(model: nnx.Module, mean=CIFAR_MEAN, std=CIFAR_STD):
    """A jitted ``predict(state, images_uint8) -> int32 class indices`` and the model's state.

    Normalisation runs inside the step, so only uint8 pixels travel to the device. Models
    with the same structure share one compiled step (the graph definition is a static
    argument of a module-level ``jax.jit``).

    Example:
        >>> predict, state = make_predict_fn(load_pretrained("resnet20"))  # doctest: +SKIP
        >>> predict(state, images_uint8[:8])  # doctest: +SKIP
    """
    graphdef, state = nnx.split(model)
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    return partial(_predict, graphdef, mean=mean, std=std), state


def evaluate_accuracy(
    model: nnx.Module,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    batch_size: int = 500,
    progress: bool = False,
    mean=CIFAR_MEAN,
    std=CIFAR_STD,
) -> EvalResult:
    """Top-1 accuracy of ``model`` (put in eval mode) on uint8 ``images`` ``(N, H, W, 3)``.

    Batches are split over all devices along a ``"batch"`` mesh axis (the batch size is
    rounded up to a multiple of the device count); the last batch is zero-padded to the
    same shape so the step compiles once, and the padding is not counted.

    Example:
        >>> result = evaluate_accuracy(load_pretrained("resnet56"), images, labels)  # doctest: +SKIP
        >>> f"{100 * result.accuracy:.2f}%"  # doctest: +SKIP
    """
    check_positive("batch_size", batch_size)
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise UsageError(f"images: expected uint8 of shape (N, H, W, C), got {images.dtype} {images.shape}")
    if labels.shape != (len(images),):
        raise UsageError(f"labels: expected shape ({len(images)},), got {labels.shape}")
    check_positive("number of images", len(images))
    model.eval()
    num_devices = jax.device_count()
    batch_size = -(-min(batch_size, len(images)) // num_devices) * num_devices
    mesh = jax.make_mesh((num_devices,), ("batch",), axis_types=(jax.sharding.AxisType.Auto,))
    data_sharding = jax.NamedSharding(mesh, jax.P("batch"))
    predict, state = make_predict_fn(model, mean, std)
    state = jax.device_put(state, jax.NamedSharding(mesh, jax.P()))

    def padded_batch(start: int) -> jax.Array:
        chunk = images[start : start + batch_size]
        if len(chunk) < batch_size:
            chunk = np.concatenate([chunk, np.zeros((batch_size - len(chunk), *chunk.shape[1:]), np.uint8)])
        return jax.device_put(chunk, data_sharding)

    predict(state, padded_batch(0)).block_until_ready()  # compile outside the timed loop

    starts = range(0, len(images), batch_size)
    predictions = np.empty(len(images), np.int32)
    bar = progress_bar(total=len(images), desc="evaluating", unit="img", disable=not progress, file=sys.stderr)
    pending = None  # one batch in flight while the previous one is copied back
    begin, cpu_begin = time.perf_counter(), time.process_time()
    for start in starts:
        current = (start, predict(state, padded_batch(start)))
        if pending is not None:
            predictions[pending[0] : pending[0] + batch_size] = np.asarray(pending[1])[: len(images) - pending[0]]
            bar.update(min(batch_size, len(images) - pending[0]))
        pending = current
    predictions[pending[0] :] = np.asarray(pending[1])[: len(images) - pending[0]]
    seconds, cpu_seconds = time.perf_counter() - begin, time.process_time() - cpu_begin
    bar.update(len(images) - pending[0])
    bar.close()
    correct = int(np.sum(predictions == labels))
    return EvalResult(
        correct=correct,
        total=len(images),
        accuracy=correct / len(images),
        seconds=seconds,
        images_per_second=len(images) / seconds,
        cpu_seconds=cpu_seconds,
        batch_size=batch_size,
        num_devices=num_devices,
    )
