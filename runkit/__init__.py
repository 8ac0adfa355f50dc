"""The neutral base that ``jaxsparse``, ``hwmodel`` and ``ndp`` stand on.

Argument checks and the user-error type, atomic files and checkpoints, the shared-data
lookup and the sub-command dispatcher. It imports none of the three packages.
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
