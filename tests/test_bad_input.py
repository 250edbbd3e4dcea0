"""A generated corpus of bad and odd inputs: every input written or skipped with a reason, the run goes on."""

import io
import json
import os
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image, ImageOps
from skimage import data

from conftest import encrypt, manifest
from himr_pipe.shards import iter_samples


def _save(img: Image.Image, path: Path, fmt: str, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, fmt, **kw)


def _png_bomb(path: Path, w=50000, h=50000):
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def _rotated(path: Path):
    """Stored 300x200: left half red, right half blue; EXIF orientation 6 (display rotated 90 degrees CW)."""
    a = np.zeros((200, 300, 3), np.uint8)
    a[:, :150, 0] = 255
    a[:, 150:, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    _save(Image.fromarray(a), path, "JPEG", quality=95, exif=exif.tobytes())


def _zero_run(blob: bytes, n: int = 2000) -> bytes:
    """``blob`` with ``n`` zero bytes written over its middle (its length unchanged)."""
    b = bytearray(blob)
    m = len(b) // 2
    b[m:m + n] = bytes(n)
    return bytes(b)


# file -> expected outcome: None = written, else the reason category of the skip
EXPECTED = {}


def build_corpus(root: Path) -> dict[str, str | None]:
    photo = Image.fromarray(data.astronaut()).resize((320, 240))
    exp = {}

    def good(rel, img, fmt, **kw):
        _save(img, root / rel, fmt, **kw)
        exp[rel] = None

    def bad(rel, reason, content=None):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if content is not None:
            p.write_bytes(content)
        exp[rel] = reason

    good("good/a.jpg", photo, "JPEG", quality=90)
    good("good/b.jpg", ImageOps.mirror(photo), "JPEG", quality=90)
    good("good/nested/c.png", photo, "PNG")
    good("good/A.JPG", photo.rotate(90, expand=True), "JPEG")   # a name differing only in case
    good("odd/gray.jpg", photo.convert("L"), "JPEG")
    good("odd/cmyk.jpg", photo.convert("CMYK"), "JPEG")
    good("odd/rgba.png", photo.convert("RGBA"), "PNG")
    good("odd/palette.png", photo.convert("P"), "PNG")
    good("odd/sixteen.png", Image.fromarray((np.asarray(photo.convert("L")).astype(np.uint16) * 257)), "PNG")
    good("odd/tiny.jpg", photo.resize((20, 15)), "JPEG")
    good("odd/pic.bmp", photo, "BMP")
    good("odd/pic.webp", photo, "WEBP")
    good("odd/pic.tiff", photo, "TIFF")
    _rotated(root / "odd/rotated.jpg")
    exp["odd/rotated.jpg"] = None

    jpg = io.BytesIO()
    photo.save(jpg, "JPEG", quality=90)
    jpg = jpg.getvalue()
    bad("bad/truncated.jpg", "corrupt-data", jpg[: len(jpg) // 2])
    # issue 35: a lenient decode wrote these; the strict check of the coded data skips them
    bad("bad/cut60_eoi.jpg", "corrupt-data", jpg[: len(jpg) * 6 // 10] + b"\xff\xd9")  # cut, end marker appended
    bad("bad/zero_run.jpg", "corrupt-data", _zero_run(jpg))  # 2,000 zero bytes over the middle of the scan
    claims = bytearray(jpg)  # a header claiming 9400 x 9400 (under --max-pixels) over a 320 x 240 scan
    struct.pack_into(">HH", claims, claims.index(b"\xff\xc0") + 5, 9400, 9400)
    bad("bad/claims_9400.jpg", "corrupt-data", bytes(claims))
    bad("bad/zero.jpg", "empty-file", b"")
    bad("bad/text.jpg", "not-an-image", b"this is a text file with an image name\n" * 10)
    gif = io.BytesIO()
    photo.save(gif, "GIF")
    bad("bad/really_a_gif.jpg", "unsupported-format", gif.getvalue())
    bad("bad/bomb.png", "too-many-pixels")
    _png_bomb(root / "bad/bomb.png")
    png = io.BytesIO()
    photo.save(png, "PNG")
    bad("bad/truncated.png", "corrupt-data", png.getvalue()[: len(png.getvalue()) - 300])
    iend = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    bad("bad/cut60_iend.png", "corrupt-data", png.getvalue()[: len(png.getvalue()) * 6 // 10] + iend)
    bad("bad/zero_run.png", "corrupt-data", _zero_run(png.getvalue()))
    bad("bad/notes.txt", "unsupported-extension", b"not an image")
    bad("bad/huge.png", "file-too-large")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (700, 700, 3), np.uint8)).save(root / "bad/huge.png")
    os.symlink(root / "bad/does-not-exist.jpg", root / "bad/dangling.jpg")
    exp["bad/dangling.jpg"] = "unreadable"
    (root / "emptyclass").mkdir()
    bad("stray.jpg", "not-in-a-class-folder", jpg)
    return exp


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus") / "src"
    root.mkdir()
    return root, build_corpus(root)


def test_every_input_is_accounted_for(corpus, tmp_path):
    root, exp = corpus
    out, state = tmp_path / "out", tmp_path / "state"
    r = encrypt(root, out, "--scheme", "none", "--format", "png", "--resize", "stretch", "--max-bytes", "1000000",
                "--shard-size", "100", state=state, expect=3)  # 3: finished, some inputs skipped
    assert "skipped" in r.output
    m = manifest(out)
    t = m["totals"]
    assert t["inputs"] == len(exp) and t["written"] + t["skipped"] == t["inputs"]
    assert t["written"] == sum(v is None for v in exp.values())
    assert t["upscaled"] == 2  # tiny.jpg (20x15) and rotated.jpg (200 px high)
    assert m["empty_classes"] == ["emptyclass"]
    assert m["classes"] == ["bad", "emptyclass", "good", "odd"]
    # the public manifest names no file; the owner's state does
    assert all(set(s) == {"input", "reason"} for s in m["skipped"])
    skipped = {s["path"]: s["reason"] for s in json.loads((state / "skipped.json").read_text())}
    want = {k: v for k, v in exp.items() if v is not None}
    assert {k: v.split(":")[0] for k, v in skipped.items()} == want
    written = {w[2]: w[0] for p in (state / "shards").iterdir() for w in json.loads(p.read_text())["written"]}
    assert set(written) == {k for k, v in exp.items() if v is None}

    images = {}
    for tar in out.glob("*.tar"):
        for key, mem in iter_samples(str(tar)):
            images[key] = np.asarray(Image.open(io.BytesIO(mem["png"])))
    assert all(a.shape == (224, 224, 3) and a.dtype == np.uint8 for a in images.values())
    # EXIF orientation applied: displayed, the red half is on top and the blue half below
    rot = images[written["odd/rotated.jpg"]].astype(int)
    top, bottom = rot[:100], rot[124:]
    assert top[..., 0].mean() > 200 and top[..., 2].mean() < 50
    assert bottom[..., 2].mean() > 200 and bottom[..., 0].mean() < 50
    # CMYK converted to RGB: close to the grayscale-free original, not inverted
    ref = np.asarray(Image.open(root / "good/a.jpg").convert("RGB").resize((224, 224))).astype(int)
    assert np.abs(images[written["odd/cmyk.jpg"]].astype(int) - ref).mean() < 20


def test_one_corrupt_file_in_a_batch_skips_only_itself(corpus, tmp_path):
    from himr_pipe.decoders import DaliDecoder

    root, _ = corpus
    good = (root / "good/a.jpg").read_bytes()
    trunc = (root / "bad/truncated.jpg").read_bytes()
    dec = DaliDecoder((64, 64), "crop", max_batch=4, num_threads=1)
    batches = [[good, trunc, good, good], [good, good], [trunc], [good]]
    res = list(dec.run(batches))
    assert [b.data for b, _, _ in res] == batches  # each result comes with its own batch
    assert [len(a) for _, a, _ in res] == [3, 2, 0, 1]
    assert [sorted(b) for _, _, b in res] == [[1], [], [0], []]
    assert np.array_equal(res[0][1][0], res[3][1][0])


def _tar_source(path: Path, photo_jpg: bytes):
    def add(tf, name, payload, kind=tarfile.REGTYPE):
        ti = tarfile.TarInfo(name)
        ti.type = kind
        if kind == tarfile.SYMTYPE:
            ti.linkname = "/etc/passwd"
            tf.addfile(ti)
        else:
            ti.size = len(payload)
            tf.addfile(ti, io.BytesIO(payload))

    with tarfile.open(path, "w") as tf:
        for i in range(3):
            add(tf, f"s{i}.jpg", photo_jpg)
            add(tf, f"s{i}.cls", str(i).encode())
        add(tf, "../escape.jpg", photo_jpg)
        add(tf, "/abs/path.jpg", photo_jpg)
        add(tf, "link.jpg", b"", tarfile.SYMTYPE)
        add(tf, "dup.jpg", photo_jpg)
        add(tf, "dup.jpg", photo_jpg)
        add(tf, "dup.cls", b"1")
        add(tf, "nolabel.jpg", photo_jpg)
        add(tf, "badlabel.jpg", photo_jpg)
        add(tf, "badlabel.cls", b"cat")
        add(tf, "onlymeta.json", b"{}")
        add(tf, "cutheader.jpg", photo_jpg[:500])
        add(tf, "cutheader.cls", b"0")
        add(tf, "truncated.jpg", photo_jpg[: len(photo_jpg) // 2])
        add(tf, "truncated.cls", b"0")
        add(tf, "huge.jpg", photo_jpg)
        add(tf, "huge.cls", b"99999999999")  # a label a classifier's head cannot have (issue 22)
        add(tf, "s1.jpg", photo_jpg)  # key s1 again, not next to its first members: not a second sample
        add(tf, "s1.cls", b"2")


def test_webdataset_sources_and_hostile_tar_members(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(data.chelsea()).save(buf, "JPEG")
    jpg = buf.getvalue()
    shards = tmp_path / "shards"
    shards.mkdir()
    _tar_source(shards / "part-000000.tar", jpg)
    with wds.TarWriter(str(shards / "part-000001.tar")) as w:
        for i in range(4):
            w.write({"__key__": f"ok{i}", "jpg": jpg, "cls": str(i % 2).encode()})
    expected_reasons = {"unsafe-member-name": 2, "not-a-regular-file": 1, "duplicate-name": 1, "no-label": 1,
                        "bad-label": 2, "no-image": 1, "corrupt-header": 1, "corrupt-data": 1, "duplicate-key": 1}
    for src in (shards, shards / "part-000000.tar", str(shards / "part-{000000..000001}.tar")):
        out = tmp_path / f"out{abs(hash(str(src)))}"
        encrypt(src, out, "--shard-size", "5", expect=3)
        m = manifest(out)
        n1 = 0 if str(src).endswith("000000.tar") else 4
        assert m["totals"]["written"] == 4 + n1  # s0..s2 and dup from the hostile tar
        assert m["totals"]["written"] + m["totals"]["skipped"] == m["totals"]["inputs"]
        assert m["skip_reasons"] == expected_reasons
        assert m["classes"] is None
        reasons = {s["reason"] for s in m["skipped"]}
        assert any("99999999999 is out of range" in r for r in reasons)
        assert any("'s1' appears again" in r for r in reasons)
    assert not (tmp_path / "escape.jpg").exists() and not (tmp_path.parent / "escape.jpg").exists()


def _header_verdict(blob: bytes):
    """(width, height, mode) as Pillow reads the header, or None where Pillow refuses it."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = Image.open(io.BytesIO(blob))
            return (im.size[0], im.size[1], im.mode)
    except Exception:
        return None


def _real_jpegs() -> list[bytes]:
    out = []
    for img, kw in ((data.astronaut(), {}), (data.camera(), {}), (data.coffee(), {"progressive": True}),
                    (data.chelsea(), {"subsampling": 0, "exif": b"Exif\0\0MM\0*\0\0\0\x08\0\0"})):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=85, **kw)
        out.append(buf.getvalue())
    cmyk = io.BytesIO()
    Image.fromarray(data.astronaut()).convert("CMYK").save(cmyk, format="JPEG")
    return out + [cmyk.getvalue()]


JPEGS = _real_jpegs()


def test_the_fast_jpeg_header_path_reads_what_pillow_reads():
    from himr_pipe.decoders.common import _plain_jpeg_header

    for blob in JPEGS:
        assert _plain_jpeg_header(blob) == _header_verdict(blob)


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


_DECODED: list = []  # the sizes the spy decoder's images had before resizing


def _spy_decoder():
    """The DALI CPU decoder with its resizer's input sizes (the decoded sizes) recorded; built once."""
    from himr_pipe.decoders import DaliDecoder

    if not hasattr(_spy_decoder, "dec"):
        dec = DaliDecoder((64, 64), "stretch", 1, 1)
        run = dec.resizer.run

        def recording(images, rows, out):
            _DECODED.extend(tuple(im.shape[:2]) for im in images if im is not None)
            return run(images, rows, out)

        dec.resizer.run = recording
        _spy_decoder.dec = dec
    return _spy_decoder.dec


@settings(max_examples=150, deadline=None)
@given(which=st.integers(0, len(JPEGS) - 1), cut=st.integers(0, 2000),
       edits=st.lists(st.tuples(st.integers(0, 699), st.integers(0, 255)), max_size=4))
def test_a_jpeg_the_fast_header_path_accepts_decodes_to_that_size_or_is_skipped(which, cut, edits):
    """Hostile headers (bytes changed in the first 700, or the file cut short): where the fast path reads a size,
    the decoder gives an image of exactly that size or refuses it (a decode error): the header's size is what the
    letterbox frames and boxes are built on."""
    from himr_pipe.decoders.common import _plain_jpeg_header

    blob = bytearray(JPEGS[which])
    for pos, val in edits:
        blob[pos] = val
    blob = bytes(blob[:cut]) if cut < 2000 else bytes(blob)
    fast = _plain_jpeg_header(blob)
    if fast is None:
        return
    w, h, _ = fast
    (_, imgs, bad), = list(_spy_decoder().run([[blob]]))
    assert bad or (tuple(imgs.shape) == (1, 64, 64, 3) and _DECODED[-1] == (h, w))
