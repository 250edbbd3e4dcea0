"""The CPU's per-image numpy kernels (himr_pipe.kernels.cpu) against the torch reference, and the worker's fused
path (each image encrypted inside the encoder's call) against the batched one: bit for bit, byte for byte."""

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from conftest import encrypt, shard_bytes
from himr_pipe.encode import CpuEncoder, ImageFormat
from himr_pipe.kernels import encrypt as encrypt_batch
from himr_pipe.kernels import make_permutations
from himr_pipe.kernels.cpu import ImageKernel
from himr_pipe.scheme import Scheme, SchemeError


@st.composite
def schemes(draw):
    name = draw(st.sampled_from(["rs", "mi", "mi-shuffle"]))
    patch = draw(st.sampled_from([1, 2, 3, 4, 6, 8, 16] if name == "rs" else [2, 4, 6, 8, 16]))
    gh, gw = draw(st.integers(1, 4)), draw(st.integers(1, 4))  # non-square grids included
    shuffled = name != "mi"
    gap = draw(st.integers(0, 3)) if shuffled else 0
    drop = draw(st.sampled_from([0.0, 0.25, 0.5])) if shuffled else 0.0
    flip = draw(st.booleans()) if shuffled else False
    try:
        return Scheme.named(name, patch, gh * patch, gw * patch, gap, drop, flip)
    except SchemeError:
        assume(False)


def _batch(s: Scheme, b: int, c: int, seed: int):
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.integers(0, 256, (b, *s.size, c), dtype=np.uint8))
    perms = make_permutations(rng.integers(0, 2**63, (b, s.num_patches)), orient=s.flip) if s.shuffled else None
    return x, perms


@settings(max_examples=120, deadline=None)
@given(schemes(), st.integers(1, 3), st.sampled_from([1, 3]), st.integers(0, 2**32 - 1))
def test_the_cpu_kernels_are_the_reference_bit_for_bit(s, b, c, seed):
    x, perms = _batch(s, b, c, seed)
    want = encrypt_batch(s, x, perms, impl="torch")
    assert torch.equal(encrypt_batch(s, x, perms, impl="cpu"), want)
    assert torch.equal(encrypt_batch(s, x, perms), want)  # "auto" on a CPU tensor is the cpu kernels
    k = ImageKernel(s, c)  # one kernel, image after image: its scratch carries nothing from one to the next
    for i in range(b):
        got = k(x[i].numpy(), None if perms is None else perms[i])
        assert np.array_equal(got, want[i].numpy())


@pytest.mark.parametrize("name,flip,gap,drop", [("rs", False, 0, 0.0), ("rs", True, 1, 0.25),
                                                 ("mi", False, 0, 0.0), ("mi-shuffle", True, 0, 0.0)])
def test_a_real_photo_at_the_default_size(name, flip, gap, drop):
    from skimage import data

    s = Scheme.named(name, 16, 224, 224, gap, drop, flip)
    img = torch.from_numpy(np.ascontiguousarray(data.astronaut()[100:324, 150:374]))[None].repeat(2, 1, 1, 1)
    img[1] = img[1].flip(0)
    perms = make_permutations(np.random.default_rng(5).integers(0, 2**63, (2, s.num_patches)),
                              orient=flip) if s.shuffled else None
    want = encrypt_batch(s, img, perms, impl="torch")
    assert torch.equal(encrypt_batch(s, img, perms, impl="cpu"), want)
    assert not torch.equal(want[0], want[1])


def test_the_cpu_kernels_refuse_what_the_reference_refuses():
    s = Scheme.named("rs", 16, 32, 32)
    with pytest.raises(ValueError, match="permutation"):
        ImageKernel(s)(np.zeros((32, 32, 3), np.uint8), None)
    with pytest.raises(ValueError, match="shape"):
        ImageKernel(s)(np.zeros((32, 32, 3), np.uint8), np.arange(3))


@pytest.mark.parametrize("threads", [1, 3])
def test_the_encoder_encodes_what_prepare_gives_in_order(threads):
    """The fused step runs in the encoding thread (a pool, or the caller's thread when there is one), and the
    blobs come back in batch order."""
    fmt = ImageFormat("png")
    batch = np.stack([np.full((8, 8, 3), v, np.uint8) for v in range(7)])
    enc = CpuEncoder(fmt, threads)
    got = enc.encode(torch.from_numpy(batch), prepare=lambda i, a: 255 - a)
    assert got == [fmt.encode(255 - a) for a in batch]
    assert enc.encode(batch) == [fmt.encode(a) for a in batch]


@pytest.mark.parametrize("args", [(), ("--scheme", "rs", "--gap", "1", "--drop", "0.25", "--format", "png")])
def test_the_fused_path_writes_the_batched_paths_bytes(sample_src, tmp_path, args):
    """The default CPU path (fused, numpy) and the batched torch reference (--kernels torch) write the same
    shards; with one thread (the encoder inline) and with two (its pool)."""
    outs = {}
    for name, extra in (("torch", ("--kernels", "torch")), ("fused1", ("--threads", "1")), ("fused2", ("--threads", "2"))):
        encrypt(sample_src, tmp_path / name, "--seed", "3", "--shard-size", "7", *args, *extra)
        outs[name] = shard_bytes(tmp_path / name)
    assert outs["torch"] and outs["fused1"] == outs["torch"] and outs["fused2"] == outs["torch"]
