"""MovieLens-100k from its original files, as categorical features for DLRM-style models.

Features (one embedding table each, in this order): ``user`` (943), ``item``
(1682), ``age`` bucket (7: <18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+), ``gender``
(2), ``occupation`` (21, from ``u.occupation``), ``zip`` prefix (11: first digit, or
"other" for non-US codes) and ``genres`` (19, multi-hot: a bag of up to 6 genres).
Targets: the rating (1-5, regression, RMSE) or, for the implicit ``click`` task,
``rating >= 4`` (AUC). Splits are the distribution's ``u1``..``u5`` (5-fold, 80/20)
and ``ua``/``ub`` (10 test ratings per user).

Example:
    >>> from runkit import find_shared_root
    >>> data = load_movielens(find_shared_root() / "data" / "ml-100k", split="u1")   # doctest: +SKIP
    >>> data.train.ids.shape, data.test.ids.shape, data.table_sizes                   # doctest: +SKIP
    ((80000, 7, 6), (20000, 7, 6), (943, 1682, 7, 2, 21, 11, 19))
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from runkit import MissingFileError, UsageError, check_choice, find_shared_root

FEATURES = ("user", "item", "age", "gender", "occupation", "zip", "genres")
SPLITS = ("u1", "u2", "u3", "u4", "u5", "ua", "ub")
TASKS = ("rating", "click")
AGE_EDGES = (18, 25, 35, 45, 50, 56)
NUM_GENRES = 19
MAX_GENRES = 6
#: Environment variable naming the ``ml-100k`` folder (wins over the shared folder).
ML100K_ENV = "NDP_ML100K"


class Examples(NamedTuple):
    """Examples in fixed-shape form: ``ids (N, T, L)``, ``lengths (N, T)``, ``labels (N,)``."""

    ids: np.ndarray
    lengths: np.ndarray
    labels: np.ndarray

    def select(self, features: tuple[int, ...]) -> Examples:
        """Only the given feature columns (e.g. ``(0, 1)``: user and item)."""
        idx = list(features)
        length_cap = max(1, int(self.lengths[:, idx].max(initial=1)))
        return Examples(self.ids[:, idx, :length_cap], self.lengths[:, idx], self.labels)


class MovieLensData(NamedTuple):
    train: Examples
    test: Examples
    table_sizes: tuple[int, ...]
    feature_names: tuple[str, ...]
    task: str
    mean_rating: float


def movielens_root(shared: str | os.PathLike | None = None) -> Path:
    """The ``ml-100k`` folder: ``$NDP_ML100K`` when set, else ``<shared>/data/ml-100k``.

    Args:
      shared: the shared folder as given (``--shared``); ``None``: :func:`runkit.find_shared_root`'s lookup.

    Returns:
      The folder's path (whether it holds the files is checked by :func:`load_movielens`).

    Example:
        >>> movielens_root("/data/shared").as_posix()   # doctest: +SKIP
        '/data/shared/data/ml-100k'
    """
    if os.environ.get(ML100K_ENV):
        return Path(os.environ[ML100K_ENV])
    return find_shared_root(shared) / "data" / "ml-100k"


def _require(path: Path) -> Path:
    if not path.is_file():
        raise MissingFileError(f"MovieLens-100k file missing: {str(path)!r} (expected the original ml-100k folder)")
    return path


def _lines(path: Path):
    """``(line number, text)`` of the non-blank lines of a MovieLens file, numbered from 1 as editors do."""
    for number, line in enumerate(_require(path).read_text(encoding="latin-1").splitlines(), start=1):
        if line.strip():
            yield number, line


def _bad_line(path: Path, number: int, expected: str, line: str) -> UsageError:
    return UsageError(f"{str(path)!r}, line {number}: expected {expected}, got {line!r}")


def _read_ratings(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(ratings (n, 4) int64, line numbers (n,))`` of a ``user<TAB>item<TAB>rating<TAB>time`` file."""
    rows, numbers = [], []
    for number, line in _lines(path):
        try:
            row = [int(x) for x in line.split("\t")]
        except ValueError:
            row = []
        if len(row) != 4:
            raise _bad_line(path, number, "4 tab-separated integers (user, item, rating, timestamp)", line)
        rows.append(row)
        numbers.append(number)
    return np.asarray(rows, np.int64).reshape(-1, 4), np.asarray(numbers, np.int64)


