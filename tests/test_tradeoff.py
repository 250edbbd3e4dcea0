"""himr-pipe tradeoff: the owner's own leak / accuracy table, end to end on a tiny sample, and its refusals."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from himr_pipe.cli import main
from himr_pipe.sample_data import SHAPE_CLASSES, make_shapes_classification
from himr_pipe.tradeoff import (CANDIDATES, TradeoffError, check_sample, draw_sample, half_width, list_classes,
                                pick_settings, recommend)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tradeoff") / "src"
    make_shapes_classification(root, per_class=15, size=32, seed=2)  # 4 classes x 15: 48 train + 12 val
    return root


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() or p.is_symlink()}


def _invoke(*args):
    return CliRunner().invoke(main, ["tradeoff", *[str(a) for a in args]])


@pytest.fixture
def tiny_samples_allowed(monkeypatch):
    """The refusal threshold raised so that a sample of a few dozen images runs (the command has no option for
    it: a user's sample must be big enough to tell the settings apart)."""
    from himr_pipe.tradeoff import sample

    monkeypatch.setattr(sample, "MAX_HALF_WIDTH", 1.0)  # the module that holds the rule and is read at each call


def test_end_to_end_table_recommendation_report_and_nothing_in_src(shapes, tmp_path, monkeypatch, tiny_samples_allowed):
    before = _snapshot(shapes)
    tmp_root = tmp_path / "tmp"
    tmp_root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_root))  # where the temporary work folder goes
    report = tmp_path / "report"
    r = _invoke(shapes, "--samples", 60, "--size", 32, "--patch", 8, "--epochs", 1, "--settings",
                "none,rs,rs gap 1,mi-shuffle 2P", "--audit-samples", 1, "--report", report, "--no-progress")
    assert r.exit_code == 0, r.output
    out = r.output
    assert "estimated time:" in out
    head = next(line for line in out.splitlines() if line.startswith("setting "))
    for col in ("leak neighbour / direct", "meets budget", "top-1", "cost vs none"):
        assert col in head
    assert "lower bounds" in out and "recommendation:" in out
    assert "the product's default (encrypt-shards without --scheme / --gap / --flip): mi-shuffle flip" in out
    rows = {line.split(" (")[0]: line for line in out.splitlines() if " | " in line and not line.startswith("setting")}
    assert set(rows) == {"none", "rs", "rs gap 1", "mi-shuffle 2P"}
    assert "plain (not encrypted)" in rows["none"]

    res = json.loads((report / "report.json").read_text())
    assert res["counts"] == {"train": 48, "val": 12, "classes": 4}
    by = {row["label"]: row for row in res["rows"]}
    assert by["mi-shuffle 2P"]["setting"] == "mi-shuffle P=16"  # 2P at the user's P=8
    for label, row in by.items():
        assert row["status"] == "ok", row
        assert len(row["runs"]) == 1 and 0.0 <= row["top1_mean"] <= 1.0
        if label != "none":
            assert row["leak"]["samples"] == 1 and "attack" in row["leak"]
            assert row["cost_vs_none"] == pytest.approx(by["none"]["top1_mean"] - row["top1_mean"])
    assert by["none"]["leak"] is None
    assert by["rs"]["leak"]["meets_budget"] is False  # a plain jigsaw at 4x4: the attack solves it
    rec = res["recommendation"]
    assert rec["label"] != "none"
    if rec["label"] is None:
        assert "no setting measured here meets the leak budget" in out
    else:
        assert by[rec["label"]]["leak"]["meets_budget"] and f"recommendation: {rec['label']}" in out
    md = (report / "report.md").read_text()
    assert "| setting |" in md and "Recommendation" in md
    assert (report / "grid.png").stat().st_size > 0
    from PIL import Image

    from himr_pipe.tradeoff.report import GRID_MIN_SIDE

    with Image.open(report / "grid.png") as g:  # 4 settings, a row each, every sample >= 128 px a side + labels
        assert GRID_MIN_SIDE >= 128 and g.height >= 4 * GRID_MIN_SIDE and g.width >= GRID_MIN_SIDE + 200

    assert _snapshot(shapes) == before  # nothing written into SRC
    # the temporary work folder is gone
    assert not [p for p in tmp_root.iterdir() if p.name.startswith("himr-tradeoff-")]


def test_a_rerun_into_work_reuses_what_is_done(shapes, tmp_path, tiny_samples_allowed):
    """More --seeds into the same --work trains only the new seeds; the first seed's figures are kept."""
    common = ["--samples", 60, "--size", 32, "--patch", 8, "--epochs", 1, "--settings", "none,rs", "--audit-samples",
              1, "--work", tmp_path / "w", "--no-progress"]
    r = _invoke(shapes, *common)
    assert r.exit_code == 0, r.output
    first = json.loads((tmp_path / "w" / "results.json").read_text())
    assert sorted(k.split(":")[0] for k in first) == ["leak", "train", "train"]
    r = _invoke(shapes, *common, "--seeds", 2, "--report", tmp_path / "rep")
    assert r.exit_code == 0, r.output
    second = json.loads((tmp_path / "w" / "results.json").read_text())
    assert len(second) == 5 and all(second[k] == v for k, v in first.items())
    res = json.loads((tmp_path / "rep" / "report.json").read_text())
    for row in res["rows"]:
        assert [x["seed"] for x in row["runs"]] == [0, 1] and row["top1_std"] is not None
        assert row["runs"][0] == next(v for k, v in first.items() if k.startswith("train") and
                                      row["setting"].split()[0] + "_p8" in k)
    assert "(2 seeds)" in r.output


