"""timm's own ``train.py`` on himr-pipe shards, with the flags that keep the stored grid.

``himr-pipe timm-train path/to/train.py --data-dir OUT [train.py's flags...]`` runs timm's script unchanged,
in this process, after registering this package's models (``himr_pipe.train.models``), and fills in what OUT
already says, unless the flag is given:

- ``--dataset wds/himr`` (timm reads OUT through its ``_info.json``), ``--train-split`` the split OUT holds,
  and ``--val-split ''`` when OUT holds no other split (timm's default ``validation`` would fail);
- ``--model``: the family that fits the shards (the manifest's ``model``, the tiny size), and
  ``--model-kwargs shards=OUT``, so the model takes OUT's geometry and classes and refuses a mismatched scheme
  (``models._create``);
- ``--no-aug`` when none of ``--no-aug``, ``--scale``, ``--ratio``, ``--hflip`` is given.

Why the last one: timm's default training transform is RandomResizedCrop (scale 0.08-1, ratio 3/4-4/3) and a
horizontal flip. On encrypted images both cut and rescale the stored cells: a crop at a random offset mixes
pixels of neighbouring (shuffled, unrelated) patches, and a flip of an RS image flips the arrangement of
patches as well as their content. The model then trains on broken cells, silently. With ``--no-aug`` timm
resizes to the model's input size, which is the stored size, and centre-crops with ``crop_pct`` 1.0 (the
registered models' pretrained_cfg): both identities, so every cell arrives as stored. The grid-safe
augmentations live in our own trainer instead (``himr-pipe train``: patch-level mixing and the
encrypted-domain transforms of :mod:`himr_pipe.train.augment`). Flags that break the grid anyway are passed
through with a warning, so a user who wants them gets them knowingly.

Plain shards (scheme ``none``) take any timm model; OUT's stored size and classes are passed as
``--input-size``/``--num-classes`` instead of ``shards=``. Detection shards are refused: train.py trains
classifiers (``himr-pipe train OUT`` trains PEYOLOS).
"""
from __future__ import annotations

import os
import runpy
import sys
from typing import Callable
from himr_pipe.errors import Refused

# train.py's flags that reshape or flip the stored image; values that keep the grid
_GRID_FLAGS = {"--scale": [1.0, 1.0], "--ratio": [1.0, 1.0], "--hflip": [0.0], "--vflip": [0.0]}
_GRID_OTHERS = ("--aa", "--train-crop-mode", "--train-img-sizes")


class TimmTrainError(Refused, ValueError):
    """The arguments can't train on these shards (a detection OUT, a non-shard dataset)."""


def _find(argv: list[str], flag: str) -> tuple[int, list[str]] | None:
    """(index, values) of ``flag`` in argv (``--flag v ...`` or ``--flag=v``); None when absent."""
    for i, a in enumerate(argv):
        if a == flag:
            vals = []
            for b in argv[i + 1:]:
                if b.startswith("--"):
                    break
                vals.append(b)
            return i, vals
        if a.startswith(flag + "="):
            return i, [a.split("=", 1)[1]]
    return None