def load_movielens(root: str | os.PathLike, *, split: str = "u1", task: str = "rating") -> MovieLensData:
    """Load a split of MovieLens-100k.

    Args:
      root: the ``ml-100k`` folder with ``u.user``, ``u.item``, ``u.occupation`` and the splits.
      split: ``u1``..``u5``, ``ua`` or ``ub``.
      task: ``"rating"`` (labels are ratings) or ``"click"`` (labels ``rating >= 4``).

    Returns:
      A :class:`MovieLensData`; ids are 0-based per table.
    """
    check_choice("split", split, SPLITS)
    check_choice("task", task, TASKS)
    root = Path(root)
    if not root.is_dir():
        raise MissingFileError(f"MovieLens-100k folder not found: {str(root)!r}")
    occupations = [
        line.strip() for line in _require(root / "u.occupation").read_text(encoding="latin-1").splitlines() if line.strip()
    ]
    occupation_index = {name: i for i, name in enumerate(occupations)}
    users = {}
    for number, line in _lines(root / "u.user"):
        fields = line.split("|")
        if len(fields) != 5 or not fields[0].isdigit() or not fields[1].isdigit() or fields[3] not in occupation_index:
            raise _bad_line(root / "u.user", number, "user id|age|gender|occupation (one of u.occupation)|zip code", line)
        uid, age, gender, occupation, zip_code = fields
        zip_bucket = int(zip_code[0]) if zip_code[:1].isdigit() else 10
        users[int(uid)] = (
            int(np.searchsorted(AGE_EDGES, int(age), side="right")),
            0 if gender == "M" else 1,
            occupation_index[occupation],
            zip_bucket,
        )
    genres = {}
    for number, line in _lines(root / "u.item"):
        fields = line.split("|")
        try:
            item = int(fields[0])
            flags = np.array([int(x) for x in fields[-NUM_GENRES:]])
        except ValueError:
            flags = np.zeros(0)
        if len(fields) < NUM_GENRES + 2 or flags.size != NUM_GENRES:
            raise _bad_line(root / "u.item", number, f"item id|title|...|{NUM_GENRES} genre flags (0/1)", line)
        genres[item] = np.flatnonzero(flags)[:MAX_GENRES]
    num_users, num_items = max(users), max(genres)
    table_sizes = (num_users, num_items, len(AGE_EDGES) + 1, 2, len(occupations), 11, NUM_GENRES)

    def examples(path: Path) -> tuple[Examples, np.ndarray]:
        ratings, numbers = _read_ratings(path)
        for column, known, what in ((0, users, "u.user"), (1, genres, "u.item")):
            unknown = np.flatnonzero(~np.isin(ratings[:, column], np.fromiter(known, np.int64)))
            if unknown.size:
                i = unknown[0]
                raise UsageError(f"{str(path)!r}, line {numbers[i]}: {'user' if column == 0 else 'item'} {ratings[i, column]} "
                                 f"is not in {what}")  # fmt: skip
        outside = np.flatnonzero((ratings[:, 2] < 1) | (ratings[:, 2] > 5))
        if outside.size:
            raise UsageError(f"{str(path)!r}, line {numbers[outside[0]]}: expected a rating in 1..5, got {ratings[outside[0], 2]}")
        n = ratings.shape[0]
        ids = np.zeros((n, len(FEATURES), MAX_GENRES), np.int32)
        lengths = np.ones((n, len(FEATURES)), np.int32)
        user_features = np.array([users[u] for u in ratings[:, 0]], np.int32).reshape(n, 4)
        ids[:, 0, 0] = ratings[:, 0] - 1
        ids[:, 1, 0] = ratings[:, 1] - 1
        ids[:, 2:6, 0] = user_features
        for i, item in enumerate(ratings[:, 1]):
            g = genres[int(item)]
            ids[i, 6, : g.size] = g
            lengths[i, 6] = g.size
        score = ratings[:, 2].astype(np.float32)
        labels = score if task == "rating" else (score >= 4).astype(np.float32)
        return Examples(ids, lengths, labels), ratings

    (train, train_ratings), (test, _) = examples(root / f"{split}.base"), examples(root / f"{split}.test")
    return MovieLensData(
        train=train,
        test=test,
        table_sizes=table_sizes,
        feature_names=FEATURES,
        task=task,
        mean_rating=float(train_ratings[:, 2].mean()),
    )
