"""Training-loop options: knowledge distillation (the loss against an independent formula, a
student that learns a teacher's function from the distillation term alone), and epoch
checkpoints that refuse to resume a run of other settings."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given
from hypothesis import strategies as st

from jaxsparse.penni.digits import DigitsCNN, load_digits_rgb
from jaxsparse.penni.pipeline import CompressConfig, Dataset, compress
from jaxsparse.models import evaluate_accuracy, make_predict_fn
from jaxsparse.penni.train import TrainConfig, distillation_loss, fit


def _reference(student, teacher, temperature):
    """T^2 * mean_b sum_k p_k (log p_k - log q_k) in float64, p/q the softened teacher/student."""
    def log_softmax(z):
        z = z / temperature
        z = z - z.max(axis=-1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))

    log_p, log_q = log_softmax(teacher.astype(np.float64)), log_softmax(student.astype(np.float64))
    return temperature**2 * np.mean(np.sum(np.exp(log_p) * (log_p - log_q), axis=-1))


@given(seed=st.integers(0, 10_000), classes=st.integers(2, 12), temperature=st.sampled_from([1.0, 2.0, 4.0, 10.0]),
       shift=st.floats(-5, 5))
def test_distillation_loss_matches_the_kl_formula(seed, classes, temperature, shift):
    rng = np.random.default_rng(seed)
    student = rng.normal(scale=3.0, size=(5, classes)).astype(np.float32)
    teacher = rng.normal(scale=3.0, size=(5, classes)).astype(np.float32)
    got = float(distillation_loss(jnp.asarray(student), jnp.asarray(teacher), temperature))
    np.testing.assert_allclose(got, _reference(student, teacher, temperature), rtol=1e-4, atol=1e-5)
    assert got >= -1e-6
    # the same logits up to a per-example constant: nothing to learn
    same = float(distillation_loss(jnp.asarray(teacher + np.float32(shift)), jnp.asarray(teacher), temperature))
    assert abs(same) < 1e-4


def test_distillation_gradient_does_not_reach_the_teacher():
    s, t = jnp.asarray([[1.0, 0.0, -1.0]]), jnp.asarray([[0.0, 2.0, 0.0]])
    g_teacher = jax.grad(lambda t: distillation_loss(s, t, 2.0))(t)
    assert bool(jnp.all(g_teacher == 0))


def test_fit_needs_a_teacher_to_distil():
    model = DigitsCNN(widths=(4, 4, 4), rngs=nnx.Rngs(0))
    images = np.zeros((8, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="teacher"):
        fit(model, images, np.zeros(8, np.int32), TrainConfig(epochs=1, batch_size=4, distill=0.5), progress=False)


@pytest.mark.parametrize("field, value", [("distill", -0.1), ("distill", 1.5), ("distill_temperature", 0.0)])
def test_configs_reject_bad_distillation_settings(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(epochs=1, **{field: value})
    with pytest.raises(ValueError, match=field):
        CompressConfig(model="digits-cnn", **{field: value})


def test_student_learns_the_teacher_from_the_distillation_term_alone():
    xtr, ytr, xte, _ = load_digits_rgb()
    teacher = DigitsCNN(widths=(8, 8, 8), rngs=nnx.Rngs(1))
    fit(teacher, xtr, ytr, TrainConfig(epochs=3, batch_size=64, learning_rate=0.05, alternate_every=0, augment_pad=0),
        progress=False)
    teacher.eval()
    predict, state = make_predict_fn(teacher)
    teacher_labels = np.asarray(predict(state, xte))
    majority = np.bincount(teacher_labels).max() / len(teacher_labels)  # what one constant answer agrees on
    student = DigitsCNN(widths=(8, 8, 8), rngs=nnx.Rngs(2))
    wrong = np.zeros(len(xtr), np.int32)  # labels the distillation-only loss must ignore
    config = TrainConfig(epochs=4, batch_size=64, learning_rate=0.05, alternate_every=0, augment_pad=0,
                         distill=1.0, distill_temperature=1.0)
    fit(student, xtr, wrong, config, teacher=teacher, progress=False)
    after = evaluate_accuracy(student, xte, teacher_labels).accuracy
    assert after > majority + 0.4, (majority, after)


@pytest.mark.slow
def test_pipeline_distils_from_its_dense_model_and_records_the_teacher(tmp_path):
    xtr, ytr, xte, yte = load_digits_rgb()
    data = Dataset(xtr[:256], ytr[:256], xte[:128], yte[:128], "digits")
    config = CompressConfig(model="digits-cnn", pretrain_epochs=1, retrain_epochs=1, finetune_epochs=1, alternate_every=0,
                            batch_size=64, augment_pad=1, distill=0.5)
    report = compress(config, data, tmp_path / "run", progress=False, log=lambda message: None)
    assert [r["stage"] for r in report["stages"]][-1] == "count"
    settings = json.loads((tmp_path / "run" / "settings.json").read_text())  # the run folder's settings record
    assert settings["teacher"] == "dense" and settings["config"]["distill"] == 0.5
    # resuming under another teacher's name is refused, not silently mixed
    with pytest.raises(ValueError, match="other settings"):
        compress(config, data, tmp_path / "run", teacher_name="another", progress=False, log=lambda message: None)


def test_fit_refuses_an_epoch_checkpoint_of_other_settings(tmp_path):
    xtr, ytr, _, _ = load_digits_rgb()
    checkpoint = tmp_path / "epoch.npz"
    config = TrainConfig(epochs=1, batch_size=64, alternate_every=0, augment_pad=0)
    model = DigitsCNN(widths=(4, 4, 4), rngs=nnx.Rngs(0))
    fit(model, xtr[:128], ytr[:128], config, checkpoint=checkpoint, progress=False)
    # the same settings resume (nothing left to train) ...
    history = fit(DigitsCNN(widths=(4, 4, 4), rngs=nnx.Rngs(0)), xtr[:128], ytr[:128], config, checkpoint=checkpoint,
                  progress=False)
    assert [h["epoch"] for h in history] == [1]
    # ... other settings or other data do not
    with pytest.raises(ValueError, match="checkpoint"):
        fit(DigitsCNN(widths=(4, 4, 4), rngs=nnx.Rngs(0)), xtr[:128], ytr[:128],
            TrainConfig(epochs=1, batch_size=64, alternate_every=0, augment_pad=0, learning_rate=0.05),
            checkpoint=checkpoint, progress=False)
    with pytest.raises(ValueError, match="checkpoint"):
        fit(DigitsCNN(widths=(4, 4, 4), rngs=nnx.Rngs(0)), xtr[:192], ytr[:192], config, checkpoint=checkpoint,
            progress=False)
