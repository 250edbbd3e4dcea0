"""The public records a job writes about itself in OUT: ``manifest.json`` and timm's ``_info.json``.

OUT is handed to people who must not see the data (docs/architecture.md, "What OUT may hold, and what stays
with the owner"), so these records hold nothing private. The owner's private state (the key, the map from
output keys to source files) is not here: :mod:`himr_pipe.state` reads and writes it, outside OUT.

``OUT/manifest.json`` (public)
    the job (scheme with all parameters, format, shard size, whether the run
    was seeded - never the seed), class names, every shard with its sample
    count, size and sha256, totals, and every skipped input as its sample id
    and reason. Source paths appear only with ``--include-paths``. ``audit``:
    the quick audit's figures (attack name, neighbour and direct accuracy,
    PSNR/SSIM, the leak budget and whether it is met): numbers only, never
    pictures (docs/architecture.md allows measured leak figures).
``OUT/_info.json`` (public)
    the split file timm's ``ReaderWds`` reads (splits -> name, num_samples,
    filenames, shard_lengths), so timm reads OUT unchanged.

:func:`build_manifest` and :func:`build_timm_info` make them, :class:`Manifest` reads and checks the manifest
for every reader, :func:`reason_counts` counts skip reasons by category, and :func:`read_json` and
:func:`write_json_atomic` read and write a local JSON file (the owner's state uses them too).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any
from .errors import Refused, WriteFailed

MANIFEST = "manifest.json"
TIMM_INFO = "_info.json"
MANIFEST_FORMAT = "himr-pipe/manifest-v1"


def write_json_atomic(path: str | os.PathLike, obj: Any, private: bool = False, what: str | None = None) -> None:
    """A local JSON file written whole or not at all (mode 0600 when ``private``; ``what`` it is, for the one line
    that names it when its disk refuses it: :class:`~himr_pipe.errors.WriteFailed`)."""
    from .atomic import atomic_write
    try:
        atomic_write(str(path), (json.dumps(obj, indent=1) + "\n").encode(), 0o600 if private else 0o644)
    except OSError as e:
        raise WriteFailed.of(e, path, what) from None


def reason_counts(reasons) -> dict[str, int]:
    """How many of each reason's category (the part before the first colon), sorted by category."""
    out: dict[str, int] = {}
    for r in reasons:
        cat = r.split(":", 1)[0]
        out[cat] = out.get(cat, 0) + 1
    return dict(sorted(out.items()))


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as f:
        return json.load(f)


class ManifestError(Refused, ValueError):
    """OUT has no usable manifest: missing, unreadable, not ours, malformed, or (when required) incomplete."""


@dataclass(frozen=True)
class Manifest:
    """The public manifest of an OUT, read and checked in one place: every reader uses :meth:`load`."""

    path: str
    data: dict

    @classmethod
    def load(cls, out: str | os.PathLike, require_complete: bool = False) -> "Manifest":
        """``out``: a local folder or an object-store URL (:mod:`.storage`)."""
        from .storage import Location

        loc = Location(str(out))
        path = loc.url(MANIFEST)
        try:
            data = loc.read_json(MANIFEST)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ManifestError(f"{out} holds no {MANIFEST}: not an OUT written by himr-pipe encrypt-shards") from None
        except (OSError, ValueError) as e:
            raise ManifestError(f"{path} is not readable JSON ({e})") from None
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
            raise ManifestError(f"{path} is not a himr-pipe manifest")
        missing = [k for k in ("status", "job", "shards", "totals", "skipped") if k not in data]
        if missing:
            raise ManifestError(f"{path} lacks {', '.join(missing)}")
        m = cls(path, data)
        try:
            m.scheme, m.ext  # noqa: B018 - parse them now, so that a malformed job fails here, clearly
        except (KeyError, TypeError, ValueError) as e:
            raise ManifestError(f"{path}: malformed job record ({type(e).__name__}: {e})") from None
        if require_complete and not m.complete:
            raise ManifestError(f"{out}: the encryption run is incomplete; rerun the same encrypt-shards command "
                                "to finish it")
        return m

    @property
    def complete(self) -> bool:
        return self.data["status"] == "complete"

    @property
    def job(self) -> dict:
        return self.data["job"]

    @property
    def scheme(self):
        from .scheme import Scheme

        return Scheme.from_dict(self.job["scheme"])

    @property
    def ext(self) -> str:
        """The image member's extension in the shards (jpg, png or npy)."""
        return self.job["format"]["ext"]

    @property
    def views(self) -> int:
        return int(self.job.get("views", 1))

    @property
    def shards(self) -> list[dict]:
        return self.data["shards"]

    @property
    def totals(self) -> dict:
        return self.data["totals"]


def build_manifest(job: dict, classes: list[str] | None, empty_classes: list[str], shards: list[dict],
                   inputs: int, skipped: list[dict], upscaled: int, status: str, inputs_written: int = 0) -> dict:
    """``inputs_written + skipped == inputs`` always; ``written`` counts samples (``views`` per input)."""
    written = sum(s["samples"] for s in shards)
    return {
        "format": MANIFEST_FORMAT,
        "status": status,
        "job": job,
        "classes": classes,
        "num_classes": len(classes) if classes is not None else None,
        "empty_classes": empty_classes,
        "totals": {"inputs": inputs, "written": written, "inputs_written": inputs_written, "skipped": len(skipped),
                   "upscaled": upscaled},
        "skip_reasons": reason_counts(s["reason"] for s in skipped),
        "shards": shards,
        "skipped": skipped,
    }


def build_timm_info(split: str, shards: list[dict], model: dict | None = None) -> dict:
    """timm's split file; ``model``: the family that fits the shards (the manifest's ``model``), so the one file
    timm reads also says which ``--model`` to pass."""
    return {
        "name": "himr-pipe",
        **({"model": model} if model else {}),
        "splits": {
            split: {
                "name": split,
                "num_samples": sum(s["samples"] for s in shards),
                "filenames": [s["name"] for s in shards],
                "shard_lengths": [s["samples"] for s in shards],
            }
        },
    }

def job_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """What differs between two job records, as 'key: old -> new' lines (the tool's version and notes aside):
    why a rerun, decrypt or the audit refuses an OUT or owner state made by another job."""
    out = []
    for k in sorted(set(a) | set(b)):
        if k in ("tool", "randomness_note"):
            continue
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += job_diff(va, vb, prefix + k + ".")
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} -> {vb!r}")
    return out
