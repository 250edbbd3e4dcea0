"""Classification: an ImageNet-style folder or labelled WebDataset shards; each sample an image and its class."""

from __future__ import annotations

import json

from ..scheme import DEFAULT_SCHEME
from ..schemes.base import timm_names
from ..shards import LABEL, META, make_members
from .base import Task


class Classification(Task):
    name = "classification"
    default_scheme = DEFAULT_SCHEME

    def open_source(self, src, annotations=None):
        from ..sources import open_source

        return open_source(src)

    # registered geometry of every family (train/models.py registers these names): 224x224, P=16
    REGISTERED = (16, 224)
    SIZES = ("tiny", "small", "base")

    def model_record(self, scheme):
        # the scheme names its family (pevit[_flip], mivit, mivit_shuffle[_flip], vit: timm's own ViT)
        fam = scheme.definition.family(self.name, scheme)
        p, n = self.REGISTERED
        names = timm_names(fam, self.SIZES, p, n)
        if fam == "vit":  # plain images: timm's own ViT (any timm model fits), at the stored size
            kwargs = {} if tuple(scheme.out_size) == (n, n) else {"img_size": list(scheme.out_size)}
            create = (f"timm.create_model('{names[0]}', num_classes=<the manifest's num_classes>"
                      f"{''.join(f', {k}={tuple(v)}' for k, v in kwargs.items())}) (plain images: any timm model fits)")
        else:
            kwargs = {} if (scheme.patch, scheme.height, scheme.width) == (p, n, n) else \
                {"img_size": list(scheme.out_size), "patch_size": scheme.out_cell}
            create = f"import himr_pipe.train.models; timm.create_model('{names[0]}', shards=OUT)"
        return {"family": fam, "timm": names, "input_size": [3, *scheme.out_size], "crop_pct": 1.0,
                "kwargs": kwargs, "create": create}

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