def timm_train_argv(argv: list[str], warn: Callable[[str], None] = print) -> list[str]:
    """train.py's arguments for ``argv`` (the user's), with what a himr-pipe OUT at ``--data-dir`` implies."""
    found = _find(argv, "--data-dir")
    if found is None or not found[1]:
        return list(argv)
    out = found[1][0]
    from himr_pipe.manifest import Manifest
    from himr_pipe.tasks import job_task, task_named

    from himr_pipe.manifest import MANIFEST, ManifestError
    from himr_pipe.storage import Location

    try:
        if not Location(out).exists(MANIFEST):
            return list(argv)  # not a himr-pipe OUT: train.py as it is
        m = Manifest.load(out, require_complete=True).data
    except (ManifestError, OSError, ValueError) as e:
        raise TimmTrainError(f"--data-dir {out}: {e}") from None
    job = m["job"]
    task = task_named(job_task(job))
    if not task.timm_trainable:
        raise TimmTrainError(f"{out} holds {task.name} shards: timm's train.py trains classifiers; train "
                             f"the detector with `himr-pipe train {out} --val OUT_val --out RUN`")
    model = m.get("model") or {}
    split = job.get("split", "train")
    args = list(argv)
    add: list[str] = []
    ds = _find(args, "--dataset")
    if ds is None:
        add += ["--dataset", "wds/himr"]
    elif not (ds[1] and ds[1][0].startswith("wds/")):
        raise TimmTrainError(f"{out} is WebDataset shards: pass --dataset wds/<any name> (not {ds[1]})")
    if _find(args, "--train-split") is None:
        add += ["--train-split", split]
    if _find(args, "--val-split") is None:
        add += ["--val-split", ""]
        warn(f"OUT holds the split {split!r} only, so timm will not evaluate (--val-split ''): timm reads one "
             "--data-dir; evaluate with `himr-pipe train OUT --val OUT_val` or timm's validate.py on OUT_val")
    given = _find(args, "--model")
    fits = model.get("timm") or []
    family = model.get("family", "")
    if given is None and fits:
        add += ["--model", fits[0]]
        name = fits[0]
    else:
        name = given[1][0] if given and given[1] else ""
    ours = any(name.startswith(p) for p in ("pevit_", "mivit_", "peyolos_"))
    if ours:
        mk = _find(args, "--model-kwargs")
        shards_kw = f"shards={out}"
        if mk is None:
            add += ["--model-kwargs", shards_kw]
        elif not any(v.startswith("shards=") for v in mk[1]):
            args.insert(mk[0] + 1, shards_kw)
    else:
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in (model.get("kwargs") or {}).items()}
        if given is None and kw:  # our pick (timm's ViT) at the stored size; a model the user names is theirs
            add += ["--model-kwargs", *(f"{k}={v}" for k, v in kw.items())]
        elif kw and _find(args, "--model-kwargs") is None:
            warn(f"OUT stores {'x'.join(map(str, model['input_size'][1:]))} images: a model with a fixed input "
                 f"size needs --model-kwargs {' '.join(f'{k}={v}' for k, v in kw.items())}")
        if family and family != "vit":
            warn(f"--model {name} is not a model for {job['scheme']['kind']} shards: their model is "
                 f"{' / '.join(fits)} (a plain model sees shuffled or averaged patches as an image)")
        size = model.get("input_size")
        if size and _find(args, "--input-size") is None and _find(args, "--img-size") is None:
            add += ["--input-size", *map(str, size)]
        if _find(args, "--crop-pct") is None:
            add += ["--crop-pct", "1.0"]
        ncls = task.num_classes(m)
        if ncls and _find(args, "--num-classes") is None:
            add += ["--num-classes", str(ncls)]
    aug_given = [f for f in ("--no-aug", *_GRID_FLAGS) if _find(args, f) is not None]
    if not aug_given:
        add.append("--no-aug")
    elif "--no-aug" not in aug_given:  # the user augments: say which of train.py's transforms break the grid
        for flag, safe in _GRID_FLAGS.items():
            f = _find(args, flag)
            if f is None:
                if flag != "--vflip":  # train.py's defaults: scale 0.08-1, ratio 3/4-4/3, hflip 0.5
                    warn(f"{flag} not given: timm's default breaks the stored grid of encrypted shards "
                         f"(pass {flag} {' '.join(map(str, safe))}, or --no-aug)")
                continue
            try:
                vals = [float(v) for v in f[1]]
            except ValueError:
                continue
            if (vals != safe) if flag in ("--scale", "--ratio") else any(v > 0 for v in vals):
                warn(f"{flag} {' '.join(f[1])} breaks the stored grid of encrypted shards "
                     f"(keep it {' '.join(map(str, safe))}, or pass --no-aug)")
    for flag in _GRID_OTHERS:
        if _find(args, flag) is not None:
            warn(f"{flag} reshapes the stored image: it breaks the grid of encrypted shards")
    if add:
        warn("for himr-pipe shards: " + " ".join(a if a else "''" for a in add))
    return args + add


def run_timm_train(train_py: str, argv: list[str], warn: Callable[[str], None] = print) -> int:
    """Run timm's ``train.py`` at ``train_py`` with :func:`timm_train_argv`; its exit status."""
    import himr_pipe.train.models  # noqa: F401 (registers pevit_*, mivit_*)
    import himr_pipe.train.peyolos  # noqa: F401 (registers peyolos_*)

    full = timm_train_argv(argv, warn)
    old_argv, old_path = sys.argv, list(sys.path)
    sys.argv = [train_py, *full]
    sys.path.insert(0, os.path.dirname(os.path.abspath(train_py)))
    try:
        runpy.run_path(train_py, run_name="__main__")
    except SystemExit as e:
        code = e.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    finally:
        sys.argv, sys.path[:] = old_argv, old_path
    return 0
