"""What the commands share: the ``himr-pipe`` group, its error mapping, and the option types.

Errors are mapped here once: a :class:`himr_pipe.errors.HimrError` that reaches a command's end is printed as
one line, ``himr-pipe: error: <message>``, and the process exits with the error's own code (2 refused, 1
failed); see :mod:`himr_pipe.errors`.
"""

from __future__ import annotations

import sys

import click

from .. import __version__
from ..errors import HimrError


def fail_usage(msg: str):
    """Refuse in one line with exit 2 (an option the command checks itself)."""
    click.echo(f"himr-pipe: error: {msg}", err=True)
    sys.exit(2)


class _Commands(click.Group):
    """The group that maps every :class:`HimrError` to its line and exit code, for every command."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except HimrError as e:
            click.echo(f"himr-pipe: error: {e}", err=True)
            sys.exit(e.exit_code)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="himr-pipe")
def main():
    """Encrypt image datasets into human-imperceptible, machine-recognizable WebDataset shards."""
    _term_as_interrupt()


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _term_as_interrupt() -> None:
    """SIGTERM (a scheduler's stop, ``kill``, ``timeout``) is handled as Ctrl-C: the run stops the same way
    (workers cancelled, finished shards kept, the lock released, exit 1 with the line that says to rerun) instead
    of dying at once with 143 and no word. Only the main thread can take signals."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_interrupt)


class Where(click.ParamType):
    """A folder given as a local path or an fsspec URL (s3://, gs://, memory://; see himr_pipe.storage).
    Local paths are checked as click.Path checks them; URLs when they are opened."""

    name = "path-or-url"

    def __init__(self, exists: bool = False):
        self.exists = exists

    def convert(self, value, param, ctx):
        from ..storage import is_url

        if is_url(str(value)):
            return str(value)
        return click.Path(exists=self.exists, file_okay=False).convert(value, param, ctx)


class Registered(click.Choice):
    """A choice among the names of a registry (``SCHEMES``, ``DISTRIBUTORS``, ``DECODERS``, ``ENCODERS``, the
    kernels' ``IMPLS``), read when the option is checked or shown, as ``--task`` reads ``TASKS``: an entry
    registered after this module was imported (a plugin's scheme, a test's engine) is one of them, and the
    registries that load numpy or torch are not imported for the other commands or ``himr-pipe --help``.
    ``keep`` filters the entries (``--scheme`` of preview: only the schemes that encrypt); ``extra`` adds names."""

    def __init__(self, module: str, name: str, keep=None, extra: tuple = ()):
        self._where, self._keep, self._extra = (module, name), keep, tuple(extra)
        super().__init__(())

    @property
    def choices(self) -> tuple:
        import importlib

        module, name = self._where
        reg = getattr(importlib.import_module(module), name)
        return tuple(n for n in reg if self._keep is None or self._keep(reg[n])) + self._extra

    @choices.setter
    def choices(self, _names) -> None:  # click.Choice.__init__ sets it; the names are the registry's
        pass
