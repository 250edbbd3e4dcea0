"""Inputs that are no regular file, stores that are missing or odd, and options that say nothing: each is an input
skipped with its reason, or one line on stderr and its exit code (issue 35)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import cli, encrypt, encrypt_subprocess, manifest
from himr_pipe.errors import EXIT_REFUSED
from himr_pipe.sources import File, InputError, SourceError, open_source, read_input


@contextmanager
def no_hang(seconds: int = 60):
    """A read that would block forever (a FIFO's open) fails the test instead of hanging the suite."""
    def boom(*_):
        raise TimeoutError("blocked: a read that should never have started")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _specials(folder: Path, stem: str = "zz") -> dict[str, str]:
    """A FIFO, a socket and a link to a character device named as images in ``folder``: name -> the reason."""
    folder.mkdir(parents=True, exist_ok=True)
    os.mkfifo(folder / f"{stem}_fifo.jpg")
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(folder / f"{stem}_sock.jpg"))
    s.close()
    os.symlink("/dev/zero", folder / f"{stem}_dev.jpg")
    return {f"{stem}_fifo.jpg": "not-a-regular-file: fifo", f"{stem}_sock.jpg": "not-a-regular-file: socket",
            f"{stem}_dev.jpg": "not-a-regular-file: character device"}


def _small_folder(sample_src, root: Path, classes: int = 2) -> Path:
    """Two classes of the sample photos (3 each), copied."""
    for c in sorted(p for p in Path(sample_src).iterdir() if p.is_dir())[:classes]:
        shutil.copytree(c, root / c.name)
    return root


def _one_line(res) -> str:
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert "Traceback" not in res.output and len(lines) == 1, res.output
    return lines[0]


def test_fifos_sockets_and_devices_in_a_folder_are_skipped_before_they_are_opened(sample_src, tmp_path):
    src = _small_folder(sample_src, tmp_path / "src")
    cls = sorted(p.name for p in src.iterdir())[0]
    want = _specials(src / cls)
    os.symlink(sorted((src / cls).glob("*.jpg"))[0], src / cls / "link_to_a_photo.jpg")  # links keep working
    os.symlink("loop.jpg", src / cls / "loop.jpg")  # a link loop: unreadable, as before
    # the repro, in its own process (the process's timeout is the guard against a hang; no timing asserted)
    r = encrypt_subprocess(src, tmp_path / "out", "--shard-size", "2", "--workers", "2", "--batch-size", "2",
                           "--size", "64", "--patch", "16", timeout=240)
    assert r.returncode == 3, r.stderr
    m = manifest(tmp_path / "out")
    reasons = {s["reason"] for s in m["skipped"]}
    assert set(want.values()) <= reasons, m["skipped"]
    assert m["skip_reasons"]["not-a-regular-file"] == 3, m["skip_reasons"]
    assert sum(s["samples"] for s in m["shards"]) == 7  # the six photos and the link to one
    # a rerun finds the same and does not hang either
    r = encrypt_subprocess(src, tmp_path / "out", "--shard-size", "2", "--workers", "2", "--batch-size", "2",
                           "--size", "64", "--patch", "16", timeout=240)
    assert r.returncode in (0, 3) and "Traceback" not in r.stderr, r.stderr


