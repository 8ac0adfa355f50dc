"""Utilities shared by the three packages: data locations, argument checks, atomic files."""

from jaxsparse.common.checks import check_choice, check_positive, check_shape
from jaxsparse.common.io import atomic_write_bytes, atomic_write_json, atomic_write_text, load_checkpoint, save_checkpoint
from jaxsparse.common.paths import SHARED_ENV, find_shared_root, repo_root

__all__ = [
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
