"""Shared fixtures: a real-photo sample folder and a CLI runner.

The sample is cut from scikit-image's bundled photos (real content, no
download). Runs use ``--workers 0`` (in-process) unless a test is about the
worker processes themselves.
"""

from __future__ import annotations

import json
import os

import torch

# Without a GPU the Triton kernels run in Triton's interpreter on CPU tensors.
# It must be chosen before triton is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from himr_pipe.cli import main
from himr_pipe.sample_data import make_sample_folder


@pytest.fixture(scope="session")
def sample_src(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sample") / "src"
    make_sample_folder(root, per_class=3, seed=1)  # 6 classes x 3 = 18 real-photo JPEGs
    return root


# the training tests' recipe: a one-block ViT on 32 px shards, seconds a run
TINY_TRAIN = ("--embed-dim", "32", "--depth", "1", "--heads", "2", "--batch-size", "4", "--workers", "0",
              "--warmup-epochs", "0.5", "--lr", "1e-3", "--no-aug")


@pytest.fixture(scope="session")
def jpeg_out(sample_src, tmp_path_factory) -> Path:
    """18 samples of the default scheme (JPEG, 32 px) in 3 shards of 6, for the training tests to read (a test
    that changes it works on a copy)."""
    out = tmp_path_factory.mktemp("jpeg_out") / "out"
    encrypt(sample_src, out, "--size", "32", "--seed", "5", "--shard-size", "6")
    return out


def cli(*args, expect: int | None = 0):
    """Run the himr-pipe CLI in this process; check the exit code."""
    res = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    if expect is not None:
        assert res.exit_code == expect, f"exit {res.exit_code}, expected {expect}:\n{res.output}"
    return res


def encrypt(src, out, *args, state=None, expect: int | None = 0, audit: bool = False):
    """encrypt-shards in this process. The quick audit is off unless asked (tests about it ask): it adds
    seconds per run, and only the audit tests are about it."""
    state = state or f"{out}.state"
    return cli("encrypt-shards", src, out, "--workers", "0", "--no-progress", "--state-dir", state,
               *(() if audit else ("--no-audit",)), *args, expect=expect)


def encrypt_subprocess(src, out, *args, state=None, env=None, timeout=300, fault: str | None = None):
    """Run encrypt-shards in its own process (for crashes and worker processes); ``fault``: under that fault
    (faults.py), which kills or slows its workers at an exact point."""
    from faults import command

    state = state or f"{out}.state"
    argv = ["encrypt-shards", str(src), str(out), "--no-progress", "--no-audit", "--state-dir", str(state),
            *[str(a) for a in args]]
    cmd = command(fault, *argv) if fault else [sys.executable, "-m", "himr_pipe.cli", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def manifest(out) -> dict:
    return json.loads((Path(out) / "manifest.json").read_text())


def shard_bytes(out) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(out).glob("*.tar"))}
