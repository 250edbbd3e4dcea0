"""The interface every task implements (:mod:`himr_pipe.tasks`); the defaults are classification's."""

from __future__ import annotations

from typing import Callable


class Task:
    name: str = ""
    # the CLI's defaults when the user gives none
    default_size: str = "224"
    default_scheme: str = "mi-shuffle"
    default_resize: str = "crop"
    takes_annotations: bool = False  # --annotations / --keep-image-ids mean something

    # -- the source ---------------------------------------------------------------------------------------
    def claims(self, src: str, annotations: str | None) -> bool:
        """Would ``--task auto`` choose this task for SRC?"""
        return True

    def open_source(self, src: str, annotations: str | None = None):
        """List SRC's samples and their targets (a :class:`~himr_pipe.sources.Source`). Raises SourceError
        (a user-facing message) when SRC, or what the task needs beside it, is unusable."""
        raise NotImplementedError

    def source_record(self, source) -> dict:
        """What the owner's state keeps about SRC beyond its root and fingerprint (to reopen it: resume, audit)."""
        return {}

    # -- the job ------------------------------------------------------------------------------------------
    def refusal(self, cfg) -> str | None:
        """Why this job's settings are refused for the task (None: accepted)."""
        return None

    def job_record(self, cfg) -> dict:
        """What the task adds to the job's public record (the manifest's ``job``)."""
        return {}

    def image_ids(self, source, key_hex: str, cfg) -> Callable:
        """input -> the id its samples carry in OUT (0: the task keeps none)."""
        return lambda x: 0

    # timm's train.py trains this task's models (classifiers; the detector trains with ``himr-pipe train``)
    timm_trainable: bool = True

    def num_classes(self, manifest: dict) -> int | None:
        """The classes a model of a finished OUT's ``manifest`` predicts (None: the manifest does not say)."""
        return manifest.get("num_classes")

    def model_record(self, scheme) -> dict:
        """The timm model family that fits shards of ``scheme`` (the manifest's and ``_info.json``'s
        ``model``): registered names per size, the input they take, the kwargs a geometry other than the
        registered one needs, and how to build it (``timm.create_model(name, shards=OUT)`` after importing
        ``himr_pipe.train.models`` (or ``.peyolos``): geometry, classes and the match are then read from OUT's manifest)."""
        raise NotImplementedError

    # -- a sample and its shard ---------------------------------------------------------------------------
    def members(self, ext: str) -> set[str]:
        """The members every sample has (:mod:`himr_pipe.shards`: LABEL, META)."""
        raise NotImplementedError

    def member_writer(self, cfg, meta: dict) -> Callable:
        """A function (screened sample, encoded image, counts) -> the sample's members, for one worker.
        ``meta`` is what every sample's JSON holds (scheme, size, cell); ``counts`` the shard's counts
        (:meth:`new_counts`), which the writer may add to."""
        raise NotImplementedError

    def new_counts(self) -> dict:
        """The task's own per-shard counts, zero (they become fields of the shard's stats)."""
        return {}

    # -- the finished OUT ---------------------------------------------------------------------------------
    def finish(self, cfg, source, outl, ostate, done: dict, written: set, image_id) -> dict | None:
        """Once every shard is done: write what OUT gains beside the shards and return the manifest's record
        of it (under the task's name), or None."""
        return None

    def owns_file(self, name: str) -> bool:
        """Is this OUT entry one :meth:`finish` writes?"""
        return False

    def check_sample(self, meta: dict) -> str | None:
        """verify: the problem with one sample's JSON, or None."""
        return None

    def check_out(self, manifest: dict, loc, sizes: dict) -> list[str]:
        """verify: the problems with what :meth:`finish` wrote (a complete OUT)."""
        return []

    def summary(self, manifest: dict) -> str | None:
        """The CLI's line about the task's record, after a run."""
        return None
