"""Engines as a registry: the CLI's engine choices are the registries' names, and a new engine is one class and one
line in DISTRIBUTORS (shown with a test engine that runs the shards in reverse order in this process)."""

from __future__ import annotations

from conftest import cli, encrypt, shard_bytes

ARGS = ("--size", "32", "--patch", "16", "--shard-size", "5", "--seed", "3")


def test_the_commands_engine_choices_are_the_registries():
    from himr_pipe.cli import encrypt_shards_cmd
    from himr_pipe.decoders.choose import DECODERS
    from himr_pipe.distributor import DISTRIBUTORS
    from himr_pipe.encode import ENCODERS
    from himr_pipe.kernels.api import IMPLS

    choices = {p.name: tuple(p.type.choices) for p in encrypt_shards_cmd.params if hasattr(p.type, "choices")}
    assert choices["distributor"] == tuple(DISTRIBUTORS) and choices["decoder"] == tuple(DECODERS)
    assert choices["encoder"] == tuple(ENCODERS) and choices["kernels"] == tuple(IMPLS)


def test_a_new_engine_is_one_class_and_one_registry_line(sample_src, tmp_path, monkeypatch):
    from himr_pipe import distributor

    ran = []

    class Backwards(distributor.Local):  # a distributor of its own: every shard here, last first
        options = ()

        @classmethod
        def for_run(cls, spec, opts):
            return cls(spec)

        def __init__(self, spec):
            self.spec = spec

        def run(self, todo, on_done, progress):
            ran.extend(t.index for t in reversed(todo))
            return distributor.Serial(self.spec).run(list(reversed(todo)), on_done, progress)

    monkeypatch.setitem(distributor.DISTRIBUTORS, "backwards", Backwards)
    encrypt(sample_src, tmp_path / "local", *ARGS)
    encrypt(sample_src, tmp_path / "new", *ARGS, "--distributor", "backwards")
    assert ran == [3, 2, 1, 0] and shard_bytes(tmp_path / "new") == shard_bytes(tmp_path / "local")
    # another engine's own option is refused with the engine it needs, read from the registry
    r = encrypt(sample_src, tmp_path / "o", "--distributor", "backwards", "--ray-address", "auto", expect=2)
    assert "--ray-address needs --distributor ray" in r.output
    assert "backwards" in cli("encrypt-shards", "--help").output
