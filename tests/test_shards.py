"""The shard writer builds tar bytes itself: they must equal WebDataset's TarWriter's, byte for byte."""

from __future__ import annotations

import io
import tarfile

import webdataset as wds
from hypothesis import given, settings
from hypothesis import strategies as st

from himr_pipe.shards import ShardWriter, iter_samples

EXTS = st.sampled_from(["jpg", "cls", "json", "png", "npy", "a.b", "é", "x" * 120])
SAMPLE = st.tuples(
    st.one_of(st.from_regex(r"[0-9]{6}_[0-9]{6}", fullmatch=True),
              st.text(min_size=1, max_size=130).filter(lambda k: "." not in k and "\x00" not in k
                                                      and not k.startswith("_"))),
    st.dictionaries(EXTS, st.binary(max_size=1100) | st.sampled_from([b"", b"\0" * 512, b"x" * 513]),
                    min_size=1, max_size=3),
)


def reference_bytes(samples) -> bytes:
    """What the previous writer produced: WebDataset's TarWriter with the shard settings."""
    buf = io.BytesIO()
    tw = wds.TarWriter(buf, user="", group="", mode=0o444, mtime=0, encoder=False)
    for key, members in samples:
        tw.write({"__key__": key, **members})
    tw.close()
    return buf.getvalue()


def written_bytes(tmp_path, samples, flush_every: int) -> tuple[bytes, object]:
    w = ShardWriter(str(tmp_path), "s.tar")
    for i, (key, members) in enumerate(samples):
        w.add(key, members)
        if flush_every and i % flush_every == 0:
            w.flush()
    info = w.commit()
    w.publish()
    return (tmp_path / "s.tar").read_bytes(), info


@settings(max_examples=60, deadline=None)
@given(samples=st.lists(SAMPLE, max_size=6), flush_every=st.integers(0, 3))
def test_shard_bytes_equal_webdatasets_tarwriter(tmp_path_factory, samples, flush_every):
    import hashlib

    tmp = tmp_path_factory.mktemp("shard")
    data, info = written_bytes(tmp, samples, flush_every)
    assert data == reference_bytes(samples)
    assert info.bytes == len(data) and info.sha256 == hashlib.sha256(data).hexdigest()
    assert info.samples == len(samples)


def test_a_written_shard_reads_back_with_tarfile_and_webdataset(tmp_path):
    samples = [(f"000000_{i:06d}", {"jpg": bytes([i]) * (100 + 300 * i), "cls": str(i).encode(), "json": b"{}"})
               for i in range(5)]
    data, _ = written_bytes(tmp_path, samples, 2)
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        for m in tf:
            assert (m.mode, m.mtime, m.uid, m.gid, m.uname, m.gname) == (0o444, 0, 0, 0, "", "")
    assert [(k, m) for k, m in iter_samples(str(tmp_path / "s.tar"))] == samples
    got = [(s["__key__"], s["jpg"]) for s in wds.WebDataset(str(tmp_path / "s.tar"), shardshuffle=False)]
    assert got == [(k, m["jpg"]) for k, m in samples]
