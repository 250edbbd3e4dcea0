"""The registry of schemes: one :class:`SchemeDef` per command-line name (``rs``, ``mi``, ``mi-shuffle``,
``none``), each in its own module here.

Adding a scheme is one module: a :class:`SchemeDef` subclass with its name, its record (``kind``, ``shuffle``)
and its torch transform and inverse (:meth:`SchemeDef.encrypt` / :meth:`SchemeDef.decrypt`), decorated with
:func:`register_scheme`. The CPU and the GPU then run that reference; a fast kernel of its own is optional.
The CLI's ``--scheme`` choices, the model family, the augmentation and the audit are read from it.

How registration reaches every process: the built-in schemes are imported by this package, and so by
:mod:`himr_pipe.scheme`, which every process that holds a scheme imports. A scheme shipped by another package
registers through the entry-point group ``himr_pipe.schemes`` (each entry point names the module that
registers; it is imported here, once). A scheme registered by any other module (a test's) travels with its
records: a pickled :class:`~himr_pipe.scheme.Scheme` names the module that defined its scheme, and unpickling
imports it first, so spawned workers and Ray tasks know it as long as they can import that module.
"""

from __future__ import annotations

import importlib

from .base import SCHEMES, SchemeDef, SchemeError, check_common, definition_of, register_scheme, scheme_def
from . import rs, mi, none  # noqa: F401,E401 (the built-in schemes register on import)


def _load_plugins() -> None:
    from importlib.metadata import entry_points

    for ep in entry_points(group="himr_pipe.schemes"):
        importlib.import_module(ep.value.split(":")[0])


_load_plugins()

__all__ = ["SCHEMES", "SchemeDef", "SchemeError", "check_common", "definition_of", "register_scheme", "scheme_def"]
