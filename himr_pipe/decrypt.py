"""The owner's decrypt: put every stored cell back where it came from.

Only the owner can do this: the permutations derive from the job key, which
lives in the owner's state and never in OUT (docs/architecture.md, "What OUT may hold").
For every sample the key names its shard and planned position
(``{shard:06d}_{pos:06d}``); the state's per-shard record gives the shard's
index and planned count, so the sort keys of that shard are regenerated
exactly as the worker drew them (:func:`himr_pipe.keys.permutation_keys`).

What comes back, at the plain image's geometry (scheme.size):

* ``rs``: the stored patches in their true places: exact, up to the codec's
  loss (pixel-equal for PNG and raw shards); gap borders and dropped patches
  stay blank, they were never stored;
* ``mi``: the MI image shown at full size (each value as a 2x2 block): its
  averaging has no inverse, and positions were never moved;
* ``mi-shuffle``: the cells put back, then shown at full size as ``mi``.

The audit uses :func:`true_permutations` for its ground truth instead of
matching patches.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .manifest import Manifest, ManifestError, job_diff
from .state import OwnerState
from .scheme import Scheme
from .shards import decode_image, iter_shard
from .errors import Failed, Refused


class DecryptError(Refused, ValueError):
    """OUT and the owner's state do not allow a decrypt (missing, mismatched, or not ours)."""


class DecryptFailed(Failed):
    """A stored sample could not be read or decoded (where the caller asked for no skipping)."""


@dataclass(frozen=True)
class OwnerView:
    """OUT as the owner sees it: the public manifest plus the private state."""

    out: str
    manifest: dict
    scheme: Scheme
    ext: str
    key_hex: str
    shards: dict  # shard file name -> per-shard state record (index, planned, written...)
    state_dir: str
    source_root: str | None = None  # where SRC was when encrypt-shards ran (the owner's plain images)
    source_annotations: str | None = None  # detection: its COCO instances JSON


def open_owner(out: str, state_dir: str | None = None) -> OwnerView:
    try:
        man = Manifest.load(out)
    except ManifestError as e:
        raise DecryptError(str(e)) from None
    m, job = man.data, man.job
    ostate = OwnerState.for_out(out, state_dir)
    state = ostate.path
    jstate = ostate.read_job()
    if jstate is None:
        raise DecryptError(f"the owner's state of this OUT is not at {state}: decrypting needs the job key, which "
                           "OUT never holds. Pass --state-dir (the folder encrypt-shards used); without it the "
                           "permutations cannot be recovered")
    diff = job_diff(jstate.get("job", {}), job)
    if diff:
        raise DecryptError(f"the owner state at {state} belongs to a different job ({'; '.join(diff[:3])})")
    bad = ostate.mismatches(m.get("shards", []))
    if bad:  # another run's key: every permutation would be wrong, and the images scrambled
        raise DecryptError(f"the owner state at {state} is not the one that wrote OUT's shards "
                           f"({'; '.join(bad[:3])}{'; ...' if len(bad) > 3 else ''}); pass the --state-dir of the "
                           "run that wrote OUT")
    shards = ostate.shards()
    return OwnerView(out, m, man.scheme, man.ext, jstate["key"], shards, str(state),
                     jstate.get("source", {}).get("root"), jstate.get("source", {}).get("annotations"))


def true_permutations(view: OwnerView, shard: str, keys: list[str]) -> dict[str, np.ndarray]:
    """The permutation of each sample (``out_cell j = plain cell perm[j]``), by key; shuffled schemes only."""
    from himr_pipe.kernels import make_permutations

    from .keys import permutation_keys

    st = view.shards.get(shard)
    if st is None:
        raise DecryptError(f"the owner state has no record of shard {shard}")
    rows = permutation_keys(view.key_hex, st.index, st.planned, view.scheme.num_patches)
    out = {}
    for k in keys:
        pos = int(k.rsplit("_", 1)[1])
        out[k] = make_permutations(rows[pos:pos + 1], orient=view.scheme.flip)[0]
    return out


def plain_geometry(view: OwnerView, stored: np.ndarray, perm: np.ndarray | None) -> np.ndarray:
    """One stored image (uint8 HWC, as decoded) back at the plain image's geometry."""
    import torch

    from himr_pipe.kernels import decrypt

    s = view.scheme
    img = decrypt(s, torch.from_numpy(np.ascontiguousarray(stored))[None],
                  None if perm is None else perm[None])[0].numpy()
    return s.definition.plain_geometry(s, img)  # mi: each value shown as a 2x2 block


