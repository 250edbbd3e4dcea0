"""A driver that is stopped from outside (issue 22, defect 1): its workers go with it, SIGTERM is Ctrl-C.

The runs are slowed by the ``slow-samples`` fault (faults.py) so that they are still mid-job when signalled. A worker is
found as a child process of the driver (``/proc/PID/task/*/children``, Linux) while the driver lives.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import cli, encrypt, shard_bytes
from faults import command

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc (Linux) to find workers")
SLOW = "slow-samples=0.4"
ARGS = ("--seed", "5", "--shard-size", "2", "--batch-size", "1", "--workers", "2", "--threads", "1")


def _children(pid: int) -> set[int]:
    kids = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids |= {int(x) for x in (task / "children").read_text().split()}
        except OSError:
            pass
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _start(src, out, tmp_path) -> tuple[subprocess.Popen, set[int]]:
    """encrypt-shards with two slowed workers; returns once both workers run and a shard is done."""
    cmd = command(SLOW, "encrypt-shards", src, out, "--no-progress", "--no-audit", "--state-dir",
                  tmp_path / "state", *ARGS)
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    workers: set[int] = set()
    while time.time() < deadline and p.poll() is None:
        # the spawn workers are the children that run the worker (the resource tracker is another child)
        workers = {c for c in _children(p.pid) if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()
                   and b"resource_tracker" not in Path(f"/proc/{c}/cmdline").read_bytes()} if _children(p.pid) else set()
        if len(workers) >= 2 and list(Path(out).glob("*.tar")):
            return p, workers
        time.sleep(0.2)
    p.kill()
    raise AssertionError(f"the run did not get going: {p.communicate()}")


def test_kill_9_of_the_driver_ends_its_workers(sample_src, tmp_path):
    out = tmp_path / "out"
    p, workers = _start(sample_src, out, tmp_path)
    # verify of a live run's OUT says so, rather than calling its temporary files leftovers
    r = cli("verify", out, expect=None)
    assert "is being written by a running himr-pipe run" in r.output and "leftover" not in r.output
    p.kill()
    p.wait()
    guard = time.time() + 120  # against a hang only: no timing is asserted
    while time.time() < guard and any(_alive(w) for w in workers):
        time.sleep(0.1)
    assert not any(_alive(w) for w in workers), "a worker outlived its killed driver"
    # workers that went on would have written the whole job (9 shards) before idling; these stopped with it
    assert len(list(out.glob("*.tar"))) < 9
    assert "the run is incomplete" in cli("verify", out, expect=None).output  # dead now: an interrupted run
    # and the rerun (which takes the dead run's lock over) finishes the job to the uninterrupted bytes
    clean = tmp_path / "clean"
    encrypt(sample_src, clean, *ARGS[:6])
    encrypt(sample_src, out, *ARGS[:6], state=tmp_path / "state")  # in this process: the same bytes, sooner
    assert shard_bytes(out) == shard_bytes(clean)


def test_sigterm_stops_like_ctrl_c(sample_src, tmp_path):
    out = tmp_path / "out"
    p, workers = _start(sample_src, out, tmp_path)
    p.send_signal(signal.SIGTERM)
    stdout, stderr = p.communicate(timeout=60)
    assert p.returncode == 1, (p.returncode, stderr)
    assert "interrupted" in stderr and "rerun the same command to resume" in stderr
    assert "Traceback" not in stderr
    assert not (out / ".himr-pipe.lock").exists()
    assert not any(_alive(w) for w in workers)
    assert "the run is incomplete" in cli("verify", out, expect=None).output  # and no live run holds OUT


def test_a_worker_that_is_not_the_drivers_child_publishes_nothing_once_the_driver_is_gone(sample_src, tmp_path):
    """A Ray worker outlives a killed driver for a moment (it is Ray's process, not the driver's child); the
    shard it finishes then must not land in OUT. A worker told its driver checks OUT's lock before it publishes:
    held by that driver, it publishes; held by nobody (the driver is gone), it refuses and leaves no file."""
    import socket

    from himr_pipe.lock import DriverGone, OutLock
    from himr_pipe.worker import ShardWorker

    src, out = sample_src, tmp_path / "out"
    encrypt(src, out, "--seed", "1", "--shard-size", "4", state=tmp_path / "st")  # a job and its plan
    import json as _json

    from himr_pipe.job import plan_shards
    from himr_pipe.plan import JobConfig, PlannedSample, ShardTask
    from himr_pipe.sources import open_source

    man = _json.loads((out / "manifest.json").read_text())
    key = _json.loads((tmp_path / "st" / "job.json").read_text())["key"]
    cfg = JobConfig.from_public(man["job"])
    shard = plan_shards(open_source(str(src)), key, cfg)[0]
    task = ShardTask(index=0, name="again-000000.tar", items=tuple(
        PlannedSample(pos=i, index=x.index, ref=x.ref, label=x.label, loc=x.loc, view=v, target=x.target)
        for i, (x, v) in enumerate(shard)))
    me = (socket.gethostname(), os.getpid())
    with OutLock(str(out)):  # this process is the driver: the worker publishes
        st = ShardWorker(cfg, key, str(out), 1, 2, driver=me).run(task)
    assert (out / "again-000000.tar").stat().st_size == st.bytes > 0
    (out / "again-000000.tar").unlink()
    with pytest.raises(DriverGone, match="no longer held"):  # no lock held: the driver is gone
        ShardWorker(cfg, key, str(out), 1, 2, driver=me).run(task)
    assert not (out / "again-000000.tar").exists() and not list(out.glob(".*.tmp"))


def test_a_worker_on_another_host_trusts_the_lock_files_record(sample_src, tmp_path, monkeypatch):
    """On a shared file system another host cannot see the driver's flock, only its record in the lock file:
    the worker then publishes while the record names its driver, and refuses once the file is gone."""
    import socket

    from himr_pipe import lock
    from himr_pipe.storage import Location

    out = tmp_path / "out"
    out.mkdir()
    (out / lock.LOCK_NAME).write_text('{"host": "head-node", "pid": 4242}')
    monkeypatch.setattr(socket, "gethostname", lambda: "worker-node")
    assert lock.holder_of(Location(str(out))) is None  # nobody holds the flock here
    assert lock.recorded_holder(Location(str(out))) == {"host": "head-node", "pid": 4242}
    where = Location(str(out))  # only the check a worker makes before it publishes: no worker needed
    lock.check_driver(where, ("head-node", 4242))
    with pytest.raises(lock.DriverGone):
        lock.check_driver(where, ("head-node", 4343))
    (out / lock.LOCK_NAME).unlink()
    with pytest.raises(lock.DriverGone):
        lock.check_driver(where, ("head-node", 4242))
