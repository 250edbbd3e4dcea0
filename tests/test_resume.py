"""Crash and resume: failure injection mid-shard, in the main process and in a worker."""

import json
import os
from pathlib import Path

from conftest import cli, encrypt, encrypt_subprocess, manifest, shard_bytes

KILL = "kill-after=9"  # the fault (faults.py): SIGKILL after 9 samples: mid-shard with batch 2, shard 4


def test_kill_9_mid_shard_resumes_to_the_same_bytes(sample_src, tmp_path):
    args = ("--seed", "11", "--shard-size", "4", "--batch-size", "2")
    clean = tmp_path / "clean"
    encrypt(sample_src, clean, *args)

    out = tmp_path / "out"
    r = encrypt_subprocess(sample_src, out, "--workers", "0", *args, fault=KILL)
    assert r.returncode == -9, r.stderr  # the whole run was killed, as by kill -9
    assert manifest(out)["status"] == "incomplete"
    assert sorted(p.name for p in out.glob("*.tar")) == ["train-000000.tar", "train-000001.tar"]
    assert list(out.glob(".*.tmp")), "the shard in progress was left under its temporary name"
    assert cli("verify", out, expect=1).exit_code == 1

    encrypt(sample_src, out, *args)  # the same command again
    assert shard_bytes(out) == shard_bytes(clean)
    assert manifest(out) == manifest(clean)
    assert not list(out.glob(".*.tmp"))
    assert cli("verify", out).exit_code == 0


def test_resume_without_seed_loses_and_duplicates_nothing(sample_src, tmp_path):
    args = ("--shard-size", "4", "--batch-size", "2")
    out, state = tmp_path / "out", tmp_path / "state"
    r = encrypt_subprocess(sample_src, out, "--workers", "0", *args, state=state, fault=KILL)
    assert r.returncode == -9
    kept = shard_bytes(out)
    encrypt(sample_src, out, *args, state=state)
    after = shard_bytes(out)
    assert all(after[k] == v for k, v in kept.items())  # finished shards are not redone
    refs = [w[2] for p in (state / "shards").iterdir() for w in json.loads(p.read_text())["written"]]
    assert len(refs) == len(set(refs)) == 18
    assert manifest(out)["totals"]["written"] == 18
    assert cli("verify", out).exit_code == 0


def test_worker_killed_then_rerun(sample_src, tmp_path):
    # with the flip defence: its orientations come from the same keyed stream, so the rerun's bytes are the same
    args = ("--seed", "5", "--shard-size", "4", "--batch-size", "2", "--flip")
    clean = tmp_path / "clean"
    encrypt(sample_src, clean, *args)
    out = tmp_path / "out"
    r = encrypt_subprocess(sample_src, out, "--workers", "2", "--threads", "1", *args,
                           fault="kill-after=3")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "worker process died" in r.stderr and "rerun" in r.stderr
    r = encrypt_subprocess(sample_src, out, "--workers", "2", "--threads", "1", *args)
    assert r.returncode == 0, r.stderr
    assert shard_bytes(out) == shard_bytes(clean)
    assert manifest(out) == manifest(clean)


def test_resume_refuses_other_seed_changed_src_or_lost_state(sample_src, tmp_path):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(sample_src, src)
    args = ("--shard-size", "4", "--batch-size", "2")
    out = tmp_path / "out"
    assert encrypt_subprocess(src, out, "--workers", "0", "--seed", "1", *args, fault=KILL).returncode == -9
    assert "different from the seed" in encrypt(src, out, "--seed", "2", *args, expect=2).output.replace(
        "differs from", "different from")
    victim = next(Path(src).glob("cat/*.jpg"))
    victim.unlink()
    assert "SRC changed" in encrypt(src, out, "--seed", "1", *args, expect=2).output
    assert "state" in encrypt(src, out, "--seed", "1", *args, state=tmp_path / "elsewhere", expect=2).output


