"""One reader for the public manifest: every problem is a clear ManifestError, whoever reads it."""

from __future__ import annotations

import json

import pytest

from himr_pipe.manifest import MANIFEST_FORMAT, Manifest, ManifestError, build_manifest
from himr_pipe.scheme import Scheme


def write(tmp_path, obj):
    (tmp_path / "manifest.json").write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return tmp_path


def good(status="complete"):
    job = {"scheme": Scheme.named("mi-shuffle").to_dict(), "format": {"name": "jpeg", "ext": "jpg"}, "views": 2,
           "split": "train"}
    return build_manifest(job, ["a"], [], [{"name": "train-000000.tar", "samples": 2, "bytes": 1, "sha256": "x"}],
                          1, [], 0, status, 1)


def test_load_reads_the_typed_fields(tmp_path):
    m = Manifest.load(write(tmp_path, good()), require_complete=True)
    assert m.complete and m.scheme == Scheme.named("mi-shuffle") and m.ext == "jpg" and m.views == 2
    assert m.shards[0]["name"] == "train-000000.tar" and m.totals["written"] == 2 and m.job["split"] == "train"
    assert m.data["format"] == MANIFEST_FORMAT


@pytest.mark.parametrize("content,match", [
    (None, "holds no manifest.json"),
    ("{not json", "not readable JSON"),
    ({"format": "something-else"}, "not a himr-pipe manifest"),
    ({"format": MANIFEST_FORMAT, "status": "complete"}, "lacks job, shards, totals, skipped"),
])
def test_load_refuses_clearly(tmp_path, content, match):
    if content is not None:
        write(tmp_path, content)
    with pytest.raises(ManifestError, match=match):
        Manifest.load(tmp_path)


def test_malformed_job_and_incomplete_runs(tmp_path):
    bad = good()
    bad["job"]["scheme"]["kind"] = "zz"
    with pytest.raises(ManifestError, match="malformed job record"):
        Manifest.load(write(tmp_path, bad))
    m = Manifest.load(write(tmp_path, good("incomplete")))
    assert not m.complete
    with pytest.raises(ManifestError, match="incomplete"):
        Manifest.load(tmp_path, require_complete=True)
