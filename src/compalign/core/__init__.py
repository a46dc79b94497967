"""The bottom layer: what every other part uses and nothing here imports from them."""

from .errors import CompalignError, InputError, MissingFileError, NotFoundError
from .files import atomic_write, atomic_write_with, fsync_dir, fsync_tree, tree_bytes

__all__ = ["CompalignError", "InputError", "MissingFileError", "NotFoundError", "atomic_write", "atomic_write_with",
           "fsync_dir", "fsync_tree", "tree_bytes"]
