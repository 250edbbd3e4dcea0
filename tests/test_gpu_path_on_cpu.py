"""The GPU pipeline's code path, run end to end with CPU stand-ins.

The stages of ``--device cuda`` are device-parametric: the torchvision
decoder (nvJPEG on a GPU) runs torchvision's CPU decoder here, the Triton
kernels run under TRITON_INTERPRET=1, torchvision's and nvImageCodec's JPEG
encoders run their CPU backends. Only the CUDA-specific calls (nvJPEG,
DLPack from DALI's GPU buffers, stream synchronisation) are left to
benchmarks/gpu_check.py on a real GPU.
"""

import io

import numpy as np
import pytest
from PIL import Image

from conftest import encrypt, manifest, shard_bytes
from himr_pipe.shards import iter_samples

GPU_STAGES = ("--decoder", "torchvision", "--kernels", "triton")


def _images(out, ext):
    res = {}
    for tar in sorted(out.glob("*.tar")):
        for key, m in iter_samples(str(tar)):
            res[key] = np.asarray(Image.open(io.BytesIO(m[ext])).convert("RGB")).astype(int)
    return res


@pytest.mark.parametrize("scheme", ["rs", "mi"])
def test_triton_path_writes_the_same_bytes_as_the_torch_path(sample_src, tmp_path, scheme):
    args = ("--scheme", scheme, "--format", "png", "--seed", "4", "--shard-size", "9", "--decoder", "torchvision")
    encrypt(sample_src, tmp_path / "torch", *args, "--kernels", "torch")
    encrypt(sample_src, tmp_path / "triton", *args, "--kernels", "triton")
    assert shard_bytes(tmp_path / "torch") == shard_bytes(tmp_path / "triton")
    assert len(_images(tmp_path / "triton", "png")) == 18


@pytest.mark.parametrize("encoder", ["torchvision", "nvimgcodec"])
def test_gpu_encoders_write_sound_jpegs(sample_src, tmp_path, encoder):
    args = ("--scheme", "none", "--seed", "4", "--shard-size", "9", "--decoder", "torchvision")
    encrypt(sample_src, tmp_path / "png", *args, "--format", "png")
    encrypt(sample_src, tmp_path / "jpg", *args, "--encoder", encoder)
    fmt = manifest(tmp_path / "jpg")["job"]["format"]
    assert manifest(tmp_path / "jpg")["job"]["encoder"] == encoder
    assert fmt["subsampling"] == "420"  # torchvision's CPU encoder writes 4:2:0 only (nvJPEG: 4:4:4 only)
    blob = next(iter_samples(str(next((tmp_path / "jpg").glob("*.tar")))))[1]["jpg"]
    assert Image.open(io.BytesIO(blob)).layer[1][1:3] == (1, 1)  # chroma sampled 2x2 down: 4:2:0 indeed
    plain, jpeg = _images(tmp_path / "png", "png"), _images(tmp_path / "jpg", "jpg")
    assert plain.keys() == jpeg.keys()
    for k in plain:  # the bytes decode to the image that was encoded (q90: small error)
        mse = ((plain[k] - jpeg[k]) ** 2).mean()
        assert 10 * np.log10(255**2 / mse) > 30, k


def test_torchvision_decoder_isolates_a_bad_file_and_keeps_the_rest(sample_src):
    from himr_pipe.decoders import TorchvisionDecoder

    files = sorted(sample_src.glob("*/*.jpg"))[:3]
    good = [f.read_bytes() for f in files]
    dec = TorchvisionDecoder((64, 96), "crop", 8, "cpu")
    (_, imgs, bad), = list(dec.run([[good[0], good[1][:3000], b"junk", good[2]]]))
    assert tuple(imgs.shape) == (2, 64, 96, 3) and sorted(bad) == [1, 2]


def test_decoder_and_encoder_are_part_of_the_job(sample_src, tmp_path):
    out = tmp_path / "o"
    encrypt(sample_src, out, "--seed", "1", *GPU_STAGES[:2])
    r = encrypt(sample_src, out, "--seed", "1", expect=2)
    assert "decoder" in r.output


def test_nvimgcodec_decoder_decodes_like_the_others_and_isolates_bad_files(sample_src):
    """nvImageCodec's decoder (its CPU backend here, the GPU's hardware decoder on a card) through the same
    resizer: the same pictures as torchvision's decoder, bad files skipped alone, a PNG through the fallback."""
    from himr_pipe.decoders import NvImageCodecDecoder, TorchvisionDecoder

    files = sorted(sample_src.glob("*/*.jpg"))[:3]
    good = [f.read_bytes() for f in files]
    png = io.BytesIO()
    Image.open(files[0]).save(png, format="PNG")
    batch = [good[0], good[1][:3000], b"junk", good[2], png.getvalue()]
    (_, a, bad_a), = list(NvImageCodecDecoder((64, 96), "crop", 8, "cpu").run([batch]))
    (_, b, bad_b), = list(TorchvisionDecoder((64, 96), "crop", 8, "cpu").run([batch]))
    assert sorted(bad_a) == sorted(bad_b) == [1, 2] and a.shape == b.shape == (3, 64, 96, 3)
    assert (a.float() - b.float()).abs().mean() < 2.0  # two JPEG decoders: within rounding of each other
    assert close(a[0], a[2])  # the PNG of the first photo decodes to what its JPEG does, near enough


def close(x, y, tol: float = 3.0) -> bool:
    return float((x.float() - y.float()).abs().mean()) < tol


def test_decoder_auto_is_recorded_as_what_ran(sample_src, tmp_path):
    from himr_pipe.decoders import resolve_decoder

    encrypt(sample_src, tmp_path / "a", "--seed", "1", "--scheme", "none")
    assert manifest(tmp_path / "a")["job"]["decoder"] == resolve_decoder("auto") == "dali"
    encrypt(sample_src, tmp_path / "b", "--seed", "1", "--scheme", "none", "--decoder", "nvimgcodec",
            "--shard-size", "9")
    m = manifest(tmp_path / "b")
    assert m["job"]["decoder"] == "nvimgcodec" and m["totals"]["written"] == 18


def test_torch_and_triton_kernels_agree_with_defences_and_holes_in_the_batches(sample_src, tmp_path, monkeypatch):
    """The CPU's torch kernels (run in chunks over the encoder's threads) and the Triton kernels (one call)
    write the same bytes, with the defences on and with files that fail in the decoder leaving holes in
    their batches."""
    import shutil

    from himr_pipe.decoders import inspect_header

    monkeypatch.setattr("himr_pipe.worker.screen", inspect_header)  # the decoder fails them, not the data check

    src = tmp_path / "src"
    shutil.copytree(sample_src, src)
    photos = sorted(src.glob("*/*.jpg"))
    for n, f in enumerate(photos[:12:4]):  # pass the header check, fail in the decoder: holes in the batches
        (f.parent / f"truncated_{n}.jpg").write_bytes(f.read_bytes()[:2500])
    (photos[0].parent / "junk.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"junk" * 40)
    args = ("--scheme", "rs", "--gap", "1", "--drop", "0.1", "--format", "png", "--seed", "5", "--shard-size", "7",
            "--batch-size", "4", "--decoder", "torchvision")
    encrypt(src, tmp_path / "torch", *args, "--kernels", "torch", expect=3)
    encrypt(src, tmp_path / "triton", *args, "--kernels", "triton", expect=3)
    assert shard_bytes(tmp_path / "torch") == shard_bytes(tmp_path / "triton")
    reasons = manifest(tmp_path / "torch")["skip_reasons"]
    assert reasons["decode-error"] == 3 and sum(reasons.values()) == 4
