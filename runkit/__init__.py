"""The neutral base that ``jaxsparse``, ``hwmodel`` and ``ndp`` stand on.

Argument checks and the user-error type, atomic files and checkpoints, the shared-data
lookup, the sub-command dispatcher and its common options (:mod:`runkit.cli`), options
generated from config dataclasses (:mod:`runkit.config_cli`) and the progress-bar factory
(:mod:`runkit.progress`). It imports none of the three packages, and not JAX until a
checkpoint is written or read.
"""

from runkit.checks import MissingFileError, UsageError, check_choice, check_positive, check_shape
from runkit.io import atomic_write_bytes, atomic_write_json, atomic_write_text, load_checkpoint, save_checkpoint
from runkit.paths import SHARED_ENV, find_shared_root, repo_root

__all__ = [
    "MissingFileError",
    "UsageError",
    "SHARED_ENV",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "check_choice",
    "check_positive",
    "check_shape",
    "find_shared_root",
    "load_checkpoint",
    "repo_root",
    "save_checkpoint",
]
