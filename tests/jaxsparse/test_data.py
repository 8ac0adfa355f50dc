"""Image-folder loading and caching, the CIFAR-10 python loader, normalisation, augmentation, batching."""

from __future__ import annotations

import itertools
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from jaxsparse.data import (
    CIFAR_MEAN,
    CIFAR_STD,
    apply_crop_flip,
    augment,
    batches,
    cache_path,
    decode_image,
    load_cifar10_python,
    load_image_folder,
    load_split,
    normalize,
    num_batches,
    sample_crop_flip,
)
import jaxsparse.data.image_folder as image_folder_module

RNG = np.random.default_rng(0)


def write_png(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)


def make_folder(root, classes=("cat", "airplane"), per_class=2, size=4):
    """Lossless PNG image folder; returns {relative path: array}."""
    written = {}
    for c in classes:
        for i in range(per_class):
            array = RNG.integers(0, 256, (size, size, 3), dtype=np.uint8)
            write_png(root / c / f"{i:02d}.png", array)
            written[f"{c}/{i:02d}.png"] = array
    return written


# ---------------------------------------------------------------- image folders


def test_image_folder_order_labels_and_pixels(tmp_path):
    root = tmp_path / "data"
    arrays = {}
    for name in ("2.png", "10.png"):  # string order: "10.png" before "2.png"
        for c in ("zebra", "ant"):
            arrays[(c, name)] = RNG.integers(0, 256, (5, 3, 3), dtype=np.uint8)
            write_png(root / c / name, arrays[(c, name)])
    (root / "ant" / "notes.txt").write_text("not an image")
    (root / "ant" / ".hidden.png").write_bytes(b"ignored")
    images, labels, classes = load_image_folder(root, cache_dir=tmp_path / "cache", progress=False)
    assert classes == ["ant", "zebra"]
    assert images.dtype == np.uint8 and images.shape == (4, 5, 3, 3)
    assert labels.dtype == np.int32 and labels.tolist() == [0, 0, 1, 1]
    expected = [arrays[(c, n)] for c in ("ant", "zebra") for n in ("10.png", "2.png")]
    np.testing.assert_array_equal(images, np.stack(expected))


def test_cache_is_reused_and_invalidated_when_the_folder_changes(tmp_path, monkeypatch):
    root = tmp_path / "data"
    make_folder(root)
    monkeypatch.setenv("JAXSPARSE_CACHE", str(tmp_path / "envcache"))
    first = load_image_folder(root, progress=False)
    assert cache_path(root).is_file() and cache_path(root).parent == tmp_path / "envcache"

    def no_decoding(path):
        raise AssertionError(f"decoded {path} although the cache is valid")

    monkeypatch.setattr(image_folder_module, "decode_image", no_decoding)
    second = load_image_folder(root, progress=False)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert first[2] == second[2]
    monkeypatch.undo()

    # Change one image (content and size on disk): the fingerprint changes, the folder is decoded again.
    monkeypatch.setenv("JAXSPARSE_CACHE", str(tmp_path / "envcache"))
    new = np.full((6, 6, 3), 7, np.uint8)
    write_png(root / "cat" / "00.png", new[:4, :4])
    write_png(root / "cat" / "02.png", new[:4, :4])
    images, labels, _ = load_image_folder(root, progress=False)
    assert len(images) == 5 and labels.tolist() == [0, 0, 1, 1, 1]
    np.testing.assert_array_equal(images[2], new[:4, :4])


def test_torn_cache_file_is_ignored(tmp_path):
    root = tmp_path / "data"
    written = make_folder(root)
    cache = tmp_path / "cache"
    load_image_folder(root, cache_dir=cache, progress=False)
    cache_path(root, cache).write_bytes(b"PK\x03\x04 torn")
    images, _, _ = load_image_folder(root, cache_dir=cache, progress=False)
    np.testing.assert_array_equal(images[0], written["airplane/00.png"])
    assert not list(cache.glob("*.tmp"))