def test_refuses_a_sample_too_small_to_tell_settings_apart(shapes, tmp_path):
    r = _invoke(shapes, "--samples", 60, "--size", 32, "--patch", 8, "--epochs", 1, "--work", tmp_path / "w")
    assert r.exit_code == 2
    assert "too small to tell two settings apart" in r.output and "0.98/sqrt(12)" in r.output
    assert not (tmp_path / "w").exists()  # refused before any work


def test_refuses_a_class_with_too_few_images(tmp_path, tiny_samples_allowed):
    src = tmp_path / "src"
    make_shapes_classification(src, per_class=40, size=32, seed=0)
    for f in sorted((src / "disc").iterdir())[3:]:
        f.unlink()
    r = _invoke(src, "--samples", 123, "--size", 32, "--patch", 8)
    assert r.exit_code == 2
    assert "too few images" in r.output and "'disc'" in r.output


def test_refuses_report_or_work_inside_src_and_unknown_settings(shapes, tiny_samples_allowed):
    common = ["--samples", 60, "--size", 32, "--patch", 8]
    r = _invoke(shapes, *common, "--report", shapes / "rep")
    assert r.exit_code == 2 and "--report must not be inside SRC" in r.output
    r = _invoke(shapes, *common, "--work", shapes / "disc" / "w")
    assert r.exit_code == 2 and "--work must not be inside SRC" in r.output
    r = _invoke(shapes, *common, "--settings", "rs,rot13")
    assert r.exit_code == 2 and "unknown setting" in r.output
    assert not (shapes / "rep").exists() and not (shapes / "disc" / "w").exists()


