"""SRC and OUT on object stores: an S3-compatible server on this machine (moto's, started once for the
module) and ``memory://``. The same bytes and manifest as local folders; a run killed mid-way resumes to
them; the lease that replaces flock there refuses a second run and is taken over when stale."""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import cli, encrypt, encrypt_subprocess, manifest, shard_bytes
from himr_pipe.worker import WorkerHooks

moto_server = pytest.importorskip("moto.server", reason="moto[server] is in the test extras: the local S3")
pytest.importorskip("s3fs", reason="s3fs is in the test extras (and the [s3] extra)")

BUCKET = "himr-test"
ARGS = ("--scheme", "rs", "--format", "png", "--seed", "5", "--shard-size", "5", "--batch-size", "2")


@pytest.fixture(scope="module")
def s3(sample_src):
    """A local S3 (moto) with SRC uploaded under s3://BUCKET/src; endpoint and credentials in the environment,
    as a user would point at MinIO (subprocesses inherit them)."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import fsspec

    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.mkdir(BUCKET)
    fs.put(str(sample_src), f"{BUCKET}/src", recursive=True)
    try:
        yield fs
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def remote_shards(fs, prefix: str) -> dict[str, bytes]:
    fs.invalidate_cache()
    return {p.rsplit("/", 1)[-1]: fs.cat_file(p) for p in sorted(fs.ls(prefix, detail=False)) if p.endswith(".tar")}


def remote_manifest(fs, prefix: str) -> dict:
    return json.loads(fs.cat_file(f"{prefix}/manifest.json"))


@pytest.fixture(scope="module")
def local_run(sample_src, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "out"
    encrypt(sample_src, out, *ARGS)
    return out


def test_s3_src_and_out_in_worker_processes_write_the_local_bytes(s3, sample_src, local_run, tmp_path):
    url = f"s3://{BUCKET}/out-a"
    r = encrypt_subprocess(f"s3://{BUCKET}/src", url, *ARGS, "--workers", "2", state=tmp_path / "st")
    assert r.returncode == 0, r.stderr
    got = remote_shards(s3, f"{BUCKET}/out-a")
    assert got == shard_bytes(local_run) and len(got) == 4
    assert remote_manifest(s3, f"{BUCKET}/out-a") == manifest(local_run)
    names = {p.rsplit("/", 1)[-1] for p in s3.ls(f"{BUCKET}/out-a", detail=False)}
    assert names == set(got) | {"manifest.json", "_info.json"}  # no temporary object, no lease left behind
    job = json.loads((tmp_path / "st" / "job.json").read_text())
    assert job["out"] == url and job["source"]["root"] == f"s3://{BUCKET}/src"  # the state stays local
    assert "0 problem(s)" in cli("verify", url, "--decode").output

    # the trainer's loader streams the shards straight from the bucket, the same samples as from disk
    from himr_pipe.train.loader import eval_loader

    def labels(out):
        return [int(y) for _, ys in eval_loader(str(out), batch_size=4, workers=0) for y in ys]

    assert labels(url) == labels(local_run) and len(labels(url)) == 18


def test_a_run_killed_mid_way_on_s3_resumes_to_the_same_bytes(s3, sample_src, local_run, tmp_path):
    url, prefix = f"s3://{BUCKET}/out-k", f"{BUCKET}/out-k"
    state, spool = tmp_path / "st", tmp_path / "spool"
    spool.mkdir()
    r = encrypt_subprocess(sample_src, url, *ARGS, "--workers", "0", state=state,
                           fault="kill-after=12", env={"HIMR_PIPE_LEASE_TTL": "2", "TMPDIR": str(spool)})
    assert r.returncode == -9, r.stderr
    assert len(list(spool.iterdir())) == 1  # the shard it was writing, spooled locally, never uploaded
    partial = remote_shards(s3, prefix)
    assert 1 <= len(partial) < 4  # whole shards only: an object store never shows a half-uploaded one
    assert all(shard_bytes(local_run)[k] == v for k, v in partial.items())
    assert remote_manifest(s3, prefix)["status"] == "incomplete"
    s3.invalidate_cache()
    assert s3.exists(f"{prefix}/.himr-pipe.lock")  # the dead run's lease, stale after its ttl
    time.sleep(2.5)
    r = encrypt_subprocess(sample_src, url, *ARGS, "--workers", "0", state=state, env={"TMPDIR": str(spool)})
    assert r.returncode == 0, r.stderr
    assert not list(spool.iterdir())  # the dead run's spool file is cleaned up, the new ones removed after upload
    assert remote_shards(s3, prefix) == shard_bytes(local_run)
    assert remote_manifest(s3, prefix) == manifest(local_run)
    assert "0 problem(s)" in cli("verify", url).output


def test_the_lease_refuses_a_second_run_and_a_stale_one_is_taken_over(s3, sample_src, tmp_path, monkeypatch):
    url, prefix = f"s3://{BUCKET}/out-l", f"{BUCKET}/out-l"
    lease = {"host": "elsewhere", "pid": 4242, "since": "then", "token": "x", "renewed": time.time(), "ttl": 120}
    s3.pipe_file(f"{prefix}/.himr-pipe.lock", json.dumps(lease).encode())
    r = encrypt(sample_src, url, *ARGS, state=tmp_path / "st", expect=2)
    assert "another himr-pipe run" in r.output and "elsewhere" in r.output and "4242" in r.output
    s3.invalidate_cache()
    assert not [p for p in s3.ls(prefix, detail=False) if p.endswith((".tar", "manifest.json"))]  # nothing written

    lease["renewed"] = time.time() - 3600  # a run that stopped renewing an hour ago
    s3.pipe_file(f"{prefix}/.himr-pipe.lock", json.dumps(lease).encode())
    monkeypatch.setenv("HIMR_PIPE_LEASE_TTL", "60")
    encrypt(sample_src, url, *ARGS, state=tmp_path / "st")
    s3.invalidate_cache()
    assert not s3.exists(f"{prefix}/.himr-pipe.lock") and remote_manifest(s3, prefix)["status"] == "complete"


def test_a_lease_lost_to_another_run_stops_before_the_manifest(s3):
    from himr_pipe.lock import LeaseLost, OutLease, OutLocked
    from himr_pipe.storage import Location

    loc = Location(f"s3://{BUCKET}/out-race")
    with OutLease(loc, ttl=60) as mine:
        with pytest.raises(OutLocked):
            OutLease(loc, ttl=60).__enter__()
        mine.check()  # still ours
        s3.pipe_file(f"{BUCKET}/out-race/.himr-pipe.lock", json.dumps({"token": "theirs", "renewed": time.time()}).encode())
        with pytest.raises(LeaseLost):
            mine.check()
    s3.invalidate_cache()
    assert s3.exists(f"{BUCKET}/out-race/.himr-pipe.lock")  # the other run's lease is not ours to remove


def _tar_of(folder: Path) -> bytes:
    """The sample folder as one WebDataset shard (image + .cls per sample)."""
    buf = io.BytesIO()
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for label, c in enumerate(classes):
            for f in sorted((folder / c).iterdir()):
                for name, data in ((f"{c}_{f.stem}.jpg", f.read_bytes()), (f"{c}_{f.stem}.cls", str(label).encode())):
                    ti = tarfile.TarInfo(name)
                    ti.size = len(data)
                    tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def test_file_urls_are_local_paths(sample_src, local_run, tmp_path):
    encrypt(f"file://{sample_src}", f"file://{tmp_path}/fo", *ARGS, state=f"file://{tmp_path}/st")
    assert (tmp_path / "st" / "job.json").exists()  # a file:// state folder is the local path it names
    assert shard_bytes(tmp_path / "fo") == shard_bytes(local_run) and manifest(tmp_path / "fo") == manifest(local_run)


def test_memory_urls_tar_src_and_out_match_local(sample_src, tmp_path):
    import fsspec

    fs = fsspec.filesystem("memory")
    blob = _tar_of(sample_src)
    (tmp_path / "wds").mkdir()
    (tmp_path / "wds" / "part-000000.tar").write_bytes(blob)
    fs.pipe_file("/himr-src/part-000000.tar", blob)
    encrypt(tmp_path / "wds", tmp_path / "local", *ARGS)
    encrypt("memory://himr-src", "memory://himr-out", *ARGS, state=tmp_path / "st")
    got = {p.rsplit("/", 1)[-1]: fs.cat_file(p) for p in fs.ls("/himr-out", detail=False) if p.endswith(".tar")}
    assert got == shard_bytes(tmp_path / "local") and len(got) == 4
    assert json.loads(fs.cat_file("/himr-out/manifest.json")) == manifest(tmp_path / "local")
    # memory:// is one process's: worker processes could not see it, so it is refused up front
    r = cli("encrypt-shards", "memory://himr-src", "memory://himr-out2", "--workers", "1", "--no-audit",
            "--state-dir", tmp_path / "st2", *ARGS, expect=2)
    assert "memory://" in r.output and "--workers 0" in r.output


@pytest.fixture
def proxy(s3):
    """The suite's S3 behind a proxy that can go away or stall on cue (tests/storeproxy.py)."""
    from storeproxy import StoreProxy

    host, port = os.environ["AWS_ENDPOINT_URL"].rsplit("//", 1)[1].split(":")
    p = StoreProxy(host, int(port))
    yield p
    p.close()


