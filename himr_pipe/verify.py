"""verify: check an encrypted OUT against its manifest.

Reads every shard listed in the manifest and checks its size and sha256,
that it parses as a tar of whole samples (image + .cls + .json per key, no
stray members), that its sample count matches, and that totals add up
(written + skipped == inputs). ``decode=True`` also decodes every image and
checks its size against the scheme. Files in OUT that the manifest does not
list, and leftovers of an interrupted run, are reported too.
"""

from __future__ import annotations

import io
import json
import tarfile

from .manifest import TIMM_INFO, Manifest, ManifestError
from .shards import META, iter_shard, sample_members
from .storage import Location


def verify_out(out: str, decode: bool = False) -> tuple[list[str], dict]:
    """Return (problems, summary). No problems means OUT is sound."""
    problems: list[str] = []
    try:
        man = Manifest.load(out)
    except ManifestError as e:
        return [str(e)], {}
    m = man.data
    if not man.complete:
        problems.append("the run is incomplete (status: %s); rerun encrypt-shards to finish it" % m.get("status"))
    scheme, ext, t, views = man.scheme, man.ext, man.totals, man.views
    if t["inputs_written"] + t["skipped"] != t["inputs"]:
        problems.append(f"totals do not add up: inputs written {t['inputs_written']} + skipped {t['skipped']} "
                        f"!= inputs {t['inputs']}")
    if t["written"] != t["inputs_written"] * views:
        problems.append(f"totals do not add up: {t['written']} samples for {t['inputs_written']} inputs x {views} views")
    if sum(s["samples"] for s in m["shards"]) != t["written"]:
        problems.append("the shard sample counts do not add up to totals.written")
    if len(m["skipped"]) != t["skipped"]:
        problems.append("the skipped list does not match totals.skipped")
    listed = {s["name"] for s in m["shards"]}
    loc = Location(out)
    sizes = loc.sizes()  # one listing (one request on an object store)
    extra = sorted(e for e in sizes if e.endswith(".tar") and e not in listed)
    for e in extra:
        problems.append(f"{e}: a shard file the manifest does not list")
    leftovers = sorted(e for e in sizes if e.endswith(".tmp"))
    for e in leftovers:
        problems.append(f"{e}: a leftover of an interrupted run")
    samples_read = 0
    detection = man.job.get("task") == "detection"
    want = sample_members(ext, "detection" if detection else "classification")
    for s in m["shards"]:
        if s["name"] not in sizes:
            problems.append(f"{s['name']}: missing")
            continue
        digest, size = loc.sha256(s["name"])
        if size != s["bytes"]:
            problems.append(f"{s['name']}: {size} bytes, manifest says {s['bytes']}")
        if digest != s["sha256"]:
            problems.append(f"{s['name']}: sha256 mismatch (the file was changed or damaged)")
        n = 0
        try:
            for key, members in iter_shard(loc, s["name"]):
                n += 1
                missing = want - set(members)
                stray = set(members) - want
                if missing:
                    problems.append(f"{s['name']}: sample {key} lacks {sorted(missing)}")
                if stray:
                    problems.append(f"{s['name']}: sample {key} has unexpected members {sorted(stray)}")
                if decode and ext in members:
                    err = _check_image(members[ext], ext, scheme.out_size)
                    if err:
                        problems.append(f"{s['name']}: sample {key}: {err}")
                if META in members:
                    try:
                        meta = json.loads(members[META])
                    except ValueError:
                        problems.append(f"{s['name']}: sample {key}: .json is not valid JSON")
                    else:
                        if detection:
                            err = _check_targets(meta)
                            if err:
                                problems.append(f"{s['name']}: sample {key}: {err}")
        except tarfile.TarError as e:
            problems.append(f"{s['name']}: not a readable tar ({e})")
        if n != s["samples"]:
            problems.append(f"{s['name']}: {n} samples, manifest says {s['samples']}")
        samples_read += n
    if m.get("status") == "complete":
        if TIMM_INFO not in sizes:
            problems.append(f"{TIMM_INFO} (timm's split file) is missing")
        else:
            info = loc.read_json(TIMM_INFO)
            split = info.get("splits", {}).get(man.job["split"], {})
            if list(split.get("filenames", [])) != [s["name"] for s in m["shards"]] or \
                    list(split.get("shard_lengths", [])) != [s["samples"] for s in m["shards"]]:
                problems.append(f"{TIMM_INFO} does not match the manifest's shards")
    if detection and m.get("status") == "complete":
        gt = m.get("detection", {}).get("ground_truth", {})
        name = gt.get("file")
        if not name or name not in sizes:
            problems.append(f"the ground truth {name or '(unnamed)'} is missing")
        elif loc.sha256(name)[0] != gt.get("sha256"):
            problems.append(f"{name}: sha256 mismatch (the ground truth was changed or damaged)")
    summary = {"shards": len(m["shards"]), "samples": samples_read, **t}
    return problems, summary


def _check_targets(meta: dict) -> str | None:
    """A detection sample's targets: as many labels as boxes, boxes normalised and inside the canvas."""
    boxes, labels = meta.get("boxes"), meta.get("labels")
    if not isinstance(boxes, list) or not isinstance(labels, list) or len(boxes) != len(labels):
        return "detection targets malformed (boxes and labels must be lists of one length)"
    for b in boxes:
        if len(b) != 4 or not all(0.0 <= v <= 1.0 for v in b) or b[2] <= 0 or b[3] <= 0:
            return f"box {b} is not a normalised cx, cy, w, h inside the canvas"
    if "frame" not in meta or "image_id" not in meta:
        return "detection sample lacks its frame or image_id"
    return None


def _check_image(blob: bytes, ext: str, size: tuple[int, int]) -> str | None:
    import numpy as np

    try:
        if ext == "npy":
            arr = np.load(io.BytesIO(blob), allow_pickle=False)
            shape = arr.shape
            if arr.dtype != np.uint8:
                return f"raw image has dtype {arr.dtype}, expected uint8"
        else:
            from PIL import Image

            im = Image.open(io.BytesIO(blob))
            im.load()
            shape = (im.size[1], im.size[0], len(im.getbands()))
    except Exception as e:
        return f"image does not decode ({type(e).__name__})"
    if tuple(shape[:2]) != tuple(size) or shape[2] != 3:
        return f"image is {shape}, expected {size[0]}x{size[1]}x3"
    return None
