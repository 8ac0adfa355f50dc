"""Image-folder data sets (``<root>/<class>/<image>``) decoded once and cached as ``.npz``.

Conventions (those of torchvision's ``ImageFolder``):

* class index = position of the class folder name in sorted order;
* order inside a class = sorted file name;
* files are taken by extension (:data:`IMAGE_EXTENSIONS`, case-insensitive);
  hidden files and other files are ignored.

Colour: every image is converted to 8-bit RGB with Pillow. Grayscale (``L``, and
16-bit ``I;16``/``I`` scaled by 255/65535) is replicated to three channels; palette (``P``) images are expanded
through their palette; an alpha channel (``RGBA``, ``LA``, palette transparency) is
dropped, keeping the stored colours; CMYK/YCbCr are converted by Pillow's formulas.
All images of a data set must have the same height and width.

Cache: decoding tens of thousands of JPEGs takes a while, so the decoded arrays are
written (atomically) to ``<cache_dir>/<folder-name>-<hash of its path>.npz`` with a
fingerprint of the folder (sorted relative paths, sizes and modification times). A
folder whose files change gets a different fingerprint and is decoded again. The cache
folder is ``cache_dir`` if given, else ``$JAXSPARSE_CACHE``, else ``~/.cache/jaxsparse``.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from runkit.progress import progress_bar

from runkit import MissingFileError, UsageError, atomic_write_bytes

#: File name endings recognised as images.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".pbm", ".tif", ".tiff", ".webp")
#: Environment variable naming the folder for decoded-image caches.
CACHE_ENV = "JAXSPARSE_CACHE"
_CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    """``$JAXSPARSE_CACHE`` if set, else ``~/.cache/jaxsparse``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "jaxsparse"


def decode_image(path: str | os.PathLike) -> np.ndarray:
    """Decode one image file to ``uint8`` RGB ``(H, W, 3)`` (see the module notes on colour).

    Raises:
      ValueError: the file cannot be decoded (the message names the file).

    Example:
        >>> decode_image("test/airplane/0000.jpg").shape  # doctest: +SKIP
        (32, 32, 3)
    """
    try:
        with Image.open(path) as image:
            if image.mode == "P":
                # Expanding palette transparency via RGBA avoids Pillow's lossy P->RGB shortcut.
                image = image.convert("RGBA")
            if image.mode.startswith("I"):
                # 16-bit grayscale (Pillow's "I;16*" and "I" modes): scale 0..65535 to 0..255, not clip.
                gray = np.clip(np.round(np.asarray(image, dtype=np.float64) / 257.0), 0, 255).astype(np.uint8)
                return np.repeat(gray[:, :, None], 3, axis=2)
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise UsageError(f"image {str(path)!r}: cannot decode it ({type(error).__name__}: {error})") from error