def test_non_rgb_images_are_converted_to_rgb(tmp_path):
    gray = RNG.integers(0, 256, (4, 4), dtype=np.uint8)
    Image.fromarray(gray, mode="L").save(tmp_path / "gray.png")
    np.testing.assert_array_equal(decode_image(tmp_path / "gray.png"), np.repeat(gray[:, :, None], 3, axis=2))

    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.putpixel((0, 0), 1)
    palette.putpixel((1, 0), 0)
    palette.save(tmp_path / "palette.png")
    assert decode_image(tmp_path / "palette.png").tolist() == [[[0, 0, 255], [255, 0, 0]]]

    rgba = RNG.integers(0, 256, (3, 3, 4), dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(decode_image(tmp_path / "rgba.png"), rgba[:, :, :3])  # alpha dropped

    deep = np.array([[0, 65535], [257, 32896]], dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "gray16.png")
    assert decode_image(tmp_path / "gray16.png")[:, :, 0].tolist() == [[0, 255], [1, 128]]

    # A folder mixing modes loads as one RGB array.
    for name, src in (("gray", "gray.png"), ("rgba", "rgba.png")):
        (tmp_path / "mixed" / name).mkdir(parents=True)
        Image.open(tmp_path / src).resize((4, 4)).save(tmp_path / "mixed" / name / "a.png")
    images, _, _ = load_image_folder(tmp_path / "mixed", cache_dir=tmp_path / "c", progress=False)
    assert images.shape == (2, 4, 4, 3)


def test_corrupt_image_error_names_the_file(tmp_path):
    root = tmp_path / "data"
    make_folder(root)
    (root / "cat" / "zz_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    with pytest.raises(ValueError, match=r"zz_broken\.jpg.*cannot decode"):
        load_image_folder(root, cache_dir=tmp_path / "cache", progress=False)


def test_truncated_jpeg_error_names_the_file(tmp_path):
    path = tmp_path / "t.jpg"
    Image.fromarray(RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path, quality=90)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ValueError, match=r"t\.jpg"):
        decode_image(path)


def test_folder_without_class_subfolders(tmp_path):
    write_png(tmp_path / "flat" / "a.png", np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(ValueError, match=r"flat.*expected one sub-folder per class.*1 image files"):
        load_image_folder(tmp_path / "flat", cache_dir=tmp_path / "cache")


def test_empty_class_folder(tmp_path):
    root = tmp_path / "data"
    make_folder(root)
    (root / "dog").mkdir()
    (root / "dog" / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match=r"class folder .*dog.* is empty"):
        load_image_folder(root, cache_dir=tmp_path / "cache")


def test_missing_folder_and_mixed_sizes(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_image_folder(tmp_path / "nowhere")
    root = tmp_path / "data"
    make_folder(root)
    write_png(root / "cat" / "big.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match=r"big\.png.*expected size 4x4.*got 8x8"):
        load_image_folder(root, cache_dir=tmp_path / "cache", progress=False)


def test_shared_test_split_layout(shared_root):
    """The JPEG test split: 10 classes in sorted order, 1,000 images each; decoding agrees with Pillow."""
    from jaxsparse.data import list_image_folder

    files, labels, classes = list_image_folder(shared_root / "data" / "cifar10-jpeg" / "test")
    assert classes[0] == "airplane" and classes[-1] == "truck" and len(classes) == 10
    assert np.bincount(labels).tolist() == [1000] * 10
    with Image.open(files[1234]) as image:
        np.testing.assert_array_equal(decode_image(files[1234]), np.asarray(image.convert("RGB")))


# ---------------------------------------------------------------- CIFAR-10 python version


def write_cifar_python(root, sizes=(3, 2, 1, 2, 3), test_size=4):
    """Pickles in the official format; returns the NHWC images and labels written."""
    root.mkdir(parents=True)
    written = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name, n in zip(names, list(sizes) + [test_size]):
        images = RNG.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        labels = RNG.integers(0, 10, n).tolist()
        rows = np.stack([np.concatenate([img[:, :, c].ravel() for c in range(3)]) for img in images])
        with open(root / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": rows, b"filenames": []}, f)
        written[name] = (images, labels)
    with open(root / "batches.meta", "wb") as f:
        names_b = [n.encode() for n in ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")]
        pickle.dump({b"label_names": names_b, b"num_cases_per_batch": 10000, b"num_vis": 3072}, f)
    return written


def test_cifar10_python_loader(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    written = write_cifar_python(root)
    splits = load_cifar10_python(root)
    train_images = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
    train_labels = sum((written[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    np.testing.assert_array_equal(splits.train[0], train_images)
    assert splits.train[1].dtype == np.int32 and splits.train[1].tolist() == train_labels
    np.testing.assert_array_equal(splits.test[0], written["test_batch"][0])
    assert splits.test[1].tolist() == written["test_batch"][1]
    assert splits.class_names[3] == "cat"
    # load_split finds the folder itself or the folder it was unpacked in.
    for path in (root, tmp_path):
        images, labels, classes = load_split(path, "test")
        np.testing.assert_array_equal(images, written["test_batch"][0])


def test_cifar10_python_bad_input(tmp_path):
    root = tmp_path / "cifar"
    write_cifar_python(root)
    os.remove(root / "data_batch_3")
    with pytest.raises(FileNotFoundError, match=r"data_batch_3.*cifar-10-python\.tar\.gz"):
        load_cifar10_python(root)
    (root / "test_batch").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="test_batch"):
        load_split(root, "test")
    with pytest.raises(ValueError, match="split"):
        load_split(root, "validation")


def test_load_split_on_an_image_folder_with_splits(tmp_path):
    written = make_folder(tmp_path / "jpeg" / "test")
    images, labels, classes = load_split(tmp_path / "jpeg", "test", cache_dir=tmp_path / "c", progress=False)
    np.testing.assert_array_equal(images[0], written["airplane/00.png"])
    assert classes == ["airplane", "cat"]
    with pytest.raises(FileNotFoundError, match=r"split: expected a 'train' sub-folder.*found only \['test'\]"):
        load_split(tmp_path / "jpeg", "train", cache_dir=tmp_path / "c")


# ---------------------------------------------------------------- normalisation and augmentation


def test_normalize_matches_a_float64_reference():
    x = RNG.integers(0, 256, (2, 3, 3, 3), dtype=np.uint8)
    expected = (x / 255.0 - np.array(CIFAR_MEAN)) / np.array(CIFAR_STD)
    got = normalize(x)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="uint8"):
        normalize(x.astype(np.float32))


def padded_windows(image, pad=4):
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    h, w = image.shape[:2]
    for dy, dx in itertools.product(range(2 * pad + 1), repeat=2):
        crop = padded[dy : dy + h, dx : dx + w]
        yield (dy, dx, False), crop
        yield (dy, dx, True), crop[:, ::-1]


@settings(max_examples=5)
@given(seed=st.integers(0, 2**31 - 1))
def test_augment_outputs_are_windows_of_the_padded_image(seed):
    images = RNG.integers(1, 256, (6, 32, 32, 3), dtype=np.uint8)  # no zeros: padding is recognisable
    out = np.asarray(augment(jax.random.key(seed), jnp.asarray(images)))
    assert out.shape == images.shape and out.dtype == np.uint8
    params = sample_crop_flip(jax.random.key(seed), 6)
    for i in range(6):
        matches = [choice for choice, window in padded_windows(images[i]) if np.array_equal(window, out[i])]
        dy, dx = (int(v) for v in params.offsets[i])
        assert (dy, dx, bool(params.flips[i])) in matches


def test_augment_is_deterministic_and_flips_about_half():
    images = jnp.asarray(RNG.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8))
    key = jax.random.key(3)
    np.testing.assert_array_equal(augment(key, images), augment(key, images))
    assert not np.array_equal(augment(key, images), augment(jax.random.key(4), images))
    params = sample_crop_flip(key, 64)
    assert 16 <= int(params.flips.sum()) <= 48
    assert int(params.offsets.min()) >= 0 and int(params.offsets.max()) <= 8
    assert len({tuple(o) for o in np.asarray(params.offsets).tolist()}) > 20
    # A centred, unflipped window is the identity; a centred flipped window mirrors the image.
    centre = sample_crop_flip(key, 2)._replace(offsets=jnp.full((2, 2), 4, jnp.int32), flips=jnp.array([False, True]))
    out = np.asarray(apply_crop_flip(images[:2], centre))
    np.testing.assert_array_equal(out[0], images[0])
    np.testing.assert_array_equal(out[1], np.asarray(images[1])[:, ::-1])


# ---------------------------------------------------------------- batching


@given(n=st.integers(1, 40), batch_size=st.integers(1, 12), drop_last=st.booleans(), seed=st.integers(0, 1000))
def test_batches_cover_every_example_once_per_epoch(n, batch_size, drop_last, seed):
    x, y = np.arange(n) * 10, np.arange(n)
    run = list(batches(x, y, batch_size, seed=seed, drop_last=drop_last, epochs=2))
    per_epoch = num_batches(n, batch_size, drop_last)
    assert len(run) == 2 * per_epoch
    for epoch in range(2):
        seen = np.concatenate([b[1] for b in run[epoch * per_epoch : (epoch + 1) * per_epoch]] or [np.zeros(0, int)])
        if drop_last:
            assert len(seen) == n - n % batch_size and len(set(seen.tolist())) == len(seen)
            assert all(len(b[1]) == batch_size for b in run)
        else:
            assert sorted(seen.tolist()) == list(range(n))
    for bx, by in run:
        np.testing.assert_array_equal(bx, by * 10)  # images and labels stay paired


def test_batches_are_deterministic_and_resumable():
    x, y = np.arange(50), np.arange(50)
    a = [b[1].tolist() for b in batches(x, y, 8, seed=5, epochs=3)]
    assert a == [b[1].tolist() for b in batches(x, y, 8, seed=5, epochs=3)]
    assert a != [b[1].tolist() for b in batches(x, y, 8, seed=6, epochs=3)]
    assert a[:7] != a[7:14]  # epochs are shuffled differently
    assert a[7:] == [b[1].tolist() for b in batches(x, y, 8, seed=5, epochs=2, start_epoch=1)]
    assert [b[1].tolist() for b in batches(x, y, 20, shuffle=False)] == [list(range(20)), list(range(20, 40)), list(range(40, 50))]
    endless = batches(x, y, 8, seed=5, epochs=None)
    assert [b[1].tolist() for b in itertools.islice(endless, 21)] == a
    with pytest.raises(ValueError, match="batch_size"):
        next(batches(x, y, 0))
    with pytest.raises(ValueError, match="labels"):
        next(batches(x, y[:3], 4))
