"""The neutral base that ``jaxsparse``, ``hwmodel`` and ``ndp`` stand on.

Argument checks and the user-error type, atomic files and checkpoints, run folders (the
settings record and the resume check), the shared-data lookup, the sub-command dispatcher and
its common options (:mod:`runkit.cli`), options generated from config dataclasses
(:mod:`runkit.config_cli`) and the progress-bar factory (:mod:`runkit.progress`). It imports
none of the three packages, and not JAX until a checkpoint is written or read.
"""

from runkit.checks import MissingFileError, UsageError, check_choice, check_positive, check_shape
from runkit.io import atomic_write_bytes, atomic_write_json, atomic_write_text, load_checkpoint, save_checkpoint
from runkit.runs import RunFolder, check_same_settings, open_run, read_settings
from runkit.paths import SHARED_ENV, find_shared_root, repo_root

__all__ = [
    "MissingFileError",
    "RunFolder",
    "UsageError",
    "SHARED_ENV",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "check_choice",
    "check_positive",
    "check_same_settings",
    "check_shape",
    "find_shared_root",
    "load_checkpoint",
    "open_run",
    "read_settings",
    "repo_root",
    "save_checkpoint",
]