def list_image_folder(root: str | os.PathLike) -> tuple[list[Path], np.ndarray, list[str]]:
    """List an image folder: ``(files, labels int32, class_names)`` in data set order.

    Raises:
      FileNotFoundError: ``root`` is not a folder.
      ValueError: no class sub-folders, or a class folder without images.
    """
    root = Path(root)
    if not root.is_dir():
        raise MissingFileError(f"data folder {str(root)!r} does not exist or is not a folder")
    class_names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_names:
        loose = sum(1 for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        raise UsageError(
            f"data folder {str(root)!r}: expected one sub-folder per class (<root>/<class>/<image>), "
            f"found no sub-folders ({loose} image files directly inside)"
        )
    files: list[Path] = []
    labels: list[int] = []
    for index, name in enumerate(class_names):
        members = sorted(
            p
            for p in (root / name).iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not members:
            raise UsageError(
                f"class folder {str(root / name)!r} is empty: expected image files ({', '.join(IMAGE_EXTENSIONS)}), found none"
            )
        files.extend(members)
        labels.extend([index] * len(members))
    return files, np.asarray(labels, dtype=np.int32), class_names


def folder_fingerprint(root: str | os.PathLike, files: list[Path]) -> str:
    """SHA-256 over the sorted relative paths, sizes and modification times of ``files``."""
    root = Path(root)
    digest = hashlib.sha256()
    for path in sorted(files):
        stat = path.stat()
        digest.update(f"{path.relative_to(root).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def cache_path(root: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the decoded arrays of ``root`` are cached."""
    resolved = Path(root).resolve()
    tag = hashlib.sha256(str(resolved).encode()).hexdigest()[:16]
    return Path(cache_dir if cache_dir is not None else default_cache_dir()) / f"{resolved.name}-{tag}.npz"


def _read_cache(path: Path, fingerprint: str):
    try:
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as data:
            if int(data["format"]) != _CACHE_FORMAT or str(data["fingerprint"]) != fingerprint:
                return None
            return data["images"], data["labels"], [str(c) for c in data["class_names"]]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None  # missing, stale format or torn: decode again


def _decode_all(files: list[Path], *, num_workers: int, progress: bool, description: str) -> np.ndarray:
    first = decode_image(files[0])
    images = np.empty((len(files), *first.shape), dtype=np.uint8)
    images[0] = first

    def decode_into(i: int) -> None:
        image = decode_image(files[i])
        if image.shape != first.shape:
            raise UsageError(
                f"image {str(files[i])!r}: expected size {first.shape[1]}x{first.shape[0]} like {str(files[0])!r}, "
                f"got {image.shape[1]}x{image.shape[0]} (all images of a data set must have one size)"
            )
        images[i] = image

    bar = progress_bar(total=len(files), desc=description, unit="img", disable=not progress, file=sys.stderr)
    bar.update(1)
    # Pillow releases the GIL while decoding, so threads overlap file reads and decoding.
    with ThreadPoolExecutor(max_workers=num_workers) as pool:
        chunk = 256
        for start in range(1, len(files), chunk):
            list(pool.map(decode_into, range(start, min(start + chunk, len(files)))))
            bar.update(min(chunk, len(files) - start))
    bar.close()
    return images


def load_image_folder(
    root: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    num_workers: int | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Load ``<root>/<class>/<image>`` as arrays, decoding once and caching the result.

    Args:
      root: the folder with one sub-folder per class.
      cache_dir: folder for the decoded-array cache (default :func:`default_cache_dir`).
      use_cache: read and write the cache (False: always decode, write nothing).
      num_workers: decoding threads (default ``min(8, cpu count + 2)``).
      progress: show a progress bar while decoding.

    Returns:
      ``(images uint8 (N, H, W, 3), labels int32 (N,), class_names)``.

    Raises:
      FileNotFoundError: ``root`` does not exist.
      ValueError: no class sub-folders, an empty class folder, an image that cannot be
        decoded or whose size differs from the others (each message names the path).

    Example:
        >>> images, labels, classes = load_image_folder("cifar10-jpeg/test")  # doctest: +SKIP
        >>> images.shape, labels[:3], classes[0]  # doctest: +SKIP
        ((10000, 32, 32, 3), array([0, 0, 0], dtype=int32), 'airplane')
    """
    files, labels, class_names = list_image_folder(root)
    fingerprint = folder_fingerprint(root, files)
    target = cache_path(root, cache_dir)
    if use_cache:
        cached = _read_cache(target, fingerprint)
        if cached is not None:
            return cached
    workers = num_workers if num_workers is not None else min(8, (os.cpu_count() or 1) + 2)
    images = _decode_all(files, num_workers=workers, progress=progress, description=f"decoding {Path(root).name}")
    if use_cache:
        buffer = io.BytesIO()
        np.savez(
            buffer,
            format=np.asarray(_CACHE_FORMAT),
            fingerprint=np.asarray(fingerprint),
            images=images,
            labels=labels,
            class_names=np.asarray(class_names),
        )
        try:
            atomic_write_bytes(target, buffer.getvalue())
        except OSError as error:  # an unwritable cache must not cost the decoded data
            print(f"note: could not write the image cache {str(target)!r}: {error}", file=sys.stderr)
    return images, labels, class_names
