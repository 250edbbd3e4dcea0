"""One setting measured: encrypted, attacked and trained with the product's own code; and the whole run's time."""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..scheme import Scheme
from .settings import Candidate, Recipe


def encrypt(src: Path, out: Path, scheme: Scheme, fmt: str, quality: int, seed: int) -> dict:
    """Encrypt ``src`` into ``out`` as ``himr-pipe encrypt-shards`` does (the same request, resolved by
    :class:`~.request.EncryptRequest`, in this process); its manifest.

    The owner state goes next to ``out`` (``out.state``). Exit 3 (some inputs skipped, each with its reason
    in the manifest) is accepted: the table is then measured on the inputs that were written.
    """
    from ..pipeline import encrypt_shards
    from ..request import EncryptRequest

    req = EncryptRequest(scheme=scheme.name, patch=scheme.patch, size=f"{scheme.height}x{scheme.width}",
                         gap=scheme.gap, drop=scheme.drop, flip=scheme.flip, fmt=fmt, quality=quality, seed=seed,
                         workers=0, progress=False, audit=False, state_dir=str(out) + ".state")
    cfg, opts = req.build(str(src))
    res = encrypt_shards(str(src), str(out), cfg, seed, opts)
    if res.exit_code not in (0, 3) or res.manifest is None:
        raise RuntimeError(f"encrypt-shards exited {res.exit_code}: " + "; ".join(res.messages))
    return res.manifest


def leak(out: Path, samples: int) -> dict:
    """The audit's figures on the stored shards of ``out`` (lower bounds on the leak)."""
    from ..audit.report import audit_out

    t = time.perf_counter()
    report, _ = audit_out(str(out), samples, str(out) + ".state", seed=0)
    return {"attack": report["attack"], "samples": report["samples"], "mean": report["mean"],
            "meets_budget": report["meets_budget"], "over_budget": report["over_budget"],
            "seconds": time.perf_counter() - t}


def train_one(train_out: Path, val_out: Path, run: Path, recipe: Recipe, seed: int, device: str = "auto",
              init: str | None = None) -> dict:
    """Train the recipe's model on ``train_out``; held-out top-1 on ``val_out`` after the last epoch. ``init``:
    a checkpoint to start from (``himr-pipe train --init``)."""
    from ..train.trainer import TrainConfig, train

    cfg = TrainConfig(shards=str(train_out), val=str(val_out), out=str(run), embed_dim=recipe.embed_dim,
                      depth=recipe.depth, num_heads=recipe.num_heads, rpe=True, epochs=recipe.epochs,
                      batch_size=recipe.batch_size, lr=recipe.lr, warmup_epochs=recipe.warmup_epochs,
                      weight_decay=recipe.weight_decay, drop_path=recipe.drop_path,
                      label_smoothing=recipe.label_smoothing, augment=recipe.augment, workers=0, seed=seed,
                      device=device, log_interval=0, eval_every=recipe.epochs, init=init)
    t = time.perf_counter()
    res = train(cfg, log=lambda s: None)
    h = res["history"]
    return {"seed": seed, "val_top1": h[-1]["val_top1"], "train_loss": h[-1]["train_loss"],
            "seconds": time.perf_counter() - t}



def _time_steps(scheme: Scheme, num_classes: int, recipe: Recipe, device: str, steps: int = 3) -> float:
    """Seconds per training step of the recipe's model for ``scheme`` (forward, backward, AdamW) on a
    random batch, after one warm-up step."""
    import torch

    from ..train.models import build_model

    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    model = build_model(scheme, num_classes, size="tiny", rpe=True, drop_path_rate=recipe.drop_path,
                        embed_dim=recipe.embed_dim, depth=recipe.depth, num_heads=recipe.num_heads).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr)
    h, w = scheme.out_size
    x = torch.randn(recipe.batch_size, 3, h, w, device=dev)
    y = torch.randint(0, num_classes, (recipe.batch_size,), device=dev)
    t = 0.0
    for i in range(steps + 1):
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i:
            t += time.perf_counter() - t0
    return t / steps


def estimate(plan: list[tuple[Candidate, Scheme]], sample_dir: Path, probe_dir: Path, counts: dict, recipe: Recipe,
             seeds: int, audit_samples: int, fmt: str, quality: int, seed: int, device: str) -> tuple[float, str]:
    """(seconds, how): the whole run's time, from a probe.

    The probe encrypts up to 64 training images with the first encrypted setting (twice, timing the second:
    the first pays for imports), attacks 2 of them, and times 3 training steps of each setting's model; the
    rest is scaled by image, sample and step counts (the loader's decode is not in it).
    """
    enc = [s for _, s in plan if s.definition.encrypts]
    probe_scheme = enc[0] if enc else plan[0][1]
    src = probe_dir / "src"
    n = 0
    for cdir in sorted((sample_dir / "train").iterdir()):
        if n >= 64:
            break
        (src / cdir.name).mkdir(parents=True, exist_ok=True)
        for f in sorted(cdir.iterdir())[: max(1, 64 // counts["classes"])]:
            os.symlink(os.path.realpath(f), src / cdir.name / f.name)
            n += 1
    encrypt(src, probe_dir / "out", probe_scheme, fmt, quality, seed)  # the first run also pays for imports
    t = time.perf_counter()
    encrypt(src, probe_dir / "out2", probe_scheme, fmt, quality, seed)
    t_probe = time.perf_counter() - t
    per_image = t_probe / n
    per_audit = 0.0
    if enc:
        per_audit = leak(probe_dir / "out", 2)["seconds"] / 2
    steps_per_epoch = max(1, counts["train"] // recipe.batch_size)
    step_time: dict = {}
    total = 0.0
    for _, s in plan:
        geo = (s.name, s.patch)  # the model (family and grid) a step times
        if geo not in step_time:
            step_time[geo] = _time_steps(s, counts["classes"], recipe, device)
        train_s = step_time[geo] * steps_per_epoch * recipe.epochs
        eval_s = step_time[geo] / 3 * counts["val"] / recipe.batch_size
        # a run's fixed cost (start-up, manifest) is in the probe's time: no split is encrypted faster than it
        enc_s = max(t_probe, per_image * counts["train"]) + max(t_probe, per_image * counts["val"])
        total += enc_s + seeds * (train_s + eval_s)
        if s.definition.encrypts:
            total += per_audit * audit_samples
    how = (f"probe: encrypt {per_image * 1000:.1f} ms/image, attack {per_audit:.1f} s/image "
           f"({probe_scheme.describe()}), training step {min(step_time.values()):.3f}-{max(step_time.values()):.3f} s "
           f"x {steps_per_epoch} steps x {recipe.epochs} epochs x {seeds} seed(s)")
    return total, how