# a store that does not answer is retried for 2 s, each request bounded by 1 s; a dead run's lease is stale in 2 s
FAULT_ENV = {"HIMR_PIPE_STORE_PATIENCE": "2", "HIMR_PIPE_STORE_TIMEOUT": "1", "HIMR_PIPE_LEASE_TTL": "2"}


@pytest.mark.parametrize("mode,workers", [("down", "2"), ("stall", "0")])
def test_a_store_that_goes_away_or_stalls_stops_the_run_clearly_and_the_rerun_resumes(
        s3, proxy, sample_src, local_run, tmp_path, mode, workers):
    url, prefix, state = f"s3://{BUCKET}/out-{mode}", f"{BUCKET}/out-{mode}", tmp_path / "st"
    env = {**FAULT_ENV, "AWS_ENDPOINT_URL": proxy.endpoint}
    proxy.arm(fail_after=3, mode=mode)  # the third shard's upload is never answered, nor anything after it
    # the subprocess's timeout is the guard against a hang; no timing is asserted
    r = encrypt_subprocess(sample_src, url, *ARGS, "--workers", workers, state=state, env=env, timeout=120)
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.splitlines()) < 40, r.stderr
    assert f"is not answering" in r.stderr and "retry 1 in" in r.stderr  # a line per retry, while it waits
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("himr-pipe: run stopped: the object store s3://himr-test (endpoint "
                           f"{proxy.endpoint}) did not answer while uploading "), last
    assert "-00000" in last and "rerun the same command to resume" in last, last  # the shard it was on
    import re

    tries = int(re.search(r"\((\d+) tries over", last).group(1))
    assert 2 <= tries <= 6, last  # our bounded retries gave up (botocore's and s3fs's hidden ones are off)

    proxy.up()
    got = remote_shards(s3, prefix)
    assert 1 <= len(got) < 4 and all(shard_bytes(local_run)[k] == v for k, v in got.items())
    if mode == "stall":
        return  # the resume after a stopped run is the same code either way: proven once, on the "down" run
    time.sleep(2.5)  # the stopped run's lease, which it could not release, goes stale
    # in one process (the bytes do not depend on the workers; it saves the suite a pool's start)
    r = encrypt_subprocess(sample_src, url, *ARGS, "--workers", "0", state=state, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert remote_shards(s3, prefix) == shard_bytes(local_run)
    assert remote_manifest(s3, prefix) == manifest(local_run)


def test_a_store_down_before_the_run_starts_is_one_clear_line(s3, proxy, sample_src, tmp_path):
    proxy.close()
    r = encrypt_subprocess(sample_src, f"s3://{BUCKET}/out-gone", *ARGS, state=tmp_path / "st",
                           env={**FAULT_ENV, "AWS_ENDPOINT_URL": proxy.endpoint}, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(
        f"himr-pipe: run stopped: the object store s3://himr-test (endpoint {proxy.endpoint}) did not answer"), r.stderr
    assert "Nothing more was written" in r.stderr


@dataclass(frozen=True)
class CountShards(WorkerHooks):
    """A line per batch a worker writes into ``path``: with a batch per shard, a line per shard that started."""

    path: str

    def after_batch(self, done_samples: int) -> None:
        with open(self.path, "a") as f:
            f.write(f"{os.getpid()} {done_samples}\n")


def test_once_a_shard_gives_up_on_the_store_no_new_shard_starts(s3, proxy, sample_src, tmp_path, monkeypatch):
    import faults
    import s3fs

    for k, v in {**FAULT_ENV, "AWS_ENDPOINT_URL": proxy.endpoint}.items():
        monkeypatch.setenv(k, v)  # the worker processes inherit them
    starts = tmp_path / "starts"
    faults.install(CountShards(str(starts)), monkeypatch.setattr)
    s3fs.S3FileSystem.clear_instance_cache()  # this process's requests go through the proxy too
    proxy.arm(fail_after=1, mode="stall")  # the first shard's upload is never answered, nor anything after it
    try:
        # 18 samples in 9 shards of one batch each, on 2 workers: both first shards stall at their upload
        res = cli("encrypt-shards", sample_src, f"s3://{BUCKET}/out-giveup", *ARGS, "--shard-size", "2",
                  "--workers", "2", "--no-progress", "--no-audit", "--state-dir", tmp_path / "st", expect=1)
    finally:
        proxy.up()
        s3fs.S3FileSystem.clear_instance_cache()
    assert "Traceback" not in res.output, res.output
    assert "did not answer while" in res.output.strip().splitlines()[-1], res.output
    started = starts.read_text().splitlines()
    # the shards under way when the first gave up, and not one more (without the stop, all 9 started in turn)
    assert 1 <= len(started) <= 2, started
