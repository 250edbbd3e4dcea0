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
from .shards import LABEL, META, iter_shard
from .tasks import task_of_job
from .storage import Location


def verify_out(out: str, decode: bool = False) -> tuple[list[str], dict]:
    """Return (problems, summary). No problems means OUT is sound."""
    problems: list[str] = []
    from .lock import live_holder

    holder = live_holder(Location(out))
    if holder:  # its partial manifest and temporary files are a run in progress, not damage
        return [f"OUT is being written by a running himr-pipe run ({holder}): verify it once that run ends"], {}
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
    task = task_of_job(man.job)
    want = task.members(ext) - ({LABEL} if m.get("labelled") is False else set())  # unlabelled: no .cls
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
                        err = task.check_sample(meta)
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
    if m.get("status") == "complete":
        problems += task.check_out(m, loc, sizes)  # detection: the ground truth
    summary = {"shards": len(m["shards"]), "samples": samples_read, **t}
    return problems, summary


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
