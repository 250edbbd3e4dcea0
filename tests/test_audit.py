"""The jigsaw attack on RS and its scores (the foundation of the privacy audit)."""

import numpy as np
import pytest
from PIL import Image
from skimage import data

from himr_pipe.audit.jigsaw import assemble, cut, solve
from himr_pipe.audit.scores import direct_accuracy, image_quality, neighbour_accuracy


def _puzzle(photo, size, patch, seed=0):
    img = np.asarray(Image.fromarray(photo).resize((size[1], size[0])))
    pieces = cut(img, patch)
    perm = np.random.default_rng(seed).permutation(len(pieces))
    truth = np.argsort(perm).reshape(size[0] // patch, size[1] // patch)  # layout in shuffled indices
    return img, pieces[perm], truth


@pytest.mark.parametrize("photo, size, patch", [
    (data.astronaut(), (224, 224), 56),   # 4x4
    (data.astronaut(), (224, 224), 32),   # 7x7
    (data.coffee(), (192, 288), 48),      # 4x6, non-square grid
])
def test_solver_recovers_real_photos_with_large_patches(photo, size, patch):
    img, shuffled, truth = _puzzle(photo, size, patch)
    layout = solve(shuffled, truth.shape)
    assert direct_accuracy(layout, truth) == 1.0 and neighbour_accuracy(layout, truth) == 1.0
    assert np.array_equal(assemble(shuffled, layout), img)
    q = image_quality(assemble(shuffled, layout), img)
    assert q["psnr"] == float("inf") and q["ssim"] == pytest.approx(1.0)


def test_scores_on_hand_made_layouts():
    truth = np.arange(6).reshape(2, 3)
    assert direct_accuracy(truth, truth) == 1.0 and neighbour_accuracy(truth, truth) == 1.0
    swapped = truth.copy()
    swapped[0, 0], swapped[0, 1] = swapped[0, 1], swapped[0, 0]      # swap pieces 0 and 1
    assert direct_accuracy(swapped, truth) == pytest.approx(4 / 6)
    # true pairs: right (0,1) (1,2) (3,4) (4,5), down (0,3) (1,4) (2,5) = 7; after the swap
    # (3,4) (4,5) (2,5) survive, (0,1) becomes (1,0): 3 of 7
    assert neighbour_accuracy(swapped, truth) == pytest.approx(3 / 7)
    shifted = np.roll(truth, 1, axis=1)                             # every piece moved, most pairs kept
    assert direct_accuracy(shifted, truth) == 0.0
    assert neighbour_accuracy(shifted, truth) == pytest.approx(5 / 7)


def test_cut_and_assemble_round_trip():
    img = np.arange(8 * 12 * 3, dtype=np.uint8).reshape(8, 12, 3)
    pieces = cut(img, 4)
    assert pieces.shape == (6, 4, 4, 3)
    assert np.array_equal(assemble(pieces, np.arange(6).reshape(2, 3)), img)


def test_mi_inverses_are_consistent_and_the_ls_one_beats_the_naive_one():
    import torch

    from himr_pipe.audit.mi_inverse import _A, downsampled_baseline, ls_inverse, naive_inverse
    from himr_pipe.kernels import mi_mix

    plain = np.asarray(Image.fromarray(data.astronaut()).resize((224, 224)))
    m = mi_mix(torch.from_numpy(plain[None].copy()), 16)[0].numpy()
    naive = naive_inverse(m, 16)
    assert np.array_equal(np.rint(_A(naive.astype(float), 16)).astype(np.uint8), m)  # reproduces the observation
    ls = ls_inverse(m, 16)
    assert np.abs(_A(ls.astype(float), 16) - m).mean() < 4.0  # close to the observation (it trades a little for smoothness)
    q_naive, q_ls = image_quality(naive, plain), image_quality(ls, plain)
    assert q_ls["psnr"] > q_naive["psnr"] and q_ls["ssim"] > q_naive["ssim"]
    base = image_quality(downsampled_baseline(plain), plain)
    assert 15 < q_naive["psnr"] < base["psnr"] + 10  # figures in a sane range, compared side by side


def test_preview_shows_plain_rs_and_mi(sample_src, tmp_path):
    from collections import Counter

    from conftest import cli

    img = next(iter(sorted(sample_src.glob("*/*.jpg"))))
    out = tmp_path / "p.png"
    res = cli("preview", img, out, "--seed", "3")
    assert "plain | RS | MI | MI-SHUFFLE" in res.output
    pic = np.asarray(Image.open(out))
    assert pic.shape == (224, 4 * 224 + 3 * 8, 3)
    plain, rs, mi, mis = (pic[:, i * 232:i * 232 + 224] for i in range(4))
    assert Counter(map(bytes, cut(plain, 16))) == Counter(map(bytes, cut(rs, 16)))
    assert not np.array_equal(plain, rs)
    # mi-shuffle shows MI's cells (drawn 2x) in another order, by default each turned (the flip defence): every
    # cell is one of MI's cells in one of the 8 orientations
    def orbit(c):
        views = [c, c[:, ::-1], c[::-1], c[::-1, ::-1]]
        return min(bytes(np.ascontiguousarray(v)) for v in views + [v.transpose(1, 0, 2) for v in views])

    cells = cut(mis, 16)
    assert Counter(map(orbit, cut(mi, 16))) == Counter(map(orbit, cells))
    assert Counter(map(bytes, cut(mi, 16))) != Counter(map(bytes, cells))   # turned, not only reordered
    # --no-flip: exactly MI's cells, reordered; --gap 1: each 8-px cell's border (2 px drawn) blanked
    cli("preview", img, out, "--seed", "3", "--no-flip")
    mis0 = np.asarray(Image.open(out))[:, 3 * 232:3 * 232 + 224]
    assert Counter(map(bytes, cut(mi, 16))) == Counter(map(bytes, cut(mis0, 16)))
    cli("preview", img, out, "--seed", "3", "--no-flip", "--gap", "1")
    cells = cut(np.asarray(Image.open(out))[:, 3 * 232:3 * 232 + 224], 16)
    assert all(not c[:2].any() and not c[-2:].any() and not c[:, :2].any() and not c[:, -2:].any() for c in cells)
    assert Counter(bytes(c[2:-2, 2:-2]) for c in cut(mi, 16)) == Counter(bytes(c[2:-2, 2:-2]) for c in cells)
    assert "does not divide" in cli("preview", img, out, "--patch", "15", expect=2).output


@pytest.mark.parametrize("scheme", ["rs", "mi", "mi-shuffle"])
def test_audit_report_files_match_the_json(sample_src, tmp_path, scheme):
    import json
    import re

    from conftest import cli, encrypt

    out, state = tmp_path / "out", tmp_path / "state"
    # mi-shuffle without its default flip: every setting here is over the budget when stored losslessly
    gap = ["--no-flip"] if scheme == "mi-shuffle" else []
    encrypt(sample_src, out, "--scheme", scheme, "--format", "png", "--seed", "1", *gap, state=state)
    # --plain is optional: the owner state says where SRC was
    res = cli("audit", out, "--report", tmp_path / "rep", "--state-dir", state, "--samples", "4")
    assert "4 images" in res.output and "OVER the leak budget" in res.output  # none of these is safe lossless
    # seconds an image: a sign of life per image (stderr is no terminal here: a short line each, no bar)
    steps = [ln for ln in res.output.splitlines() if "images attacked" in ln]
    assert [ln.split(":")[1].split()[0] for ln in steps] == ["1/4", "2/4", "3/4", "4/4"], res.output
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert rep["samples"] == 4 and len(rep["images"]) == 4 and rep["plain"] == "rebuilt from SRC"
    assert rep["meets_budget"] is False and rep["over_budget"]
    md = (tmp_path / "rep" / "report.md").read_text()
    for k, v in rep["mean"].items():
        assert re.search(rf"\| {k} \| {v:.4f} \|", md), k
    for r in rep["images"]:
        vals = [v for k, v in r.items() if k != "key"]
        assert all(np.isfinite(v) or v == float("inf") for v in vals)
        assert 0 <= r["direct_accuracy"] <= 1 and 0 <= r["neighbour_accuracy"] <= 1
    if scheme == "mi":  # nothing to solve: positions are kept; the picture is below the same-information baseline
        assert all(r["direct_accuracy"] == 1.0 for r in rep["images"])
        assert all(r["ssim"] < r["baseline_ssim"] for r in rep["images"])
        assert any("positions are kept" in w for w in rep["over_budget"])
    else:
        assert 0 <= rep["mean"]["solved"] <= 1 and rep["mean"]["psnr"] <= 100
    grid = np.asarray(Image.open(tmp_path / "rep" / "grid.png"))
    assert grid.shape[0] >= 4 * 224 and grid.shape[1] >= 3 * 224
    assert "inside OUT" in cli("audit", out, "--report", out / "rep", "--state-dir", state, expect=2).output
    assert "owner" in cli("audit", out, "--plain", sample_src, "--report", tmp_path / "r2",
                          "--state-dir", tmp_path / "nowhere", expect=2).output


def test_quick_audit_figures_in_the_manifest_match_a_separate_audit(sample_src, tmp_path):
    """encrypt-shards ends with a quick audit (on by default): numbers only, in the manifest, reproduced exactly
    by himr-pipe audit with the same sample count and seed; an over-budget setting prints one warning line."""
    import json

    from conftest import cli, encrypt, manifest

    out, state = tmp_path / "out", tmp_path / "state"
    res = encrypt(sample_src, out, "--scheme", "rs", "--format", "png", "--seed", "2", state=state, audit=True)
    warn = [ln for ln in res.output.splitlines() if "warning:" in ln]
    assert len(warn) == 1 and "over the leak budget" in warn[0] and "rs P=16" in warn[0]
    assert "images attacked" not in res.output  # --no-progress: the quick audit is silent too
    a = manifest(out)["audit"]
    from himr_pipe.audit.solver import ATTACK_NAME

    assert a["samples"] == 4 and a["meets_budget"] is False and a["attack"] == ATTACK_NAME
    assert set(a["mean"]) >= {"direct_accuracy", "neighbour_accuracy", "psnr", "ssim"}
    assert f"{a['mean']['direct_accuracy']:.3f} of the cells" in warn[0]
    assert "lower bound" in a["bound"] and "lower bounds" in res.output  # the figures are what this attack gets
    text = (out / "manifest.json").read_text()
    assert "key" not in json.dumps(a) and str(sample_src) not in text  # figures, no keys, no paths
    cli("audit", out, "--report", tmp_path / "rep", "--state-dir", state, "--samples", "4", "--seed", "0")
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert "attack_seconds" not in a["mean"]  # no timings in the manifest: a rerun writes the same one
    assert {k: v for k, v in rep["mean"].items() if k != "attack_seconds"} == a["mean"]
    before = (out / "manifest.json").read_bytes()
    encrypt(sample_src, out, "--scheme", "rs", "--format", "png", "--seed", "2", state=state, audit=True)
    assert (out / "manifest.json").read_bytes() == before
    # --no-audit: no figures, no warning; verify accepts both manifests
    res = encrypt(sample_src, tmp_path / "o2", "--scheme", "rs", "--format", "png", "--seed", "2")
    assert "audit" not in manifest(tmp_path / "o2") and "warning" not in res.output
    cli("verify", out)


def test_gap_defence_breaks_the_solver_where_it_otherwise_wins():
    import torch

    from himr_pipe.kernels import encrypt, make_permutations
    from himr_pipe.scheme import Scheme

    img = np.asarray(Image.fromarray(data.astronaut()).resize((224, 224)))
    keys = np.random.default_rng(3).integers(0, 2**63, (1, 49))
    res = {}
    for gap in (0, 4):
        s = Scheme("rs", 32, 224, 224, gap=gap)
        perms = make_permutations(keys)
        enc = encrypt(s, torch.from_numpy(img[None].copy()), perms)[0].numpy()
        truth = np.argsort(perms[0]).reshape(7, 7)
        res[gap] = neighbour_accuracy(solve(cut(enc, 32), (7, 7)), truth)
    assert res[0] == 1.0 and res[4] < 0.5


def test_the_budget_holds_the_pose_free_neighbour_too():
    """Fragments found turned are a leak: a flip setting within the budget in the frame but over it pose-free is
    over, with the figure named; the warning line says so."""
    from himr_pipe.audit.attack import meets_budget, warning_line
    from himr_pipe.scheme import Scheme

    s = Scheme.named("rs", 16, 224, 224, 1, flip=True)
    inside = {"direct_accuracy": 0.006, "neighbour_accuracy": 0.073, "pose_free_neighbour": 0.062}
    assert meets_budget(s, inside) == (True, []) and warning_line(s, inside) is None
    ok, why = meets_budget(s, {**inside, "pose_free_neighbour": 0.110})
    assert not ok and why == ["pose free neighbour 0.110 > 0.1"]
    assert "pose free neighbour 0.110 > 0.1" in warning_line(s, {**inside, "pose_free_neighbour": 0.110})


def test_the_default_setting_is_mi_shuffle_with_flip_and_within_the_budget(sample_src, tmp_path):
    """No --scheme, no defence named: mi-shuffle with the flip defence and no gap (README 'Privacy': within the
    leak budget under the orientation-aware audit, at the smallest cost measured), recorded in the manifest; its
    quick audit of the bundled photos, as the quick start runs it, is within the budget and prints no warning."""
    from conftest import encrypt, manifest

    res = encrypt(sample_src, tmp_path / "out", "--seed", "4", state=tmp_path / "state", audit=True)
    sch = manifest(tmp_path / "out")["job"]["scheme"]
    assert (sch["kind"], sch["shuffle"], sch["gap"], sch["flip"], sch["patch"]) == ("mi", True, 0, True, 16)
    a = manifest(tmp_path / "out")["audit"]
    assert a["meets_budget"] is True and "warning" not in res.output
    assert "within the leak budget against this attack" in res.output


def test_audit_progress_is_a_bar_a_line_per_image_or_nothing(capsys):
    """The audit's steps (one per attacked image): a short line each through echo when stderr is no terminal,
    nothing with --no-progress, a bar (on stderr) when asked."""
    from himr_pipe.audit.report import Steps

    lines = []
    s = Steps(3, "himr-pipe audit", None, lines.append)
    for k in ("a", "b", "c"):
        s(k)
    s.close()
    assert len(lines) == 3 and lines[0].startswith("himr-pipe audit: 1/3 images attacked (a)")
    assert all(len(ln) < 100 for ln in lines)
    quiet = []
    s = Steps(3, "x", False, quiet.append)
    s("a")
    s.close()
    assert quiet == [] and capsys.readouterr().err == ""
    s = Steps(2, "bar", True, quiet.append)
    s("a")
    s.close()
    assert quiet == [] and "bar" in capsys.readouterr().err
