"""The owner's decrypt: exact inverse of the shuffle with the state, a clear refusal without it."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import cli, encrypt

from himr_pipe.kernels import defence_mask
from himr_pipe.scheme import Scheme
from himr_pipe.shards import decode_image, iter_samples


def stored(out, ext="png") -> dict[str, np.ndarray]:
    return {k: decode_image(m[ext], ext) for t in sorted(out.glob("*.tar")) for k, m in iter_samples(str(t))}


@pytest.fixture(scope="module")
def outs(sample_src, tmp_path_factory):
    """The same sample, same seed (so the same keys hold the same inputs), in four schemes, lossless."""
    base = tmp_path_factory.mktemp("decrypt")
    args = ("--format", "png", "--seed", "5", "--shard-size", "7")
    for name, extra in (("none", ()), ("rs", ()), ("mi", ()), ("mi-shuffle", ("--no-flip",)),
                        ("mi-shuffle-gap1", ("--gap", "1", "--no-flip")), ("rs-def", ("--gap", "1", "--drop", "0.25")),
                        ("rs-flip", ("--flip",)), ("mi-shuffle-flip", ())):
        scheme = name.split("-def")[0].split("-gap1")[0].split("-flip")[0]
        encrypt(sample_src, base / name, "--scheme", scheme, *args, *extra, state=base / f"{name}.state")
    return base


def decrypted(outs, name, tmp_path) -> dict[str, np.ndarray]:
    dest = tmp_path / f"dec-{name}"
    res = cli("decrypt", outs / name, dest, "--state-dir", outs / f"{name}.state")
    assert "18 images" in res.output
    return {p.stem: np.asarray(Image.open(p)) for p in dest.glob("*.png")}


def test_decrypt_inverts_rs_exactly_on_lossless_shards(outs, tmp_path):
    plain = stored(outs / "none")
    got = decrypted(outs, "rs", tmp_path)
    assert set(got) == set(plain) and len(plain) == 18
    for k in plain:
        assert np.array_equal(got[k], plain[k]), k
    enc = stored(outs / "rs")
    assert sum(np.array_equal(enc[k], plain[k]) for k in plain) == 0  # they were shuffled


def test_flip_turns_cells_and_decrypt_turns_them_back_exactly(outs, tmp_path):
    """--flip stores every cell in a keyed orientation (the same keys as rs: the same permutations); the
    owner's decrypt undoes both, bit for bit on lossless shards; mi-shuffle (flip by default) decrypts to mi."""
    plain, rs, flip = stored(outs / "none"), stored(outs / "rs"), stored(outs / "rs-flip")
    got = decrypted(outs, "rs-flip", tmp_path)
    assert set(got) == set(plain) and len(plain) == 18
    turned = same = 0
    for k in plain:
        assert np.array_equal(got[k], plain[k]), k
        a = rs[k].reshape(14, 16, 14, 16, 3).transpose(0, 2, 1, 3, 4).reshape(196, 16, 16, 3)
        b = flip[k].reshape(14, 16, 14, 16, 3).transpose(0, 2, 1, 3, 4).reshape(196, 16, 16, 3)
        for x, y in zip(a, b):   # the same cell in the same slot, in one of the 8 orientations
            views = [x, x[:, ::-1], x[::-1], x[::-1, ::-1]]
            views += [v.transpose(1, 0, 2) for v in views]
            assert any(np.array_equal(y, v) for v in views)
            same += np.array_equal(x, y)
            turned += not np.array_equal(x, y)
    assert turned > 0.8 * (turned + same)    # 7 of 8 orientations turn a cell (some cells look alike turned)
    mi = stored(outs / "mi")
    got = decrypted(outs, "mi-shuffle-flip", tmp_path)
    for k in mi:
        assert np.array_equal(got[k], np.repeat(np.repeat(mi[k], 2, 0), 2, 1)), k


def test_decrypt_of_mi_shuffle_is_mi_and_mi_is_shown_at_full_size(outs, tmp_path):
    mi = stored(outs / "mi")
    got_mis, got_mi = decrypted(outs, "mi-shuffle", tmp_path), decrypted(outs, "mi", tmp_path)
    for k in mi:
        full = np.repeat(np.repeat(mi[k], 2, 0), 2, 1)
        assert got_mi[k].shape == (224, 224, 3) and np.array_equal(got_mi[k], full)
        assert np.array_equal(got_mis[k], full), k


