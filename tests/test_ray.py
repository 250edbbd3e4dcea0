"""--distributor ray on a local 2-CPU Ray, started once for this module: the same bytes as the local
distributor, and a Ray worker killed mid-shard is retried to the same bytes."""

from __future__ import annotations

import os

import pytest

from conftest import cli, encrypt, manifest, shard_bytes

ray = pytest.importorskip("ray", reason="Ray is in the test extras; without it the Ray distributor is untestable")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


ARGS = ("--scheme", "rs", "--format", "png", "--seed", "5", "--shard-size", "5", "--batch-size", "2")


def test_ray_writes_the_same_bytes_and_manifest_as_local_processes(sample_src, tmp_path, local_ray):
    encrypt(sample_src, tmp_path / "local", *ARGS)
    encrypt(sample_src, tmp_path / "ray", *ARGS, "--distributor", "ray")
    assert shard_bytes(tmp_path / "ray") == shard_bytes(tmp_path / "local") and len(shard_bytes(tmp_path / "ray")) == 4
    assert manifest(tmp_path / "ray") == manifest(tmp_path / "local")


def test_every_distributor_builds_its_worker_from_one_spec_and_writes_the_same_bytes(sample_src, tmp_path,
                                                                                       local_ray, monkeypatch):
    """Serial (--workers 0), local processes and Ray each get the one WorkerSpec (by keyword, picklable, the job
    as its public record), and the three write the same bytes."""
    import pickle

    from himr_pipe import distributor
    from himr_pipe.worker import WorkerSpec

    specs = []
    for name in ("Serial", "LocalProcesses", "RayTasks"):  # the engines the registry's entries build
        cls = getattr(distributor, name)

        def spy(self, *a, __init__=cls.__init__, **k):
            __init__(self, *a, **k)
            specs.append(self.spec)

        monkeypatch.setattr(cls, "__init__", spy)
    outs = {"serial": (), "processes": ("--workers", "2", "--threads", "1"), "ray": ("--distributor", "ray")}
    for name, extra in outs.items():
        encrypt(sample_src, tmp_path / name, *ARGS, *extra)
    assert len(specs) == 3 and all(isinstance(s, WorkerSpec) for s in specs)
    assert len({pickle.dumps(s.job) for s in specs}) == 1 and len({s.key_hex for s in specs}) == 1
    assert pickle.loads(pickle.dumps(specs[0])) == specs[0]
    assert shard_bytes(tmp_path / "serial") == shard_bytes(tmp_path / "processes") == shard_bytes(tmp_path / "ray")


def test_a_killed_ray_worker_is_retried_to_the_same_bytes(sample_src, tmp_path, local_ray, monkeypatch):
    import faults

    encrypt(sample_src, tmp_path / "local", *ARGS)
    marker = tmp_path / "killed"
    # the first worker to reach 3 samples SIGKILLs itself mid-shard; Ray retries its task in a new process. The
    # hooks go to Ray inside the WorkerSpec, their class by value (Ray's workers need not see tests/)
    ray.cloudpickle.register_pickle_by_value(faults)
    try:
        faults.install(faults.KillAfter(3, str(marker)), monkeypatch.setattr)
        encrypt(sample_src, tmp_path / "ray", *ARGS, "--distributor", "ray")
    finally:
        ray.cloudpickle.unregister_pickle_by_value(faults)
    assert marker.exists()  # a worker did die
    assert shard_bytes(tmp_path / "ray") == shard_bytes(tmp_path / "local")
    assert not [e for e in os.listdir(tmp_path / "ray") if e.endswith(".tmp")]
    cli("verify", tmp_path / "ray", "--decode")


def test_ray_address_needs_the_ray_distributor(sample_src, tmp_path):
    r = encrypt(sample_src, tmp_path / "o", "--ray-address", "auto", expect=2)
    assert "--distributor ray" in r.output


def test_ray_tasks_take_one_gpu_each_on_cuda():
    """--device cuda: each shard task asks Ray for one whole GPU (a GPU is truly required to run it; the
    resource request is what can be checked here)."""
    from himr_pipe.distributor import ray_task_options

    assert ray_task_options("cpu", 3) == {"num_cpus": 1, "max_retries": 3, "retry_exceptions": False}
    assert ray_task_options("cuda:1", 3) == {"num_cpus": 1, "max_retries": 3, "retry_exceptions": False,
                                             "num_gpus": 1}


def test_a_ray_worker_publishes_nothing_after_its_driver_is_gone(sample_src, tmp_path, local_ray, monkeypatch):
    """The driver's hold lost between a Ray worker's check and its rename (issue 35: a shard landed ~50 ms after
    the driver's kill): the worker checks again after the rename and takes the shard back; nothing stays in OUT
    that was not there when the driver went."""
    import test_runctl

    out, seen = tmp_path / "out", tmp_path / "seen"
    ray.cloudpickle.register_pickle_by_value(test_runctl)
    try:
        test_runctl.with_driver(monkeypatch, test_runctl.DriverDiesBefore(1, str(out), str(seen)))
        r = encrypt(sample_src, out, *ARGS, "--distributor", "ray", expect=1)
    finally:
        ray.cloudpickle.unregister_pickle_by_value(test_runctl)
    assert "no longer held" in r.output and "Traceback" not in r.output
    assert set(e for e in os.listdir(out) if e.endswith(".tar")) <= set(seen.read_text().split())
