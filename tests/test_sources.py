"""The sources package: parquet in the Hugging Face datasets layout, flat folders (labels.csv or unlabelled), and
the shard-level reader (a tar opened once per shard, not once per member)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import cli, encrypt, manifest, shard_bytes

pa = pytest.importorskip("pyarrow", reason="pyarrow is in the test extras (the parquet source's optional extra)")
pq = pytest.importorskip("pyarrow.parquet")

ARGS = ("--size", "32", "--patch", "16", "--shard-size", "4", "--seed", "5")
NAMES = ["bird", "cat", "dog"]


def _photos(sample_src) -> list[tuple[str, bytes]]:
    """(class folder, JPEG bytes) of the bundled sample photos, in sorted order."""
    return [(p.parent.name, p.read_bytes()) for p in sorted(Path(sample_src).glob("*/*.jpg"))]


def _hf_parquet(path: Path, rows: list[tuple], names=NAMES, row_group_size: int = 3) -> None:
    """A parquet file as Hugging Face `datasets` writes one: an image column of {bytes, path} structs, an int64
    label column, and the features (ClassLabel names) in the schema's metadata."""
    image = pa.array([None if b is None else {"bytes": b, "path": f"{i}.jpg"} for i, (b, _) in enumerate(rows)],
                     pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    label = pa.array([lab for _, lab in rows], pa.int64())
    features = {"image": {"_type": "Image"}, "label": {"_type": "ClassLabel", "names": names}}
    schema = pa.schema([("image", image.type), ("label", pa.int64())],
                       metadata={"huggingface": json.dumps({"info": {"features": features}})})
    pq.write_table(pa.Table.from_arrays([image, label], schema=schema), path, row_group_size=row_group_size)


@pytest.fixture(scope="module")
def parquet_src(tmp_path_factory, sample_src):
    """Two files of a split (several row groups each), with a null image, a corrupt image, a null label and a
    label of no class among real photos."""
    photos = [b for _, b in _photos(sample_src)]
    root = tmp_path_factory.mktemp("hf") / "data"
    root.mkdir()
    a = [(photos[i], i % 3) for i in range(7)] + [(None, 1), (b"\xff\xd8 not really a jpeg", 2)]
    b = [(photos[7 + i], i % 3) for i in range(6)] + [(photos[0], None), (photos[1], 7)]
    _hf_parquet(root / "train-00000-of-00002.parquet", a)
    _hf_parquet(root / "train-00001-of-00002.parquet", b)
    return root


def test_a_parquet_split_encrypts_with_its_class_names_and_every_row_accounted_for(parquet_src, tmp_path):
    out = tmp_path / "out"
    encrypt(parquet_src, out, *ARGS, expect=3)
    m = manifest(out)
    assert m["classes"] == NAMES and m["num_classes"] == 3 and m["status"] == "complete"
    t = m["totals"]
    assert t["inputs"] == 9 + 8 and t["inputs_written"] == 13 and t["skipped"] == 4
    assert m["skip_reasons"] == {"bad-label": 1, "no-image": 1, "no-label": 1, "not-an-image": 1}
    cli("verify", out, "--decode")
    # the labels are the rows' own: sample id -> label, read back through the owner's state
    from himr_pipe.shards import LABEL, iter_shard

    labels = sorted(int(s[LABEL]) for e in m["shards"] for _, s in iter_shard(str(out), e["name"]))
    assert labels == sorted([i % 3 for i in range(7)] + [i % 3 for i in range(6)])


def test_a_parquet_glob_and_a_single_file_are_sources_too(parquet_src, tmp_path):
    from himr_pipe.sources import open_source

    folder = open_source(str(parquet_src))
    glob = open_source(str(parquet_src / "train-*.parquet"))
    one = open_source(str(parquet_src / "train-00000-of-00002.parquet"))
    assert folder.kind == glob.kind == one.kind == "parquet"
    assert [i.ref for i in glob.inputs] == [i.ref for i in folder.inputs] and len(one.inputs) == 9
    assert folder.fingerprint == glob.fingerprint


def test_a_parquet_run_is_reproducible_and_resumes_byte_identically(parquet_src, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    encrypt(parquet_src, a, *ARGS, expect=3)
    encrypt(parquet_src, b, *ARGS, expect=3)
    assert shard_bytes(a) == shard_bytes(b) and len(shard_bytes(a)) == 4
    first = sorted(a.glob("*.tar"))[1]
    first.unlink()  # a shard lost: the rerun redoes it alone, to the same bytes
    encrypt(parquet_src, a, *ARGS, expect=3)
    assert shard_bytes(a) == shard_bytes(b)


def test_without_pyarrow_a_parquet_src_is_refused_in_one_line(parquet_src, tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_pyarrow(name, *a, **k):
        if name.startswith("pyarrow"):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    r = encrypt(parquet_src, tmp_path / "o", *ARGS, expect=2)
    assert "pip install 'himr-pipe[parquet]'" in r.output and len(r.output.strip().splitlines()) == 1


def test_a_flat_folder_labelled_by_labels_csv(sample_src, tmp_path):
    src = tmp_path / "flat"
    (src / "img").mkdir(parents=True)
    rows = ["path,label"]
    for i, (cls, data) in enumerate(_photos(sample_src)[:8]):
        (src / "img" / f"{i:02d}.jpg").write_bytes(data)
        if i != 3:  # 03.jpg is named by no row
            rows.append(f"img/{i:02d}.jpg,{cls}")
    rows.append("img/gone.jpg,cat")  # a row naming a file SRC lacks
    (src / "labels.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    encrypt(src, out, *ARGS, expect=3)
    m = manifest(out)
    classes = sorted({cls for cls, _ in _photos(sample_src)[:8]})
    assert m["classes"] == classes and "labelled" not in m
    assert m["totals"]["inputs"] == 9 and m["totals"]["inputs_written"] == 7
    assert m["skip_reasons"] == {"missing-file": 1, "no-label": 1}
    cli("verify", out)


def test_an_unlabelled_folder_writes_samples_without_cls_and_train_refuses_them(sample_src, tmp_path):
    src = tmp_path / "unlabelled"
    src.mkdir()
    for i, (_, data) in enumerate(_photos(sample_src)[:6]):
        (src / f"{i:02d}.jpg").write_bytes(data)
    (src / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    encrypt(src, out, *ARGS, expect=3)
    m = manifest(out)
    assert m["labelled"] is False and m["classes"] is None
    assert m["totals"]["inputs_written"] == 6 and m["skip_reasons"] == {"unsupported-extension": 1}
    from himr_pipe.shards import iter_shard

    members = [set(s) for e in m["shards"] for _, s in iter_shard(str(out), e["name"])]
    assert len(members) == 6 and all("cls" not in s and "jpg" in s and "json" in s for s in members)
    cli("verify", out, "--decode")
    r = cli("train", out, "--out", tmp_path / "run", expect=2)
    assert "unlabelled samples (no .cls)" in r.output and len(r.output.strip().splitlines()) == 1


def test_an_empty_folder_is_still_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README").write_text("nothing here")
    r = encrypt(tmp_path / "empty", tmp_path / "o", expect=2)
    assert "holds neither class sub-folders" in r.output


def test_a_tar_is_opened_once_per_shard_not_once_per_member(sample_src, tmp_path, monkeypatch):
    import webdataset as wds

    from himr_pipe.sources import webdataset as wds_source

    src = tmp_path / "tars"
    src.mkdir()
    photos = _photos(sample_src)
    for t in range(2):
        with wds.TarWriter(str(src / f"part-{t:06d}.tar")) as w:
            for i, (_, data) in enumerate(photos[t * 6:(t + 1) * 6]):
                w.write({"__key__": f"s{i}", "jpg": data, "cls": str(i % 3).encode()})
    opened = []
    real = wds_source._open_tar

    def counting(path):
        opened.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(wds_source, "_open_tar", counting)
    out = tmp_path / "out"
    encrypt(src, out, "--size", "32", "--patch", "16", "--shard-size", "6", "--seed", "1")
    assert manifest(out)["totals"]["inputs_written"] == 12
    # the listing opens each tar once (its labels); each of the 2 shards then opens each tar it reads once:
    # 12 members read, at most 2 + 2 * 2 opens
    assert sorted(set(opened)) == ["part-000000.tar", "part-000001.tar"] and len(opened) <= 6


def test_locations_cross_to_worker_processes(parquet_src):
    """What a worker process receives of each input (its location) pickles, for every kind."""
    import pickle

    from himr_pipe.sources import ShardReader, open_source

    src = open_source(str(parquet_src))
    locs = [i.loc for i in src.inputs]
    assert pickle.loads(pickle.dumps(locs)) == locs
    with ShardReader(locs[:3]) as r:
        assert all(r.read(loc)[:2] == b"\xff\xd8" for loc in locs[:3])