def test_disk_error_mid_run_stops_cleanly_and_resumes(sample_src, tmp_path, monkeypatch):
    import errno

    from himr_pipe import shards

    args = ("--seed", "2", "--shard-size", "4")
    clean = tmp_path / "clean"
    encrypt(sample_src, clean, *args)
    real_add, calls = shards.ShardWriter.add, []

    def failing_add(self, key, members):
        calls.append(key)
        if len(calls) == 10:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_add(self, key, members)

    out = tmp_path / "out"
    monkeypatch.setattr(shards.ShardWriter, "add", failing_add)
    r = encrypt(sample_src, out, *args, expect=1)
    assert "No space left" in r.output and "rerun" in r.output
    assert not list(out.glob(".*.tmp"))  # the failed shard's temporary file is removed
    monkeypatch.setattr(shards.ShardWriter, "add", real_add)
    encrypt(sample_src, out, *args)
    assert shard_bytes(out) == shard_bytes(clean)


def test_out_is_owned_by_one_run_and_a_killed_runs_lock_is_taken_over(sample_src, tmp_path):
    """A second run on an OUT that a live run holds is refused (exit 2, naming the holder); once the holder is
    killed (kill -9: no clean-up), the next run takes the lock over and finishes; the lock file goes with it."""
    import signal
    import subprocess
    import sys

    from himr_pipe.lock import LOCK_NAME

    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from himr_pipe.lock import OutLock\n"
        f"with OutLock({str(out)!r}):\n    print('held', flush=True); time.sleep(120)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        r = encrypt(sample_src, out, "--seed", "1", expect=2)
        assert "another himr-pipe run" in r.output and f"pid {holder.pid}" in r.output
        assert not (out / "manifest.json").exists()  # refused before it wrote anything
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (out / LOCK_NAME).exists()  # the killed run left its (now dead) lock behind
    encrypt(sample_src, out, "--seed", "1")
    assert not (out / LOCK_NAME).exists() and (out / "manifest.json").exists()


def test_a_new_out_is_a_new_job_whatever_its_state_folder_held(sample_src, tmp_path):
    """Deleting OUT and running another job with the same (default) state folder starts afresh: a new key and
    the new job's record, not the old job's (found by the quick start: the audit then refused the stale record)."""
    import shutil

    out, st = tmp_path / "out", tmp_path / "st"
    encrypt(sample_src, out, "--scheme", "rs", "--shard-size", "8", state=st)
    old = json.loads((st / "job.json").read_text())
    shutil.rmtree(out)
    encrypt(sample_src, out, "--scheme", "mi", "--shard-size", "8", state=st)
    new = json.loads((st / "job.json").read_text())
    assert new["job"]["scheme"]["kind"] == "mi" and new["key"] != old["key"]
    assert "0 problem(s)" in cli("verify", out).output


def test_a_key_is_never_replaced_silently(sample_src, tmp_path):
    """Issue 22: an unseeded rerun into a written OUT with another state folder (an empty one, or another OUT's
    state of the same job) is refused before any work, OUT's bytes untouched; decrypt and audit refuse a state
    that did not write OUT's shards; the right state still resumes and decrypts."""
    args = ("--scheme", "rs", "--shard-size", "8")
    out, st = tmp_path / "out", tmp_path / "st"
    encrypt(sample_src, out, *args, state=st)
    before, man = shard_bytes(out), manifest(out)
    r = encrypt(sample_src, out, *args, state=tmp_path / "empty-state", expect=2)
    assert "re-encrypt every shard with a new key" in r.output and "--state-dir" in r.output
    other_out, other_st = tmp_path / "other", tmp_path / "other-st"
    encrypt(sample_src, other_out, *args, state=other_st)  # the same job, another key
    r = encrypt(sample_src, out, *args, state=other_st, expect=2)
    assert "is not the one that wrote OUT" in r.output and "written with another key" in r.output
    assert shard_bytes(out) == before and manifest(out) == man
    r = cli("decrypt", out, tmp_path / "plain", "--state-dir", other_st, expect=None)
    assert r.exit_code != 0 and "not the one that wrote OUT's shards" in r.output
    assert not (tmp_path / "plain").exists() or not list((tmp_path / "plain").iterdir())
    r = cli("audit", out, "--report", tmp_path / "rep", "--state-dir", other_st, "--samples", "2", expect=None)
    assert r.exit_code != 0 and "not the one that wrote OUT's shards" in r.output
    encrypt(sample_src, out, *args, state=st)  # its own state: nothing to redo, the same bytes
    assert shard_bytes(out) == before
    assert cli("decrypt", out, tmp_path / "plain", "--state-dir", st, "--limit", "2").exit_code == 0


