"""pcopy: a parallel copy of a file or directory tree, from the command line or from Python.

    >>> import pcopy
    >>> report = pcopy.copy("src", "dst", jobs=4)   # doctest: +SKIP

Names are imported lazily so `pcopy --version` and small copies start fast.
"""

from __future__ import annotations

# Not `from typing import TYPE_CHECKING`: this module runs first in every pcopy process, before
# pcopy's signal handling is in place (entry.py), and typing takes ~5 ms to import.
TYPE_CHECKING = False

__version__ = "0.1.0"

__all__ = ["Config", "CopyFailure", "CopyInterruptedError", "CopyReport", "Method",
           "RefusedError", "__version__", "copy", "copytree"]

_LAZY = {
    "copy": "pcopy.api",
    "copytree": "pcopy.dropin",
    "Config": "pcopy.config",
    "Method": "pcopy.config",
    "CopyReport": "pcopy.report",
    "CopyFailure": "pcopy.jobs",
    "RefusedError": "pcopy.errors",
    "CopyInterruptedError": "pcopy.errors",
}

if TYPE_CHECKING:
    from pcopy.api import copy
    from pcopy.config import Config, Method
    from pcopy.dropin import copytree
    from pcopy.errors import CopyInterruptedError, RefusedError
    from pcopy.jobs import CopyFailure
    from pcopy.report import CopyReport


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pcopy' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