def test_every_source_kind_lists_specials_as_skipped_and_never_opens_them(sample_src, tmp_path):
    photo = sorted(Path(sample_src).glob("*/*.jpg"))[0]
    # flat, unlabelled
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(photo, flat / "a.jpg")
    want = _specials(flat)
    s = open_source(str(flat))
    assert {x.ref: x.skip for x in s.inputs if x.skip} == want
    # flat, labelled by labels.csv
    (flat / "labels.csv").write_text("a.jpg,cat\nzz_fifo.jpg,dog\n")
    s = open_source(str(flat))
    assert {x.ref: x.skip for x in s.inputs if x.skip} == want
    # labels.csv itself a FIFO: refused, never read
    lab = tmp_path / "flat2"
    lab.mkdir()
    shutil.copy(photo, lab / "a.jpg")
    os.mkfifo(lab / "labels.csv")
    with no_hang(), pytest.raises(SourceError, match="not-a-regular-file: fifo"):
        open_source(str(lab))
    # SRC itself a FIFO
    os.mkfifo(tmp_path / "src.tar")
    with no_hang(), pytest.raises(SourceError, match=r"neither a folder nor a regular file \(fifo\)"):
        open_source(str(tmp_path / "src.tar"))
    # webdataset: a FIFO among the .tar shards
    import tarfile

    wds = tmp_path / "wds"
    wds.mkdir()
    with tarfile.open(wds / "a-000000.tar", "w") as tf:
        for name, data in (("k1.jpg", photo.read_bytes()), ("k1.cls", b"0")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            import io

            tf.addfile(info, io.BytesIO(data))
        fifo = tarfile.TarInfo("k2.jpg")
        fifo.type = tarfile.FIFOTYPE
        tf.addfile(fifo)
    os.mkfifo(wds / "a-000001.tar")
    with no_hang():
        s = open_source(str(wds))
        skips = {x.ref: x.skip for x in s.inputs if x.skip}
        assert skips["a-000001.tar"] == "not-a-regular-file: fifo", skips
        assert skips["a-000000.tar::k2.jpg"].startswith("not-a-regular-file"), skips
        s = open_source(str(wds / "a-{000000..000001}.tar"))
        assert {x.ref: x.skip for x in s.inputs if x.skip}["a-000001.tar"] == "not-a-regular-file: fifo"


def test_a_parquet_path_that_is_a_fifo_is_skipped_or_refused(tmp_path):
    pytest.importorskip("pyarrow")
    d = tmp_path / "pq"
    d.mkdir()
    os.mkfifo(d / "train-00000-of-00001.parquet")
    with no_hang(), pytest.raises(SourceError, match="not-a-regular-file"):
        open_source(str(d))


def test_coco_images_that_are_specials_are_skipped(sample_src, tmp_path):
    from himr_pipe.coco import open_coco_source

    photo = sorted(Path(sample_src).glob("*/*.jpg"))[0]
    images = tmp_path / "val"
    images.mkdir()
    shutil.copy(photo, images / "a.jpg")
    os.mkfifo(images / "b.jpg")
    os.mkfifo(images / "c.jpg")  # named by no record
    ann = {"images": [{"id": 1, "file_name": "a.jpg", "width": 10, "height": 10},
                      {"id": 2, "file_name": "b.jpg", "width": 10, "height": 10}],
           "annotations": [], "categories": [{"id": 1, "name": "x"}]}
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    with no_hang():
        source, _ = open_coco_source(str(images), str(tmp_path / "ann.json"))
    assert {x.ref: x.skip for x in source.inputs} == {
        "a.jpg": None, "b.jpg": "not-a-regular-file: fifo", "c.jpg": "not-a-regular-file: fifo"}
    os.mkfifo(tmp_path / "fifo.json")
    with no_hang(), pytest.raises(SourceError, match="not-a-regular-file: fifo"):
        open_coco_source(str(images), str(tmp_path / "fifo.json"))


def test_the_reader_never_opens_a_file_swapped_for_a_fifo_after_the_listing(tmp_path):
    os.mkfifo(tmp_path / "x.jpg")
    with no_hang(), pytest.raises(InputError, match="not-a-regular-file: fifo"):
        read_input(File(str(tmp_path / "x.jpg")))


def test_a_class_folder_name_that_is_not_utf8_is_stored_escaped_as_valid_utf8(sample_src, tmp_path):
    src = _small_folder(sample_src, tmp_path / "src")
    first = sorted(p for p in src.iterdir())[0]
    os.rename(bytes(first), bytes(src) + b"/\xffclass")  # sorted after the valid names, as before
    names = sorted(p.name for p in src.iterdir())
    encrypt(src, tmp_path / "out", "--size", "64", "--patch", "16")
    raw = (tmp_path / "out" / "manifest.json").read_bytes()
    classes = json.loads(raw.decode("utf-8"))["classes"]
    assert classes == [n if n.isascii() else "\\xffclass" for n in names], classes
    assert all(c.encode("utf-8") for c in classes)  # no lone surrogate: valid UTF-8


@pytest.mark.parametrize("opt", ["--max-pixels", "--max-bytes"])
@pytest.mark.parametrize("value", ["0", "-5"])
def test_a_limit_below_one_is_refused_in_one_line(sample_src, tmp_path, opt, value):
    res = encrypt(sample_src, tmp_path / "out", opt, value, expect=EXIT_REFUSED)
    assert _one_line(res) == f"himr-pipe: error: {opt} must be at least 1, got {value} (leave it out for the " \
                             "default limit)"
    assert not (tmp_path / "out").exists()


def test_a_url_without_its_fsspec_backend_is_one_line_naming_the_package(tmp_path):
    import importlib.util

    if importlib.util.find_spec("gcsfs") is not None:
        pytest.skip("gcsfs is installed here")
    res = encrypt("gs://bucket/src", tmp_path / "out", expect=EXIT_REFUSED)
    assert _one_line(res) == ("himr-pipe: error: cannot open gs:// URLs: the fsspec backend for them is not "
                              "installed: pip install gcsfs")
    res = encrypt("nosuchproto://bucket/src", tmp_path / "out", expect=EXIT_REFUSED)
    assert _one_line(res).startswith("himr-pipe: error: cannot open nosuchproto:// URLs (Protocol not known")


class BackendTrouble(Exception):
    """An error of a backend's own type, as httpx's ConnectError under hf:// with no network (not an OSError)."""


def test_a_backend_error_of_its_own_type_is_one_line_exit_2(tmp_path, monkeypatch):
    import importlib

    from fsspec.implementations.memory import MemoryFileSystem

    class Unreachable(MemoryFileSystem):
        protocol = "unreachable"

        def exists(self, path, **kw):
            raise BackendTrouble("[Errno -2] Name or service not known")

        info = isfile = find = exists

    registry = importlib.import_module("fsspec.registry")._registry
    monkeypatch.setitem(registry, "unreachable", Unreachable)  # undone after the test
    res = encrypt("unreachable://datasets/foo/bar", tmp_path / "out", expect=EXIT_REFUSED)
    assert _one_line(res) == ("himr-pipe: error: the store unreachable://datasets can't be used (looking at SRC: "
                              "BackendTrouble: [Errno -2] Name or service not known)")


def test_an_unreachable_s3_src_is_said_to_be_unreachable_not_a_missing_annotations_file(tmp_path, monkeypatch):
    pytest.importorskip("s3fs")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for k, v in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "x",
                 "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1",
                 "HIMR_PIPE_STORE_PATIENCE": "1", "HIMR_PIPE_STORE_TIMEOUT": "1"}.items():
        monkeypatch.setenv(k, v)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    try:
        res = cli("encrypt-shards", "s3://nobucket/src", tmp_path / "out", "--workers", "0", "--no-audit",
                  "--no-progress", expect=1)
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
    last = res.output.strip().splitlines()[-1]
    assert "Traceback" not in res.output, res.output
    assert last.startswith(f"himr-pipe: run stopped: the object store s3://nobucket (endpoint http://127.0.0.1:"
                           f"{port}) did not answer while looking at SRC"), last
    assert "instances_" not in res.output and "annotations" not in res.output, res.output
