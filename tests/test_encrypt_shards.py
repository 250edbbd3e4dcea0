"""encrypt-shards end to end on the CPU: exactness, readers, randomness, privacy, verify, clear errors."""

import io
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import cli, encrypt, manifest, shard_bytes
from himr_pipe.kernels import mi_mix
from himr_pipe.shards import iter_samples

P = 16


def load(out, ext="png"):
    """{key: (image array, label)} from every shard of OUT."""
    res = {}
    for tar in sorted(Path(out).glob("*.tar")):
        for key, m in iter_samples(str(tar)):
            img = np.load(io.BytesIO(m["npy"])) if ext == "npy" else np.asarray(Image.open(io.BytesIO(m[ext])))
            res[key] = (img, int(m["cls"]))
    return res


def patches(img, p=P):
    h, w, c = img.shape
    t = img.reshape(h // p, p, w // p, p, c).transpose(0, 2, 1, 3, 4).reshape(-1, p, p, c)
    return [bytes(x) for x in t]


@pytest.fixture(scope="module")
def runs(sample_src, tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    outs = {}
    for scheme in ("none", "rs", "mi"):
        out = base / scheme
        encrypt(sample_src, out, "--scheme", scheme, "--format", "png", "--seed", "7", "--shard-size", "5")
        outs[scheme] = out
    return outs


def test_rs_is_exactly_a_patch_permutation_of_none(runs):
    plain, enc = load(runs["none"]), load(runs["rs"])
    assert plain.keys() == enc.keys() and len(plain) == 18
    perms = []
    for key in plain:
        (a, la), (b, lb) = plain[key], enc[key]
        assert la == lb and a.shape == b.shape == (224, 224, 3)
        pa, pb = patches(a), patches(b)
        assert Counter(pa) == Counter(pb), key  # the same multiset of PxP patches
        pos = {}
        for i, x in enumerate(pa):
            pos.setdefault(x, i)
        perms.append(tuple(pos[x] for x in pb))
    assert all(p != tuple(range(196)) for p in perms)
    assert len(set(perms)) == len(perms)  # a fresh permutation per image


def test_mi_is_the_documented_mean_of_sub_patches(runs):
    plain, enc = load(runs["none"]), load(runs["mi"])
    assert plain.keys() == enc.keys()
    for key in plain:
        a, b = plain[key][0], enc[key][0]
        assert b.shape == (112, 112, 3)
        want = mi_mix(torch.from_numpy(a[None].copy()), P)[0].numpy()
        assert np.array_equal(b, want), key


def test_manifest_and_timm_split_file(runs, sample_src):
    m = manifest(runs["rs"])
    assert m["status"] == "complete"
    assert m["classes"] == sorted(os.listdir(sample_src))
    assert m["totals"] == {"inputs": 18, "written": 18, "inputs_written": 18, "skipped": 0, "upscaled": 0}
    assert m["job"]["scheme"]["kind"] == "rs" and m["job"]["scheme"]["patch"] == 16
    assert m["job"]["randomness"] == "seeded"
    assert [s["samples"] for s in m["shards"]] == [5, 5, 5, 3]
    info = json.loads((runs["rs"] / "_info.json").read_text())["splits"]["train"]
    assert info["num_samples"] == 18 and info["filenames"] == [s["name"] for s in m["shards"]]
    assert info["shard_lengths"] == [5, 5, 5, 3]
    # labels follow sorted class folders, and shuffling mixes classes inside shards
    first = [lab for k, (_, lab) in sorted(load(runs["rs"]).items()) if k.startswith("000000_")]
    assert len(set(first)) > 1


def test_readable_by_webdataset(runs):
    import webdataset as wds

    urls = [str(p) for p in sorted(runs["rs"].glob("*.tar"))]
    ds = wds.WebDataset(urls, shardshuffle=False).decode("rgb8").to_tuple("png", "cls", "json")
    items = list(ds)
    assert len(items) == 18
    img, cls, meta = items[0]
    assert img.shape == (224, 224, 3) and 0 <= cls < 6
    assert meta == {"scheme": "rs", "size": [224, 224], "patch": 16}


def test_readable_by_dali_webdataset_reader(runs):
    from nvidia.dali import fn, pipeline_def, types

    out = runs["mi"]
    paths = [str(p) for p in sorted(out.glob("*.tar"))]

    @pipeline_def(batch_size=6, num_threads=1, device_id=None)
    def pipe():
        img, cls = fn.readers.webdataset(paths=paths, ext=["png", "cls"], missing_component_behavior="error",
                                         name="r")
        return fn.decoders.image(img, device="cpu", output_type=types.RGB), cls

    p = pipe()
    p.build()
    seen = 0
    for _ in range(3):
        imgs, cls = p.run()
        for i in range(len(imgs)):
            assert np.array(imgs.at(i)).shape == (112, 112, 3)
            assert 0 <= int(bytes(np.array(cls.at(i))).decode()) < 6
            seen += 1
    assert seen == 18


def test_readable_by_timm(runs):
    pytest.importorskip("timm")
    from timm.data import create_dataset

    ds = create_dataset("wds/himr", root=str(runs["rs"]), split="train", is_training=False, batch_size=1)
    items = list(ds)
    assert len(ds) == 18 and len(items) == 18
    assert items[0][0].size == (224, 224)


def test_seed_reproduces_bytes_and_no_seed_draws_fresh(sample_src, tmp_path):
    encrypt(sample_src, tmp_path / "a", "--seed", "3", "--shard-size", "8")
    encrypt(sample_src, tmp_path / "b", "--seed", "3", "--shard-size", "8")
    assert shard_bytes(tmp_path / "a") == shard_bytes(tmp_path / "b")
    encrypt(sample_src, tmp_path / "c", "--shard-size", "8")
    encrypt(sample_src, tmp_path / "d", "--shard-size", "8")
    assert manifest(tmp_path / "c")["job"]["randomness"] == "cryptographic"
    assert shard_bytes(tmp_path / "c") != shard_bytes(tmp_path / "d")


@pytest.mark.parametrize("scheme", ["rs", "mi-shuffle"])
def test_bytes_do_not_depend_on_batch_size_or_the_overlap_of_stages(sample_src, tmp_path, scheme):
    """The stages overlap in threads and reuse batch buffers: with batches of 3 (six batches through the
    buffer pool, several in flight) the shards are the bytes of one batch of 64 done in turn."""
    args = ("--scheme", scheme, "--seed", "3", "--shard-size", "8", "--gap", "1", "--drop", "0.1")
    encrypt(sample_src, tmp_path / "a", *args, "--batch-size", "3")
    encrypt(sample_src, tmp_path / "b", *args, "--batch-size", "64")
    assert shard_bytes(tmp_path / "a") == shard_bytes(tmp_path / "b")


def test_defaults_are_mi_shuffle_as_jpeg(sample_src, tmp_path):
    """The default setting (README "Privacy"): mi-shuffle P=16 at 224, JPEG q90 4:4:4 (8-pixel cells)."""
    out = tmp_path / "o"
    encrypt(sample_src, out)
    imgs = load(out, "jpg")
    assert len(imgs) == 18 and all(v[0].shape == (112, 112, 3) for v in imgs.values())
    m = manifest(out)
    assert m["job"]["format"] == {"name": "jpeg", "ext": "jpg", "quality": 90, "subsampling": "444"}
    assert (m["job"]["scheme"]["kind"], m["job"]["scheme"]["shuffle"], m["job"]["scheme"]["patch"]) == ("mi", True, 16)
    assert cli("verify", out, "--decode").exit_code == 0
    rs = tmp_path / "rs"
    encrypt(sample_src, rs, "--scheme", "rs")
    assert manifest(rs)["job"]["format"]["subsampling"] == "420"  # 16-pixel cells take 4:2:0


def test_raw_format_and_non_square(sample_src, tmp_path):
    out = tmp_path / "o"
    encrypt(sample_src, out, "--format", "raw", "--size", "128x192", "--scheme", "mi", "--patch", "32")
    imgs = load(out, "npy")
    assert all(v[0].shape == (64, 96, 3) and v[0].dtype == np.uint8 for v in imgs.values())
    assert cli("verify", out, "--decode").exit_code == 0


def _jpeg_with_metadata(path):
    from skimage import data

    im = Image.fromarray(data.coffee())
    exif = Image.Exif()
    exif[0x010F] = "SecretCameraMaker"
    exif[0x9286] = "UserCommentSecret"
    icc = b"\0" * 128 + b"acspSECRETICC" + b"\0" * 200
    im.save(path, "JPEG", quality=90, exif=exif.tobytes(), icc_profile=icc, comment=b"SECRETCOMMENT")


def test_no_metadata_paths_or_seed_in_out(tmp_path):
    src = tmp_path / "my_private_dataset"
    (src / "patients").mkdir(parents=True)
    _jpeg_with_metadata(src / "patients" / "john_doe_scan.jpg")
    out = tmp_path / "out"
    seed = 918273645
    encrypt(src, out, "--seed", seed, "--scheme", "none")
    blob = b"".join(p.read_bytes() for p in out.iterdir())
    for secret in (b"john_doe", b"my_private_dataset", str(tmp_path).encode(), str(seed).encode(),
                   b"SecretCameraMaker", b"UserCommentSecret", b"SECRETICC", b"SECRETCOMMENT", b"Exif"):
        assert secret not in blob, secret
    state = Path(f"{out}.state")
    assert (state / "job.json").exists() and oct(state.stat().st_mode & 0o777) == "0o700"
    written = json.loads(next((state / "shards").iterdir()).read_text())["written"]
    assert written[0][2] == "patients/john_doe_scan.jpg"  # the owner can trace it back
    out2 = tmp_path / "out2"
    encrypt(src, out2, "--include-paths", "--scheme", "none")
    assert b"john_doe_scan.jpg" in b"".join(p.read_bytes() for p in out2.glob("*.tar"))


def test_verify_reports_damage(sample_src, tmp_path):
    out = tmp_path / "o"
    encrypt(sample_src, out, "--shard-size", "6")
    assert cli("verify", out).exit_code == 0
    tar = sorted(out.glob("*.tar"))[1]
    data = bytearray(tar.read_bytes())
    data[5000] ^= 0xFF
    tar.write_bytes(bytes(data))
    (out / "train-000099.tar").write_bytes(b"")
    res = cli("verify", out, expect=1)
    assert "sha256 mismatch" in res.output and "does not list" in res.output
    sorted(out.glob("*.tar"))[0].unlink()
    assert "missing" in cli("verify", out, expect=1).output


def test_clear_errors_before_any_work(sample_src, tmp_path):
    r = encrypt(tmp_path / "nope", tmp_path / "o", expect=2)
    assert "does not exist" in r.output
    r = encrypt(sample_src, tmp_path / "o", "--patch", "15", expect=2)
    assert "does not divide" in r.output
    r = encrypt(sample_src, tmp_path / "o", "--patch", "4", "--size", "32", expect=2)
    assert "multiple of 8" in r.output
    assert not (tmp_path / "o").exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert "not empty" in encrypt(sample_src, foreign, expect=2).output
    out = tmp_path / "job"
    encrypt(sample_src, out, "--seed", "1")
    r = encrypt(sample_src, out, "--seed", "1", "--scheme", "rs", expect=2)
    assert "different job" in r.output and "scheme.kind" in r.output
    r = encrypt(sample_src, out, "--seed", "1", "--scheme", "mi", expect=2)
    assert "different job" in r.output and "scheme.shuffle" in r.output
    r = encrypt(sample_src, out, "--seed", "1", "--patch", "32", expect=2)
    assert "different job" in r.output


def test_rerun_of_a_complete_job_changes_nothing(sample_src, tmp_path):
    out = tmp_path / "o"
    encrypt(sample_src, out, "--shard-size", "7")
    before = shard_bytes(out), manifest(out)
    encrypt(sample_src, out, "--shard-size", "7")
    assert (shard_bytes(out), manifest(out)) == before


def test_views_bake_random_crops_each_its_own_sample(sample_src, tmp_path):
    out, state = tmp_path / "v", tmp_path / "v.state"
    args = ("--views", "3", "--scheme", "rs", "--format", "png", "--seed", "5", "--shard-size", "10")
    r = encrypt(sample_src, out, *args, state=state)
    assert "as 54 samples" in r.output
    m = manifest(out)
    assert m["totals"]["inputs"] == 18 and m["totals"]["inputs_written"] == 18 and m["totals"]["written"] == 54
    assert m["job"]["views"] == 3 and m["job"]["view_transform"]["random_resized_crop"]["scale"] == [0.08, 1.0]
    by_input = {}
    for p in (state / "shards").iterdir():
        for key, idx, _ in json.loads(p.read_text())["written"]:
            by_input.setdefault(idx, []).append(key)
    assert len(by_input) == 18 and all(len(v) == 3 for v in by_input.values())
    imgs = load(out)
    metas = {}
    for tar in sorted(out.glob("*.tar")):
        for key, mem in iter_samples(str(tar)):
            metas[key] = json.loads(mem["json"])
    for keys in by_input.values():
        assert sorted(metas[k]["view"] for k in keys) == [0, 1, 2]
        a, b, c = (imgs[k][0] for k in keys)
        assert not np.array_equal(a, b) and not np.array_equal(b, c)  # three different crops
    assert cli("verify", out).exit_code == 0
    encrypt(sample_src, tmp_path / "again", *args)
    assert shard_bytes(out) == shard_bytes(tmp_path / "again")  # reproducible under --seed


def test_views_count_a_bad_input_once(sample_src, tmp_path):
    src = tmp_path / "src" / "cls"
    src.mkdir(parents=True)
    files = sorted(sample_src.glob("*/*.jpg"))[:2]
    for f in files:
        (src / f.name).write_bytes(f.read_bytes())
    (src / "broken.jpg").write_bytes(files[0].read_bytes()[:4000])
    for decoder in ("dali", "torchvision"):
        out = tmp_path / f"out_{decoder}"
        encrypt(tmp_path / "src", out, "--views", "2", "--decoder", decoder, "--shard-size", "2", expect=3)
        t = manifest(out)["totals"]
        assert (t["inputs"], t["inputs_written"], t["written"], t["skipped"]) == (3, 2, 4, 1)


def test_rs_defences_blank_gaps_and_dropped_patches(sample_src, tmp_path):
    args = ("--format", "png", "--seed", "7", "--shard-size", "5")
    encrypt(sample_src, tmp_path / "none", "--scheme", "none", *args)
    encrypt(sample_src, tmp_path / "def", "--scheme", "rs", "--gap", "2", "--drop", "0.25", *args)
    m = manifest(tmp_path / "def")
    assert (m["job"]["scheme"]["gap"], m["job"]["scheme"]["drop"]) == (2, 0.25)
    plain, enc = load(tmp_path / "none"), load(tmp_path / "def")
    for key in plain:
        pb = np.stack([np.frombuffer(b, np.uint8).reshape(P, P, 3) for b in patches(enc[key][0])])
        pa = np.stack([np.frombuffer(b, np.uint8).reshape(P, P, 3) for b in patches(plain[key][0])])
        assert (pb[:, :2] == 0).all() and (pb[:, -2:] == 0).all() and (pb[:, :, :2] == 0).all()
        blank = [(p == 0).all() for p in pb]
        assert sum(blank) >= 49
        inner_a = Counter(bytes(p[2:-2, 2:-2]) for p in pa)
        inner_b = Counter(bytes(p[2:-2, 2:-2]) for p, z in zip(pb, blank) if not z)
        assert not inner_b - inner_a  # every kept patch is a plain patch's inner part