def test_a_partial_out_refuses_another_outs_state(sample_src, tmp_path):
    """A killed run's OUT (no shards in its manifest yet) and the state of another OUT of the same job: the
    first shard on disk is checked against the state's record of it, and the run is refused."""
    args = ("--scheme", "rs", "--shard-size", "4", "--batch-size", "2")
    other_out, other_st = tmp_path / "other", tmp_path / "other-st"
    encrypt(sample_src, other_out, *args, state=other_st)
    out = tmp_path / "out"
    r = encrypt_subprocess(sample_src, out, "--workers", "0", *args, state=tmp_path / "st", fault=KILL)
    assert r.returncode == -9 and list(out.glob("*.tar"))
    before = shard_bytes(out)
    r = encrypt(sample_src, out, *args, state=other_st, expect=2)
    assert "is not the one that wrote OUT" in r.output
    assert shard_bytes(out) == before
    r = encrypt_subprocess(sample_src, out, "--workers", "0", *args, state=tmp_path / "st")
    assert r.returncode == 0, r.stderr


def test_a_refused_run_leaves_no_trace(sample_src, tmp_path):
    """Issue 22: OUT inside SRC is refused before OUT exists, so SRC gains no class folder; a run refused after
    OUT was made (here: the state folder inside OUT) removes the folders it made."""
    import shutil

    src = tmp_path / "src"
    shutil.copytree(sample_src, src)
    listing = sorted(p.name for p in src.iterdir())
    r = encrypt(src, src / "enc", state=tmp_path / "st", expect=2)
    assert "OUT must not be inside SRC" in r.output
    assert sorted(p.name for p in src.iterdir()) == listing
    out = tmp_path / "a" / "b" / "out"
    r = encrypt(src, out, state=out / "state", expect=2)
    assert "must not be inside OUT" in r.output
    assert not (tmp_path / "a").exists()


def test_a_full_state_disk_is_blamed_on_the_state_and_leaves_no_tmp(sample_src, tmp_path, monkeypatch):
    """Issue 22 (minor): a full --state-dir stops the run naming the state, not a shard, and its half-written
    record does not stay behind as a 0-byte .json.tmp; once there is space, the rerun finishes the job."""
    import errno
    import stat

    from himr_pipe import storage

    args = ("--seed", "2", "--shard-size", "6")
    st = tmp_path / "st"
    real_fsync = os.fsync
    calls = {"n": 0}

    def fsync(fd):
        # a record's file (not its folder, which is fsynced after the rename)
        if stat.S_ISREG(os.fstat(fd).st_mode) and os.readlink(f"/proc/self/fd/{fd}").startswith(str(st / "shards")):
            calls["n"] += 1
            if calls["n"] >= 2:  # the first shard's record goes through, the second finds the disk full
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(storage.os, "fsync", fsync)
    r = encrypt(sample_src, tmp_path / "out", *args, state=st, expect=1)
    assert f"the owner state at {st} cannot be written (No space left on device)" in r.output
    assert "is complete in OUT but not recorded" in r.output and "failed: OSError" not in r.output
    assert not list(st.rglob("*.tmp"))
    monkeypatch.setattr(storage.os, "fsync", real_fsync)
    encrypt(sample_src, tmp_path / "out", *args, state=st)
    clean = tmp_path / "clean"
    encrypt(sample_src, clean, *args)
    assert shard_bytes(tmp_path / "out") == shard_bytes(clean)