def _one_line(e: BaseException) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())[:300]


def _read_shard(view: OwnerView, name: str) -> tuple[list, str | None]:
    """The samples of one shard that could be read, and why the rest could not (None: all were)."""
    import tarfile

    samples = []
    try:
        for k, mem in iter_shard(view.out, name):
            samples.append((k, mem))
    except (tarfile.TarError, OSError, EOFError, ValueError) as e:  # cut, overwritten, unreadable
        return samples, _one_line(e)
    return samples, None


def iter_decrypted(view: OwnerView, skip=None):
    """Yield (shard, key, stored image, plain-geometry image) for every sample that reads and decodes.

    A sample that does not (its bytes corrupt, its member missing, its size not the scheme's) is reported as
    ``skip(what, reason, count)`` (``what``: its key, or the shard when its samples cannot be read at all,
    ``count`` of them) and left out; the others are still decrypted. Without ``skip``, the first one raises
    :class:`DecryptFailed`."""
    if skip is None:
        def skip(what, reason, count=1):
            raise DecryptFailed(f"{what}: {reason}")
    want = view.scheme.out_size
    for e in view.manifest["shards"]:
        name = e["name"]
        samples, why = _read_shard(view, name)
        if why is not None:
            lost = max(int(e.get("samples") or 0) - len(samples), 1)
            skip(name, f"{lost} sample(s) unreadable after the first {len(samples)} ({why})", lost)
        if not samples:
            continue
        perms = (true_permutations(view, name, [k for k, _ in samples]) if view.scheme.shuffled
                 else {k: None for k, _ in samples})
        for k, mem in samples:
            if view.ext not in mem:
                skip(k, f"no .{view.ext} member in {name}")
                continue
            try:
                stored = decode_image(mem[view.ext], view.ext)
            except Exception as e:  # noqa: BLE001 -- whatever the codec says of corrupt bytes, the sample is lost
                skip(k, f"does not decode ({_one_line(e)})")
                continue
            if stored.ndim != 3 or stored.shape[:2] != tuple(want) or stored.shape[2] != 3:
                skip(k, f"decodes to {'x'.join(map(str, stored.shape))}, not the scheme's {want[0]}x{want[1]}x3")
                continue
            yield name, k, stored, plain_geometry(view, stored, perms[k])


def decrypt_out(out: str, dest: str, state_dir: str | None = None, limit: int | None = None, warn=None,
                progress: bool = False) -> dict:
    """Write every sample of OUT (or the first ``limit``) as ``DEST/{key}.png`` at plain geometry.

    A sample that cannot be read or decoded is skipped: ``warn(line)`` names its key and the reason, and it is
    counted in ``skipped``; the rest are decrypted. ``progress``: a bar on stderr (one step per sample)."""
    import sys

    from tqdm import tqdm

    from .storage import Location

    d = Path(dest).resolve()
    if Location(out).contains(Location(str(d))):
        raise DecryptError("decrypted images show the data: DEST must not be inside OUT")
    view = open_owner(out, state_dir)
    if view.manifest.get("status") != "complete":
        raise DecryptError("OUT is incomplete (an interrupted run): finish it by rerunning encrypt-shards first")
    from PIL import Image

    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)  # these are the owner's eyes only
    total = sum(int(e.get("samples") or 0) for e in view.manifest["shards"])
    bar = tqdm(total=total if limit is None else min(total, limit), unit="img", desc="decrypt", disable=not progress,
               dynamic_ncols=True, file=sys.stderr)
    skipped = []

    def skip(what, reason, count=1):
        skipped.append({"key": what, "reason": reason, "count": count})
        if warn is not None:
            with tqdm.external_write_mode(file=sys.stderr):  # above the bar, not through it
                warn(f"skipped {what}: {reason}")
        bar.update(count)

    n = 0
    try:
        for _, key, _, img in iter_decrypted(view, skip):
            if limit is not None and n >= limit:
                break
            Image.fromarray(img).save(d / f"{key}.png", compress_level=1)
            n += 1
            bar.update(1)
    finally:
        bar.close()
    return {"images": n, "skipped": sum(s["count"] for s in skipped), "skipped_samples": skipped,
            "scheme": view.scheme.describe(), "dest": str(d)}