def test_decrypt_of_mi_shuffle_with_a_gap_is_mi_inside_its_gap(outs, tmp_path):
    """mi-shuffle --gap 1 blanks a 1-pixel border in every 8-px MI cell: decrypted, every cell's interior is
    MI's in its true place (shown 2x) and the gap border stays blank."""
    mi = stored(outs / "mi")
    got = decrypted(outs, "mi-shuffle-gap1", tmp_path)
    mask = defence_mask(Scheme("mi", 16, 224, 224, 1, shuffle=True)).numpy() > 0
    keep = np.repeat(np.repeat(mask.reshape(112, 112, -1), 2, 0), 2, 1)
    assert keep.mean() == pytest.approx((6 / 8) ** 2)
    for k in mi:
        full = np.repeat(np.repeat(mi[k], 2, 0), 2, 1)
        assert np.array_equal(np.where(keep, got[k], 0), np.where(keep, full, 0)), k
        assert not np.where(keep, 0, got[k]).any(), k


def test_decrypt_with_defences_puts_every_kept_patch_back(outs, tmp_path):
    plain = stored(outs / "none")
    got = decrypted(outs, "rs-def", tmp_path)
    mask = defence_mask(Scheme("rs", 16, 224, 224, 1)).numpy()  # the gap border of every cell
    for k in plain:
        g = got[k]
        cells = g.reshape(14, 16, 14, 16, 3).transpose(0, 2, 1, 3, 4).reshape(196, -1)
        blank = ~cells.any(axis=1)
        assert blank.sum() >= 49  # the dropped cells, in their true places
        keep = np.repeat(~blank.reshape(14, 14), 16, 0).repeat(16, 1)[..., None] & (mask > 0)
        assert np.array_equal(np.where(keep, g, 0), np.where(keep, plain[k], 0))


def test_decrypt_refuses_without_the_state_and_inside_out(outs, tmp_path):
    res = cli("decrypt", outs / "rs", tmp_path / "d", "--state-dir", tmp_path / "nowhere", expect=2)
    assert "job key" in res.output and "OUT never holds" in res.output
    assert not (tmp_path / "d").exists()
    res = cli("decrypt", outs / "rs", outs / "rs" / "peek", "--state-dir", outs / "rs.state", expect=2)
    assert "must not be inside OUT" in res.output
    # another job's state is refused, not silently used with the wrong key
    res = cli("decrypt", outs / "rs", tmp_path / "d", "--state-dir", outs / "mi.state", expect=2)
    assert "different job" in res.output


def _corrupt_member(tar, key: str, ext: str) -> None:
    """Rewrite shard ``tar`` with the ``key.ext`` member's bytes changed (same length; the tar itself is sound)."""
    import io
    import tarfile

    members = []
    with tarfile.open(tar) as tf:
        for m in tf:
            data = tf.extractfile(m).read()
            if m.name == f"{key}.{ext}":
                mid = len(data) // 3
                data = data[:mid] + bytes(b ^ 0x5A for b in data[mid:mid + 400]) + data[mid + 400:]
            members.append((m, data))
    with tarfile.open(tar, "w", format=tarfile.USTAR_FORMAT) as tf:
        for m, data in members:
            tf.addfile(m, io.BytesIO(data))


def test_decrypt_skips_a_corrupt_sample_names_it_and_decrypts_the_rest(outs, tmp_path):
    """One stored image's bytes corrupt inside a shard: a warning line names its key and the reason, the final
    line counts it, every other sample is written, exit 3 (finished, some skipped), no traceback."""
    import shutil

    out = tmp_path / "rs"
    shutil.copytree(outs / "rs", out)
    shard = sorted(out.glob("*.tar"))[1]
    keys = [k for k, _ in iter_samples(str(shard))]
    bad = keys[2]
    _corrupt_member(shard, bad, "png")
    dest = tmp_path / "dec"
    res = cli("decrypt", out, dest, "--state-dir", outs / "rs.state", expect=3)
    assert "Traceback" not in res.output
    warn = [line for line in res.output.splitlines() if "skipped" in line and bad in line]
    assert len(warn) == 1 and "does not decode" in warn[0], res.output
    assert "17 images, 1 skipped" in res.output.splitlines()[-1]
    got = {p.stem for p in dest.glob("*.png")}
    assert len(got) == 17 and bad not in got
    # a shard cut short: its lost samples are counted against the shard's name, the others still written
    data = shard.read_bytes()
    shard.write_bytes(data[:len(data) // 2])
    res = cli("decrypt", out, tmp_path / "dec2", "--state-dir", outs / "rs.state", expect=3)
    assert "Traceback" not in res.output and shard.name in res.output
    n_ok = len(list((tmp_path / "dec2").glob("*.png")))
    assert n_ok >= 11 and f"{n_ok} images, {18 - n_ok} skipped" in res.output.splitlines()[-1]
