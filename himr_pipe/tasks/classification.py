"""Classification: an ImageNet-style folder or labelled WebDataset shards; each sample an image and its class."""

from __future__ import annotations

import json

from ..scheme import DEFAULT_SCHEME
from ..shards import LABEL, META, make_members
from .base import Task


class Classification(Task):
    name = "classification"
    default_scheme = DEFAULT_SCHEME

    def open_source(self, src, annotations=None):
        from ..sources import open_source

        return open_source(src)

    def members(self, ext):
        return {ext, LABEL, META}

    def member_writer(self, cfg, meta):
        shared = json.dumps(meta).encode()  # one JSON for every sample unless it names its view or source
        per_sample = cfg.include_paths or cfg.views > 1

        def write(sc, blob, counts):
            it = sc.sample
            sample_json = shared
            if per_sample:
                extra = {"view": it.view} if cfg.views > 1 else {}
                if cfg.include_paths:
                    extra["source"] = it.ref
                sample_json = json.dumps({**meta, **extra}).encode()
            return make_members(cfg.fmt.ext, blob, sample_json, it.label)

        return write
