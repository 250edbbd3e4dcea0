"""Issue 35: corrupt coded data never enters OUT whichever decoder runs, a batch's decoded pixels are bounded,
and a resize that cannot keep detection's boxes true is refused before any work."""

import io
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from skimage import data

from conftest import cli, encrypt, manifest, shard_bytes


def _jpeg(img) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).resize((160, 120)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.mark.parametrize("decoder", ["dali", "torchvision", "nvimgcodec"])
def test_corrupt_jpegs_are_skipped_by_name_whichever_decoder_runs(decoder, tmp_path, capfd):
    if decoder == "nvimgcodec":
        pytest.importorskip("nvidia.nvimgcodec")
    src = tmp_path / "src" / "c"
    src.mkdir(parents=True)
    good, other = _jpeg(data.astronaut()), _jpeg(data.chelsea())
    (src / "a_good.jpg").write_bytes(good)
    (src / "b_cut60.jpg").write_bytes(good[: len(good) * 6 // 10] + b"\xff\xd9")
    z = bytearray(other)
    z[len(z) // 2:len(z) // 2 + 2000] = bytes(2000)
    (src / "c_zeros.jpg").write_bytes(bytes(z))
    (src / "d_good.jpg").write_bytes(other)
    out, state = tmp_path / "out", tmp_path / "state"
    capfd.readouterr()
    encrypt(src.parent, out, "--decoder", decoder, "--batch-size", "4", state=state, expect=3)
    err = capfd.readouterr().err
    m = manifest(out)
    assert m["totals"]["written"] == 2 and m["totals"]["skipped"] == 2
    skipped = {Path(s["path"]).name: s["reason"] for s in json.loads((state / "skipped.json").read_text())}
    assert set(skipped) == {"b_cut60.jpg", "c_zeros.jpg"}
    assert all(r.startswith("corrupt-data: ") and "premature end" in r for r in skipped.values()), skipped
    assert "[ERROR]" not in err and "Premature end" not in err  # the decoders never saw them


def test_a_batch_of_large_images_is_decoded_in_parts_with_the_same_bytes(sample_src, tmp_path, monkeypatch):
    """Headers that claim many pixels split a batch (the decoder gets parts under BATCH_PIXELS): the shards are
    byte for byte those of an unsplit run."""
    import himr_pipe.worker as worker
    from himr_pipe.decoders import DaliDecoder, inspect_header

    args = ("--seed", "3", "--shard-size", "18", "--batch-size", "8")
    encrypt(sample_src, tmp_path / "whole", *args)
    calls: list[list[int]] = []
    run = DaliDecoder.run

    def spy(self, batches, alloc=None):
        def record():
            for b in batches:
                calls.append([inspect_header(x).width * inspect_header(x).height for x in b.data])
                yield b
        return run(self, record(), alloc)

    monkeypatch.setattr(DaliDecoder, "run", spy)
    sizes = [inspect_header(p.read_bytes()) for p in sample_src.rglob("*.jpg")]
    budget = 2 * max(h.width * h.height for h in sizes)  # two or three images a part, never eight
    monkeypatch.setattr(worker, "BATCH_PIXELS", budget)
    encrypt(sample_src, tmp_path / "parts", *args)
    assert sum(len(c) for c in calls) == 18
    assert len(calls) > 3  # an unsplit run decodes 8 + 8 + 2
    assert all(sum(c) <= budget or len(c) == 1 for c in calls)
    assert shard_bytes(tmp_path / "parts") == shard_bytes(tmp_path / "whole")


def test_one_image_over_the_budget_is_decoded_alone(sample_src, tmp_path, monkeypatch):
    import himr_pipe.worker as worker
    from himr_pipe.decoders import DaliDecoder

    calls = []
    run = DaliDecoder.run

    def spy(self, batches, alloc=None):
        def record():
            for b in batches:
                calls.append(len(b.data))
                yield b
        return run(self, record(), alloc)

    monkeypatch.setattr(DaliDecoder, "run", spy)
    monkeypatch.setattr(worker, "BATCH_PIXELS", 1)
    encrypt(sample_src, tmp_path / "out", "--shard-size", "18", "--batch-size", "8")
    assert calls == [1] * 18 and manifest(tmp_path / "out")["totals"]["written"] == 18


def test_stretch_for_detection_is_refused_before_any_work(tmp_path):
    src = tmp_path / "d"
    cli("sample-data", src, "--task", "detection", "--train-images", "2", "--val-images", "0")
    out = tmp_path / "out"
    r = cli("encrypt-shards", src / "train2017", out, "--resize", "stretch", "--size", "64", "--no-audit",
            "--workers", "0", expect=2)
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--resize stretch is refused for detection" in lines[0], r.output
    assert "Traceback" not in r.output and not out.exists()
    shutil.rmtree(src)


def test_ordered_map_keeps_order_and_hands_back_errors():
    """The screening's checks run on the worker's threads, a bounded way ahead, their verdicts in plan order."""
    import threading
    import time

    from himr_pipe.stages import ordered_map

    seen = set()

    def fn(x):
        seen.add(threading.get_ident())
        time.sleep(0.002 * (x % 3))
        if x % 5 == 4:
            raise ValueError(x)
        return x * x

    for threads in (1, 3):
        out = list(ordered_map(fn, range(20), threads, 6))
        assert [x for x, _ in out] == list(range(20))
        assert all((isinstance(r, ValueError) and r.args == (x,)) if x % 5 == 4 else r == x * x for x, r in out)
    assert len(seen) > 1
    it = ordered_map(fn, iter(range(100)), 2, 4)
    next(it)
    it.close()  # a consumer that stops early: the pool is let go
