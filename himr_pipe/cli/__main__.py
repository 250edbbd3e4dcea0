"""``python -m himr_pipe.cli``: the command line (``torchrun -m himr_pipe.cli train ...`` for several processes)."""

from . import main

main()
