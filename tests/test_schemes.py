"""Every registered scheme, end to end: encrypt, decrypt, audit, model build and one training step.

The registry (:mod:`himr_pipe.schemes`) is listed, not restated: a scheme registered anywhere goes through the
same test. ``demo_scheme`` (rs with every pixel inverted) is a scheme only these tests register, to show that
adding one is a module and no product file: it brings a torch transform and its inverse, nothing else.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import demo_scheme  # noqa: F401 (registers rs-invert)
from himr_pipe.kernels import decrypt, encrypt, make_permutations
from himr_pipe.scheme import Scheme
from himr_pipe.schemes import SCHEMES
from himr_pipe.schemes import base as registry
from himr_pipe.shards import decode_image, iter_shard

NAMES = list(SCHEMES)
SIZE, PATCH = 32, 8
# Registered on import, then taken out at once: every xdist worker collects this module, and a worker that runs
# none of its tests would otherwise keep the demo in its registry for every other test file (preview's panels).
_DEMO = SCHEMES.pop(demo_scheme.RSInvert.name)
registry._BY_RECORD.pop((_DEMO.kind, _DEMO.shuffle))


@pytest.fixture(scope="module", autouse=True)
def _demo_only_here():
    """The demo scheme is registered while this module's tests run (pytest tears a module's fixtures down before
    another module's test), so other test files see the product's registry."""
    SCHEMES[_DEMO.name] = _DEMO
    registry._BY_RECORD[(_DEMO.kind, _DEMO.shuffle)] = _DEMO
    yield
    SCHEMES.pop(_DEMO.name)
    registry._BY_RECORD.pop((_DEMO.kind, _DEMO.shuffle))


def test_the_registry_lists_the_built_in_schemes_and_the_demo():
    assert {"rs", "mi", "mi-shuffle", "none", "rs-invert"} <= set(NAMES)
    for name, d in SCHEMES.items():
        s = Scheme.named(name, PATCH, SIZE, SIZE)
        assert s.definition is d and s.name == name and Scheme.from_dict(s.to_dict()) == s
    # the demo brings no fast kernel: the CPU and the GPU run its torch reference
    assert not SCHEMES["rs-invert"].triton and SCHEMES["rs-invert"].image_kernel(Scheme.named("rs-invert")) is None
    assert SCHEMES["rs"].triton and SCHEMES["rs"].image_kernel(Scheme.named("rs")) is not None


def _perms(s: Scheme, b: int, seed: int = 0):
    if not s.shuffled:
        return None
    keys = np.random.default_rng(seed).integers(0, 2**62, (b, s.num_patches), dtype=np.int64)
    return make_permutations(keys, orient=s.flip)


@pytest.mark.parametrize("name", NAMES)
def test_every_implementation_gives_the_references_bytes_and_decrypt_undoes_the_key(name):
    s = Scheme.named(name, PATCH, SIZE, SIZE, flip=SCHEMES[name].shuffled)
    x = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8))
    perms = _perms(s, 3)
    ref = encrypt(s, x, perms, impl="torch")
    assert tuple(ref.shape) == (3, *s.out_size, 3)
    assert torch.equal(encrypt(s, x, perms, impl="cpu"), ref)
    assert torch.equal(encrypt(s, x, perms), ref)   # auto: the CPU's fused per-image kernel, or the reference
    ident = torch.arange(s.num_patches).expand(3, -1) if s.shuffled else None
    # what comes back depends on the key no more: the same as from cells never moved or turned
    assert torch.equal(decrypt(s, ref, perms), decrypt(s, encrypt(s, x, ident, impl="torch"), ident))
    if s.shuffled and not s.definition.mixed:   # an exact inverse (rs, the demo)
        assert torch.equal(decrypt(s, ref, perms), x)


@pytest.fixture(scope="module")
def outs(sample_src, tmp_path_factory):
    """Every registered scheme over the same sample with the same seed (so the same keys hold the same inputs),
    lossless, in process (workers=0)."""
    from himr_pipe.pipeline import encrypt_shards
    from himr_pipe.request import EncryptRequest

    base = tmp_path_factory.mktemp("schemes")
    for name in NAMES:
        out = base / name
        req = EncryptRequest(scheme=name, patch=PATCH, size=str(SIZE), fmt="png", seed=7, shard_size=6, workers=0,
                             progress=False, audit=False, state_dir=f"{out}.state")
        cfg, opts = req.build(str(sample_src))
        assert encrypt_shards(str(sample_src), str(out), cfg, 7, opts, log=lambda *a, **k: None).exit_code == 0
    return base


def _stored(out, ext="png") -> dict:
    return {k: decode_image(m[ext], ext) for t in sorted(out.glob("*.tar")) for k, m in iter_shard(str(out), t.name)}


@pytest.mark.parametrize("name", NAMES)
def test_encrypt_decrypt_and_audit(outs, tmp_path, name):
    from himr_pipe.audit.report import AuditError, audit_out
    from himr_pipe.decrypt import decrypt_out
    from himr_pipe.manifest import Manifest

    out, state = outs / name, f"{outs / name}.state"
    s = Manifest.load(str(out)).scheme
    assert s.name == name and s.definition is SCHEMES[name]
    stored, plain = _stored(out), _stored(outs / "none")
    assert set(stored) == set(plain) and len(plain) == 18
    assert all(v.shape == (*s.out_size, 3) for v in stored.values())
    if s.definition.encrypts:
        assert sum(np.array_equal(stored[k], plain[k]) for k in plain) == 0

    res = decrypt_out(str(out), str(tmp_path / "dec"), state)
    assert res["images"] == 18
    from PIL import Image

    got = {p.stem: np.asarray(Image.open(p)) for p in (tmp_path / "dec").glob("*.png")}
    for k in plain:   # at the plain geometry; exact where the scheme has an inverse
        assert got[k].shape == plain[k].shape
        if not s.definition.mixed and not s.drop and not s.gap:
            assert np.array_equal(got[k], plain[k]), k

    if not s.definition.encrypts:
        with pytest.raises(AuditError, match="nothing to attack"):
            audit_out(str(out), samples=2, state_dir=state)
        return
    report, grid = audit_out(str(out), samples=2, state_dir=state)
    assert report["samples"] == 2 and 0.0 <= report["mean"]["direct_accuracy"] <= 1.0
    assert report["plain"] == "rebuilt from SRC" and "ssim" in report["mean"]
    assert all(p.shape[:2] == s.size for row in grid for p in row)  # every picture at the plain geometry


@pytest.mark.parametrize("name", NAMES)
def test_model_build_and_one_training_step(outs, name):
    """The scheme's model family, built through the one builder, takes a step on its shards' images."""
    from himr_pipe.manifest import Manifest
    from himr_pipe.train.augment import build_augment
    from himr_pipe.train.models import FAMILY_NAMES, build_model, check_model_matches

    m = Manifest.load(str(outs / name)).data
    s = Scheme.from_dict(m["job"]["scheme"])
    fam = s.definition.family("classification", s)
    assert m["model"]["family"] == fam
    if fam in FAMILY_NAMES:  # registered with timm under the names the manifest gives
        assert m["model"]["timm"] == FAMILY_NAMES[fam]
    ncls = m["num_classes"]
    torch.manual_seed(0)
    model = build_model(s, ncls, embed_dim=32, depth=1, num_heads=2)
    check_model_matches(model, s)
    samples = [mem for t in sorted((outs / name).glob("*.tar")) for _, mem in iter_shard(str(outs / name), t.name)]
    x = torch.stack([torch.from_numpy(decode_image(mem["png"], "png")) for mem in samples[:8]])
    y = torch.tensor([int(mem["cls"]) for mem in samples[:8]])
    x = x.permute(0, 3, 1, 2).float() / 255
    x, y_soft = build_augment(s, ncls)(x, y, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    loss = torch.sum(-y_soft * torch.log_softmax(model(x), dim=-1), dim=-1).mean()
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_a_scheme_registered_by_any_module_reaches_spawned_workers(sample_src, tmp_path):
    """A pickled Scheme names the module that registered its scheme, and unpickling imports it: worker
    processes write the same bytes as the run in process."""
    import os
    import pickle
    import subprocess
    import sys
    from pathlib import Path

    s = Scheme.named("rs-invert", PATCH, SIZE, SIZE)
    code = ("import pickle, sys; s = pickle.loads(sys.stdin.buffer.read()); "
            "print(s.name, type(s.definition).__module__, s.out_size)")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}  # where the demo's module is importable
    res = subprocess.run([sys.executable, "-c", code], input=pickle.dumps(s), capture_output=True, check=True, env=env)
    assert res.stdout.decode().split()[:2] == ["rs-invert", "demo_scheme"]

    from himr_pipe.pipeline import encrypt_shards
    from himr_pipe.request import EncryptRequest

    digests = []
    for workers in (0, 2):
        out = tmp_path / f"w{workers}"
        req = EncryptRequest(scheme="rs-invert", patch=PATCH, size=str(SIZE), fmt="png", seed=7, shard_size=6,
                             workers=workers, progress=False, audit=False, state_dir=f"{out}.state")
        cfg, opts = req.build(str(sample_src))
        assert encrypt_shards(str(sample_src), str(out), cfg, 7, opts, log=lambda *a, **k: None).exit_code == 0
        digests.append({p.name: p.read_bytes() for p in sorted(out.glob("*.tar"))})
    assert digests[0] == digests[1] and len(digests[0]) == 3
