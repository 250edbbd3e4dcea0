"""``python tests/run_with_faults.py FAULT -- ARGS``: ``himr-pipe ARGS`` in this process, with the fault FAULT
(see faults.py) installed, for the tests that need a process to die or dawdle at an exact point.

Run as a script, this folder is first on sys.path, so ``import faults`` finds the module beside it, and so do the
worker processes the run spawns (spawn hands them this sys.path to unpickle their WorkerSpec's hooks). The body
runs only as ``__main__``: spawn re-imports this file in each worker.
"""

import sys


def run(argv: list[str]) -> None:
    fault, sep, *args = argv
    if sep != "--":
        sys.exit("usage: run_with_faults.py FAULT -- HIMR_PIPE_ARGS...")
    import faults

    faults.install(faults.parse(fault))
    from himr_pipe.cli import main

    main(args=args, prog_name="himr-pipe")


if __name__ == "__main__":
    run(sys.argv[1:])