def test_half_width_rule():
    assert half_width(100) == pytest.approx(0.098)

    def split(n_val, n_train=20, classes=4):
        return {"train": {f"c{i}": [Path(f"t{i}_{j}") for j in range(n_train)] for i in range(classes)},
                "val": {f"c{i}": [Path(f"v{i}_{j}") for j in range(n_val // classes + (i < n_val % classes))]
                        for i in range(classes)}}

    with pytest.raises(TradeoffError, match="at least 97 validation images"):
        check_sample(split(96))
    check_sample(split(97))
    with pytest.raises(TradeoffError, match="too few images"):
        check_sample(split(97, n_train=9))


def test_sample_is_stratified_deterministic_and_disjoint(tmp_path):
    src = tmp_path / "src"
    make_shapes_classification(src, per_class=30, size=16, seed=0)
    for f in sorted((src / "bar").iterdir())[10:]:
        f.unlink()  # bar: 10 images, the others 30 (100 in all)
    by = list_classes(src)
    a = draw_sample(by, 50, seed=1)
    assert a == draw_sample(by, 50, seed=1) and a != draw_sample(by, 50, seed=2)
    per = {c: len(a["train"][c]) + len(a["val"][c]) for c in SHAPE_CLASSES}
    assert per == {"bar": 5, "disc": 15, "square": 15, "triangle": 15}  # in proportion to the class sizes
    assert sum(len(v) for v in a["val"].values()) == 10
    for c in SHAPE_CLASSES:
        assert not set(a["train"][c]) & set(a["val"][c])
    k = draw_sample(by, 40, seed=1, classes=2)
    assert len(k["train"]) == 2


def test_recommendation_never_none_and_says_when_nothing_fits():
    def row(label, top1, ok):
        return {"label": label, "status": "ok", "setting": label, "top1_mean": top1, "cost_vs_none": 0.9 - top1,
                "leak": None if label == "none" else {"meets_budget": ok}}

    res = {"half_width": 0.05, "rows": [row("none", 0.9, False), row("rs", 0.85, False),
                                        row("mi-shuffle", 0.8, True), row("mi-shuffle gap 1", 0.7, True),
                                        row("mi-shuffle 2P", 0.79, True)]}
    rec = recommend(res)
    assert rec["label"] == "mi-shuffle" and rec["indistinguishable"] == ["mi-shuffle 2P"]
    res["rows"] = [row("none", 0.9, False), row("rs", 0.85, False)]
    rec = recommend(res)
    assert rec["label"] is None and "no setting measured here meets the leak budget" in rec["why"]


def test_candidates_and_pick():
    labels = [c.label for c in CANDIDATES]
    assert labels == ["none", "rs", "rs gap 1", "rs gap 2", "mi-shuffle", "mi-shuffle gap 1", "mi-shuffle 2P",
                      "mi-shuffle 2P gap 1", "rs flip", "rs gap 1 flip", "mi-shuffle flip", "mi-shuffle gap 1 flip"]
    assert [c.label for c in pick_settings("mi-shuffle gap 1, none")] == ["none", "mi-shuffle gap 1"]
    assert CANDIDATES[6].scheme_at((224, 224), 16).patch == 32
    flip = pick_settings("mi-shuffle flip")[0].scheme_at((224, 224), 16)
    assert flip.flip and flip.gap == 0 and flip.name == "mi-shuffle"


def test_the_sample_holds_what_encrypt_shards_would_take(tmp_path):
    """list_classes reads SRC with encrypt-shards' own source reader: files it would skip (a note, a file
    outside every class folder) never enter the sample, and a SRC that is not a class-folder tree is refused."""
    src = tmp_path / "src"
    make_shapes_classification(src, per_class=2, size=32, seed=0)
    (src / "bar" / "notes.txt").write_text("not an image")
    (src / "stray.jpg").write_bytes((src / "bar" / "00000.jpg").read_bytes())
    by = list_classes(src)
    assert sorted(by) == sorted(SHAPE_CLASSES) and all(len(v) == 2 for v in by.values())
    assert all(p.suffix == ".jpg" and p.parent.parent == src for v in by.values() for p in v)
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.jpg").write_bytes(b"x")
    with pytest.raises(TradeoffError, match="class sub-folders"):
        list_classes(tmp_path / "flat")


def test_the_smallest_samples_named_passes_and_one_fewer_is_refused(tmp_path):
    """The rule counts the validation images as the draw makes them (each class's share rounded on its own):
    the refusal names the smallest --samples that passes for SRC's class sizes; it passes, one fewer does not."""
    from himr_pipe.tradeoff import smallest_samples

    # the numbers the --samples help and docs/privacy.md state
    assert smallest_samples([1000] * 4) == 489
    assert smallest_samples([1000] * 10) == 477 and smallest_samples([5, 1000]) is None
    helptext = " ".join(CliRunner().invoke(main, ["tradeoff", "--help"]).output.split())
    assert "489 for 4 equal classes, 477 for 10" in helptext and "about 485" not in helptext
    sizes = {"a": 700, "b": 130, "c": 455, "d": 91, "e": 300}
    by = {c: [Path(f"/nowhere/{c}/{i}.jpg") for i in range(n)] for c, n in sizes.items()}
    n = smallest_samples(list(sizes.values()))
    check_sample(draw_sample(by, n), sizes=list(sizes.values()))
    with pytest.raises(TradeoffError, match=f"--samples {n} is the smallest that passes"):
        check_sample(draw_sample(by, n - 1), sizes=list(sizes.values()))
    # through the command, on a real SRC: 485 (what the help said before) is refused where it falls short
    src = tmp_path / "src"
    make_shapes_classification(src, per_class=125, size=16, seed=0)  # 4 equal classes: 489
    r = _invoke(src, "--samples", 488, "--size", 32, "--patch", 8, "--settings", "none,rs", "--work", tmp_path / "w")
    assert r.exit_code == 2 and "--samples 489 is the smallest that passes" in r.output, r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "w").exists()


def test_settings_that_cannot_run_are_refused_before_any_work_with_their_reason(shapes, tmp_path):
    """mi-shuffle at 64 px, P=8, JPEG stores 4-px cells, which JPEG's 8x8 blocks would mix: named in
    --settings, the run is refused (exit 2, one line, the product's reason); in the default list, each reason is
    one line before anything else and those settings are left out."""
    r = _invoke(shapes, "--samples", 60, "--size", 64, "--patch", 8, "--settings", "rs,mi-shuffle,mi-shuffle flip",
                "--work", tmp_path / "w")
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    line, = r.output.strip().splitlines()
    assert "mi-shuffle, mi-shuffle flip: --format jpeg with scheme mi-shuffle needs a stored cell" in line
    assert "at 64x64, P=8, --format jpeg" in line and "gap" not in line
    assert not (tmp_path / "w").exists()
    r = _invoke(shapes, "--samples", 60, "--size", 64, "--patch", 8, "--work", tmp_path / "w")
    lines = r.output.strip().splitlines()
    assert lines[0].startswith("himr-pipe tradeoff: not measured at 64x64, P=8, --format jpeg: mi-shuffle, "
                               "mi-shuffle gap 1, mi-shuffle flip, mi-shuffle gap 1 flip: --format jpeg")
    assert len(lines) == 2 and "too small" in lines[1] and r.exit_code == 2  # then the sample's own refusal
    # and the recommendation's advice names that cause, not gaps
    rows = [{"label": "rs", "status": "ok", "top1_mean": 0.5, "leak": {"meets_budget": False}},
            {"label": "mi-shuffle", "status": "n/a", "reason": "JPEG needs 8"}]
    why = recommend({"half_width": 0.05, "rows": rows})["why"]
    assert "mi-shuffle (JPEG needs 8)" in why and "larger gap" not in why
