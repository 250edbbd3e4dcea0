"""GPU codec sweep: which JPEG decoder and encoder, with which settings, is fastest on this machine.

Two stages, each a list of codec configurations timed on the same inputs:

* **decode**: JPEG bytes in host memory -> decoded RGB uint8 (HWC) tensors on the GPU,
  synchronised. nvImageCodec's ``Decoder`` with each backend: ``default`` (all
  backends allowed), ``hw`` (the GPU's hardware JPEG engine, ``HW_GPU_ONLY``;
  ``load_hint`` < 1 hands that fraction of a batch to the hardware and the rest
  to the CUDA decoder, ``fallback=gpu``; hint 0 would be the ``gpu`` row),
  ``gpu`` (CUDA decoder, ``GPU_ONLY``), ``hybrid`` (Huffman on the CPU, the rest
  on the GPU, ``HYBRID_CPU_GPU``), each with ``max_num_cpu_threads``; torchvision's
  batched nvJPEG (``decode_jpeg(list, device="cuda")``); and, for reference,
  torchvision's CPU decoder in a thread pool of all cores, uploading each image.
* **encode**: a batch of 224x224x3 uint8 images already on the GPU -> JPEG q90
  bytes on the host, 4:4:4 and 4:2:0 where the encoder writes both.
  nvImageCodec's ``Encoder`` (``GPU_ONLY``) with ``max_num_cpu_threads``, alone
  or as two encoders on two Python threads, each on its own CUDA stream (each
  call hands the batch to both at once, as two consecutive batches of a stream
  would be, so a call counts 2 x batch images); torchvision's ``encode_jpeg``
  on a list of CUDA tensors (4:4:4 only); and the CPU encoder (simplejpeg, which
  releases the GIL) in a thread pool, fed through one pinned host buffer.

Without CUDA (``--smoke``) the GPU rows are reported unavailable and CPU stand-ins
run the same code paths: nvImageCodec's CPU backends (``nvimgcodec-cpu``) and
torchvision's CPU encoder (``torchvision-cpu``, which writes 4:2:0: libjpeg's default).

Every configuration runs one warm-up batch, whose output is checked: decoded
images against simplejpeg's decode of the same bytes, encoded bytes decoded by
simplejpeg against the input and their chroma subsampling against the one asked
for; the mean absolute difference per image must stay under 3 (JPEG q90 error).
A configuration that fails the check, or whose warm-up raises, is reported as
``failed: ...`` and not timed; one that cannot run here (no CUDA device, no
hardware JPEG decoder, nvImageCodec missing) as ``unavailable: ...``. Then it
is timed for ``--budget-s`` seconds (whole batches, cycling through the files;
``torch.cuda.synchronize()`` before the clock stops). The first of ``--batches``
sweeps every configuration; each later (larger) batch size re-times only the
``--top`` fastest of each stage. A configuration that would start after
``--max-seconds`` of sweeping is reported as ``skipped: ...``, so the sweep
ends within about ``--max-seconds`` + one configuration's time.

The images: ``--src DIR`` (its ``*.jpg``/``*.jpeg`` files, recursively, up to
``--n``), or ``--n`` JPEGs cut from the photos bundled with scikit-image
(:func:`himr_pipe.sample_data.make_sample_folder`, ImageNet-like sizes: sides
333..640, 500x375 often, some portrait, q90 4:2:0), which gives hundreds of
distinct sizes for the default 1500. The encoder input is the first images of
the set, resized to 224x224.

Run:  python benchmarks/gpu_codecs.py [--n 1500] [--src DIR] [--batches 64 256] [--budget-s 2]
                                      [--max-seconds 120] [--json PATH]
      python benchmarks/gpu_codecs.py --smoke     (no GPU needed: tiny set, the configurations that
                                                   run without CUDA; GPU ones show as unavailable)
The defaults are sized for about 2 minutes on a 16-core GPU machine: 36 timed
configurations (30 at batch 64, the top 3 of each stage again at 256) of 2 s plus warm-up and check
each, after making the 1500 images in parallel (a few seconds).

Reading the output: one table per stage, fastest first: name, config, img/s,
ratio to the stage's fastest, and the check (max over the warm-up batch of the
per-image mean absolute difference); then the rows that did not run, and the
winner. The encode stage also names the fastest encoder per chroma subsampling
(4:4:4 is what the pipeline needs when patch cells are not a multiple of 16).
Everything, with the library versions and the GPU's name, goes to ``--json``
(default ``$OUT/gpu_codecs.json`` when ``$OUT`` is set, else ``./gpu_codecs.json``).
Exit status 1 when a configuration failed its check.

From Python: ``sweep(files, ...)`` returns the same dict; its
``["stages"]["decode"]["winner"]`` and ``["stages"]["encode"]["winner"]`` (and
``["stages"]["encode"]["winner_by_subsampling"]["444"|"420"]``) are result rows:
``{"name", "config", "status", "img_s", "images", "seconds", "ratio", "check"}``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import simplejpeg
import torch

QUALITY = 90
ENCODE_SIZE = 224
MAX_MEAN_ABS_DIFF = 3.0          # per image, against simplejpeg; q90 JPEG error is well under this
HW_LOAD_HINTS = (1.0, 0.9, 0.5)  # fraction of a batch for the hardware decoder; the rest goes to the CUDA decoder
SUBSAMPLINGS = ("444", "420")
NO_CUDA = "unavailable: no CUDA device"


@dataclass
class Case:
    """One configuration of one codec (of the decode or the encode stage).

    ``build(batch, stack)`` makes the codec's objects (closing what needs closing through
    ``stack``) and returns its runner: for decode, a list of encoded images (uint8 arrays) ->
    a list of HWC uint8 tensors on the device; for encode, a (B, H, W, 3) uint8 tensor on the
    device -> a list of JPEG bytes. ``unavailable`` says why the case cannot run here instead.
    """

    name: str
    config: dict
    build: Callable | None = None
    unavailable: str | None = None


# -- image set ----------------------------------------------------------------------------------

def _make_class(job: tuple) -> None:
    from himr_pipe.sample_data import make_sample_folder

    root, cls, per_class, seed = job
    make_sample_folder(root, per_class=per_class, size="imagenet", seed=seed, classes=[cls])


def build_image_set(root: Path, n: int, seed: int = 0, workers: int = 1) -> list[Path]:
    """About ``n`` (rounded up to whole classes) ImageNet-like JPEGs under ``root/<class>/``.

    Run it before anything touches CUDA: ``workers`` > 1 forks processes.
    """
    from himr_pipe.sample_data import PHOTOS

    classes = sorted(PHOTOS)
    per_class = max(1, math.ceil(n / len(classes)))
    jobs = [(root, cls, per_class, seed + i) for i, cls in enumerate(classes)]
    if workers > 1:
        with ProcessPoolExecutor(min(workers, len(jobs))) as ex:
            list(ex.map(_make_class, jobs))
    else:
        for job in jobs:
            _make_class(job)
    return sorted(root.glob("*/*.jpg"))


def find_jpegs(src: Path, n: int) -> list[Path]:
    return sorted(p for p in src.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))[:n]


# -- decode cases -------------------------------------------------------------------------------

def _nvimgcodec_decoder(nv, gpu: bool, backends: list[tuple[str, float]] | None, threads: int) -> Callable:
    """``backends``: (BackendKind name, load hint) pairs, or None for nvImageCodec's default (all allowed)."""

    def build(batch, stack):
        device_id = torch.cuda.current_device() if gpu else nv.NVIMGCODEC_DEVICE_CPU_ONLY
        allowed = None if backends is None else [nv.Backend(getattr(nv.BackendKind, kind), load_hint=hint)
                                                 for kind, hint in backends]
        dec = nv.Decoder(device_id=device_id, max_num_cpu_threads=threads, backends=allowed)
        params = nv.DecodeParams(color_spec=nv.ColorSpec.SRGB, sample_format=nv.SampleFormat.I_RGB)
        stream = torch.cuda.current_stream().cuda_stream if gpu else 0

        def tensor(img):  # zero-copy; None (an image it could not decode) stays None for the check
            if img is None:
                return None
            if img.buffer_kind == nv.ImageBufferKind.STRIDED_DEVICE:
                return torch.from_dlpack(img.to_dlpack(stream))  # ordered on the stream it was decoded on
            return torch.from_numpy(np.asarray(img))

        return lambda data: [tensor(im) for im in dec.decode(data, params=params, cuda_stream=stream)]

    return build


def _torchvision_gpu_decoder(device: str) -> Callable:
    def build(batch, stack):
        from torchvision.io import ImageReadMode, decode_jpeg

        def run(data):
            outs = decode_jpeg([torch.from_numpy(d) for d in data], mode=ImageReadMode.RGB, device=device)
            return [o.permute(1, 2, 0) for o in outs]

        return run

    return build


def _torchvision_cpu_pool_decoder(threads: int, device: str) -> Callable:
    def build(batch, stack):
        from torchvision.io import ImageReadMode, decode_jpeg

        pool = stack.enter_context(ThreadPoolExecutor(threads))

        def one(data):
            return decode_jpeg(torch.from_numpy(data), mode=ImageReadMode.RGB).permute(1, 2, 0).to(device)

        return lambda data: list(pool.map(one, data))

    return build


def _hw_decoder_missing(nv, sample: np.ndarray) -> str | None:
    """Why nvImageCodec's hardware JPEG decoder cannot decode ``sample`` here, or None when it can."""
    try:
        out = nv.Decoder(backends=[nv.Backend(nv.BackendKind.HW_GPU_ONLY)]).decode([sample])
    except Exception as e:  # noqa: BLE001 - any failure of the probe means: not usable here
        return f"unavailable: {type(e).__name__}: {e}"
    return None if out[0] is not None else "unavailable: no hardware JPEG decoder (HW_GPU_ONLY decoded nothing)"


def decode_cases(nv, nv_missing: str | None, gpu: bool, device: str, sample: np.ndarray,
                 threads: tuple[int, ...]) -> list[Case]:
    gpu_reason = NO_CUDA if not gpu else nv_missing
    hw_reason = gpu_reason or _hw_decoder_missing(nv, sample)
    cases = []
    for backend, kinds in (("default", None), ("gpu", [("GPU_ONLY", 1.0)]), ("hybrid", [("HYBRID_CPU_GPU", 1.0)])):
        for t in threads:
            cases.append(Case("nvimgcodec", {"backend": backend, "threads": t},
                              None if gpu_reason else _nvimgcodec_decoder(nv, True, kinds, t), gpu_reason))
    t = max(threads)
    for hint in HW_LOAD_HINTS:
        kinds = [("HW_GPU_ONLY", hint)] + ([("GPU_ONLY", 1.0)] if hint < 1 else [])
        cases.append(Case("nvimgcodec",
                          {"backend": "hw", "load_hint": hint, "fallback": "gpu" if hint < 1 else None, "threads": t},
                          None if hw_reason else _nvimgcodec_decoder(nv, True, kinds, t), hw_reason))
    cases.append(Case("torchvision-nvjpeg", {}, _torchvision_gpu_decoder(device) if gpu else None,
                      None if gpu else NO_CUDA))
    if not gpu:  # the CPU backend stands in for the GPU ones, so a smoke run exercises the same code
        for t in threads:
            cases.append(Case("nvimgcodec-cpu", {"backend": "cpu", "threads": t},
                              None if nv_missing else _nvimgcodec_decoder(nv, False, [("CPU_ONLY", 1.0)], t),
                              nv_missing))
    cores = os.cpu_count() or 1
    cases.append(Case("torchvision-cpu-pool", {"threads": cores, "upload": gpu},
                      _torchvision_cpu_pool_decoder(cores, device)))
    return cases


# -- encode cases -------------------------------------------------------------------------------

def _nvimgcodec_encoder(nv, gpu: bool, threads: int, subsampling: str, n_encoders: int) -> Callable:
    def build(batch, stack):
        css = {"444": nv.ChromaSubsampling.CSS_444, "420": nv.ChromaSubsampling.CSS_420}[subsampling]
        params = nv.EncodeParams(quality_type=nv.QualityType.QUALITY, quality_value=float(QUALITY),
                                 chroma_subsampling=css)
        device_id = torch.cuda.current_device() if gpu else nv.NVIMGCODEC_DEVICE_CPU_ONLY
        kind = nv.BackendKind.GPU_ONLY if gpu else nv.BackendKind.CPU_ONLY
        encoders = [nv.Encoder(device_id=device_id, max_num_cpu_threads=threads, backends=[nv.Backend(kind)])
                    for _ in range(n_encoders)]
        streams = [torch.cuda.Stream() if gpu else None for _ in encoders]

        def encode(encoder, stream, x):
            handle = stream.cuda_stream if stream is not None else 0
            images = nv.as_images(list(x.unbind(0)) if x.is_cuda else list(x.numpy()), cuda_stream=handle)
            out = encoder.encode(images, ".jpg", params=params, cuda_stream=handle)
            return [None if o is None else bytes(o) for o in out]

        def wait_for_input():  # each encoder's stream waits for the stream that produced the batch
            for s in streams:
                if s is not None:
                    s.wait_stream(torch.cuda.current_stream())

        if n_encoders == 1:
            def run(x):
                wait_for_input()
                return encode(encoders[0], streams[0], x)
        else:
            pool = stack.enter_context(ThreadPoolExecutor(n_encoders))

            def run(x):
                wait_for_input()
                futures = [pool.submit(encode, e, s, x) for e, s in zip(encoders, streams)]
                return [b for f in futures for b in f.result()]

        return run

    return build


def _torchvision_encoder(gpu: bool) -> Callable:
    def build(batch, stack):
        from torchvision.io import encode_jpeg

        def run(x):
            chw = list(x.permute(0, 3, 1, 2).contiguous().unbind(0))
            if gpu:  # torchvision's nvJPEG runs on a stream of its own: the input must be complete
                torch.cuda.synchronize()
            outs = encode_jpeg(chw, quality=QUALITY)
            if gpu:
                torch.cuda.synchronize()
            return [o.cpu().numpy().tobytes() for o in outs]

        return run

    return build


def _simplejpeg_pool_encoder(gpu: bool, threads: int, subsampling: str) -> Callable:
    def build(batch, stack):
        pool = stack.enter_context(ThreadPoolExecutor(threads))
        host = torch.empty((batch, ENCODE_SIZE, ENCODE_SIZE, 3), dtype=torch.uint8, pin_memory=True) if gpu else None

        def one(a):
            return simplejpeg.encode_jpeg(a, quality=QUALITY, colorspace="RGB", colorsubsampling=subsampling)

        def run(x):
            if gpu:
                host.copy_(x, non_blocking=True)
                torch.cuda.current_stream().synchronize()
                arr = host.numpy()
            else:
                arr = x.numpy()
            return list(pool.map(one, arr))

        return run

    return build


def encode_cases(nv, nv_missing: str | None, gpu: bool, threads: tuple[int, ...],
                 pool_threads: tuple[int, ...]) -> list[Case]:
    cases = []
    gpu_reason = NO_CUDA if not gpu else nv_missing
    for ss in SUBSAMPLINGS:
        for n_encoders in (1, 2):
            for t in threads:
                cases.append(Case("nvimgcodec", {"threads": t, "encoders": n_encoders, "subsampling": ss},
                                  None if gpu_reason else _nvimgcodec_encoder(nv, True, t, ss, n_encoders),
                                  gpu_reason))
    cases.append(Case("torchvision-nvjpeg", {"subsampling": "444"},
                      _torchvision_encoder(True) if gpu else None, None if gpu else NO_CUDA))
    if not gpu:  # CPU stand-ins for the GPU encoders (same code paths, CPU backends)
        for ss in SUBSAMPLINGS:
            for t in threads:
                cases.append(Case("nvimgcodec-cpu", {"threads": t, "encoders": 1, "subsampling": ss},
                                  None if nv_missing else _nvimgcodec_encoder(nv, False, t, ss, 1), nv_missing))
        # torchvision's CPU encoder (libjpeg defaults) writes 4:2:0; its CUDA one (nvJPEG) 4:4:4
        cases.append(Case("torchvision-cpu", {"subsampling": "420"}, _torchvision_encoder(False)))
    for ss in SUBSAMPLINGS:
        for t in pool_threads:
            cases.append(Case("simplejpeg-pool", {"threads": t, "subsampling": ss, "pinned": gpu},
                              _simplejpeg_pool_encoder(gpu, t, ss)))
    return cases


# -- checks -------------------------------------------------------------------------------------

def _mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def check_decoded(outputs: list, references: list[np.ndarray]) -> tuple[str | None, dict]:
    """(problem or None, detail): ``outputs`` (tensors) against simplejpeg's decode of the same bytes."""
    missing = sum(o is None for o in outputs)
    if missing or len(outputs) != len(references):
        return f"failed: {missing} of {len(references)} images not decoded ({len(outputs)} outputs)", {}
    worst = 0.0
    for out, ref in zip(outputs, references):
        got = out.cpu().numpy()
        if got.shape != ref.shape:
            return f"failed: decoded shape {got.shape}, expected {ref.shape}", {}
        worst = max(worst, _mean_abs_diff(got, ref))
    detail = {"max_mean_abs_diff": round(worst, 3)}
    return (None if worst < MAX_MEAN_ABS_DIFF else f"failed: mean abs diff {worst:.2f} vs simplejpeg"), detail


def check_encoded(outputs: list, batch: np.ndarray, subsampling: str) -> tuple[str | None, dict]:
    """(problem or None, detail): each JPEG decodes (simplejpeg) to its input image within q90 error,
    with the chroma subsampling asked for. Output i encodes input ``i % len(batch)``."""
    if any(o is None for o in outputs) or len(outputs) % len(batch):
        return f"failed: {sum(o is None for o in outputs)} of {len(outputs)} images not encoded", {}
    worst = 0.0
    for i, data in enumerate(outputs):
        written = simplejpeg.decode_jpeg_header(data)[3]
        if written != subsampling:
            return f"failed: wrote {written}, asked {subsampling}", {}
        worst = max(worst, _mean_abs_diff(simplejpeg.decode_jpeg(data, colorspace="RGB"), batch[i % len(batch)]))
    detail = {"max_mean_abs_diff": round(worst, 3)}
    return (None if worst < MAX_MEAN_ABS_DIFF else f"failed: mean abs diff {worst:.2f} vs the input"), detail


# -- timing -------------------------------------------------------------------------------------

def new_row(case: Case, batch: int, status: str) -> dict:
    return {"name": case.name, "config": {**case.config, "batch": batch}, "status": status,
            "img_s": None, "images": 0, "seconds": 0.0, "ratio": None, "check": {}}


def measure(case: Case, batch: int, inputs: list, check: Callable, budget_s: float, sync: Callable) -> dict:
    """One result row: warm up and check on ``inputs[0]``, then time whole batches for ``budget_s``."""
    row = new_row(case, batch, "ok")
    with ExitStack() as stack:
        try:
            run = case.build(batch, stack)
        except Exception as e:  # noqa: BLE001 - a codec that cannot be set up here is reported, not fatal
            row["status"] = f"unavailable: {type(e).__name__}: {e}"
            return row
        try:
            first = run(inputs[0])
            sync()
        except Exception as e:  # noqa: BLE001
            row["status"] = f"failed: {type(e).__name__}: {e}"
            return row
        problem, row["check"] = check(first)
        if problem:
            row["status"] = problem
            return row
        n, i = 0, 1
        t0 = time.perf_counter()
        while True:
            n += len(run(inputs[i % len(inputs)]))
            i += 1
            if time.perf_counter() - t0 >= budget_s:
                break
        sync()
        dt = time.perf_counter() - t0
    row.update(img_s=n / dt, images=n, seconds=round(dt, 3))
    return row


def _batches(items: list, batch: int) -> list[list]:
    """Consecutive batches of ``batch`` items (the remainder dropped; too few items are repeated)."""
    count = max(batch, len(items) // batch * batch)
    seq = [items[i % len(items)] for i in range(count)]
    return [seq[i:i + batch] for i in range(0, count, batch)]


def _encode_input(encoded: list[np.ndarray], batch: int) -> np.ndarray:
    """``batch`` images of the set (repeated if too few), decoded and resized to ENCODE_SIZE square."""
    from PIL import Image

    size = (ENCODE_SIZE, ENCODE_SIZE)
    frames = [np.asarray(Image.fromarray(simplejpeg.decode_jpeg(encoded[i % len(encoded)], colorspace="RGB"))
                         .resize(size, Image.BILINEAR)) for i in range(batch)]
    return np.stack(frames)


def _winner(rows: list[dict]) -> dict | None:
    ok = [r for r in rows if r["img_s"] is not None]
    return max(ok, key=lambda r: r["img_s"]) if ok else None


def sweep(files: list[Path], batches: tuple[int, ...] = (64, 256), decode_threads: tuple[int, ...] = (4, 8),
          encode_threads: tuple[int, ...] = (1, 4, 8), pool_threads: tuple[int, ...] = (4, 8, 16),
          budget_s: float = 2.0, max_seconds: float = 120.0, device: str = "cuda", top: int = 3,
          log: Callable[[str], None] = lambda line: print(line, flush=True)) -> dict:
    """Time every decode and encode configuration on ``files`` (JPEGs); see the module docstring.

    ``device``: "cuda" (or "cuda:N") for the GPU sweep; "cpu", or a machine without CUDA, runs
    the CPU configurations and reports the GPU ones as unavailable. The first of ``batches`` times
    every configuration, later ones the ``top`` fastest per stage. Returns the result dict.
    """
    import torchvision

    if not files:
        raise ValueError("sweep: no JPEG files")
    t_start = time.perf_counter()
    gpu = device.startswith("cuda") and torch.cuda.is_available()
    if gpu and torch.device(device).index is not None:  # "cuda" alone: the current device
        torch.cuda.set_device(torch.device(device))
    dev = device if gpu else "cpu"
    try:
        from nvidia import nvimgcodec as nv
        nv_missing, nv_version = None, nv.__version__
    except ImportError as e:
        nv, nv_missing, nv_version = None, f"unavailable: nvimgcodec not installed ({e})", None

    encoded = [np.fromfile(p, dtype=np.uint8) for p in files]
    sizes = {simplejpeg.decode_jpeg_header(e)[:2] for e in encoded}

    def sync():
        if gpu:
            torch.cuda.synchronize()

    stages = {"decode": decode_cases(nv, nv_missing, gpu, dev, encoded[0], decode_threads),
              "encode": encode_cases(nv, nv_missing, gpu, encode_threads, pool_threads)}
    rows: dict[str, list[dict]] = {stage: [] for stage in stages}
    for b_index, batch in enumerate(batches):
        decode_inputs = _batches(encoded, batch)
        decode_refs = [simplejpeg.decode_jpeg(e, colorspace="RGB") for e in decode_inputs[0]]
        host_frames = _encode_input(encoded, batch)
        frames = torch.from_numpy(host_frames).to(dev)
        sync()
        for stage, cases in stages.items():
            if b_index == 0:
                todo = cases
            else:  # the fastest of the first batch size (its rows are in case order), again at this one
                first = rows[stage][:len(cases)]
                ran = [i for i, r in enumerate(first) if r["img_s"] is not None]
                todo = [cases[i] for i in sorted(ran, key=lambda i: -first[i]["img_s"])[:top]]
            for case in todo:
                if case.unavailable:
                    row = new_row(case, batch, case.unavailable)
                elif time.perf_counter() - t_start + budget_s > max_seconds:
                    row = new_row(case, batch, f"skipped: over max_seconds={max_seconds:g}")
                elif stage == "decode":
                    row = measure(case, batch, decode_inputs, partial(check_decoded, references=decode_refs),
                                  budget_s, sync)
                else:
                    row = measure(case, batch, [frames], partial(check_encoded, batch=host_frames,
                                                                 subsampling=case.config["subsampling"]),
                                  budget_s, sync)
                rows[stage].append(row)
                rate = f"{row['img_s']:9.0f} img/s" if row["img_s"] is not None else row["status"]
                log(f"  {stage} {row['name']:20s} {_fmt_config(row['config']):58s} {rate}")
        del frames

    result_stages = {}
    for stage, stage_rows in rows.items():
        best = _winner(stage_rows)
        for r in stage_rows:
            if r["img_s"] is not None:
                r["ratio"] = r["img_s"] / best["img_s"]
        result_stages[stage] = {"results": stage_rows, "winner": best}
    result_stages["encode"]["winner_by_subsampling"] = {
        ss: _winner([r for r in rows["encode"] if r["config"]["subsampling"] == ss]) for ss in SUBSAMPLINGS}
    return {
        "device": torch.cuda.get_device_name() if gpu else "cpu",
        "gpu": gpu,
        "cpu_cores": os.cpu_count(),
        "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__,
                     "nvimgcodec": nv_version, "simplejpeg": simplejpeg.__version__},
        "images": {"count": len(files), "distinct_sizes": len(sizes),
                   "mean_kib": round(sum(e.size for e in encoded) / len(encoded) / 1024, 1)},
        "settings": {"batches": list(batches), "decode_threads": list(decode_threads),
                     "encode_threads": list(encode_threads), "pool_threads": list(pool_threads),
                     "budget_s": budget_s, "max_seconds": max_seconds, "top": top, "quality": QUALITY,
                     "encode_size": [ENCODE_SIZE, ENCODE_SIZE]},
        "stages": result_stages,
        "seconds": round(time.perf_counter() - t_start, 1),
    }


# -- report -------------------------------------------------------------------------------------

def _fmt_config(config: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in config.items() if v is not None)


def print_tables(result: dict) -> None:
    what = {"decode": "JPEG bytes in host memory -> RGB uint8 on the device",
            "encode": f"{ENCODE_SIZE}x{ENCODE_SIZE}x3 uint8 on the device -> JPEG q{QUALITY} bytes on the host"}
    for stage, st in result["stages"].items():
        print(f"\n== {stage}: {what[stage]} ({result['device']}) ==")
        print(f"{'name':20s} {'config':58s} {'img/s':>9s} {'ratio':>6s}  check")
        ran = sorted((r for r in st["results"] if r["img_s"] is not None), key=lambda r: -r["img_s"])
        for r in ran:
            mad = r["check"].get("max_mean_abs_diff")
            print(f"{r['name']:20s} {_fmt_config(r['config']):58s} {r['img_s']:9.0f} {r['ratio']:6.2f}  mad {mad}")
        for r in st["results"]:
            if r["img_s"] is None:
                print(f"{r['name']:20s} {_fmt_config(r['config']):58s} {r['status']}")
        by_ss = st.get("winner_by_subsampling", {})
        winners = {"": st["winner"], **{" " + ":".join(ss): w for ss, w in by_ss.items()}}
        for label, w in winners.items():
            text = f"{w['name']} {_fmt_config(w['config'])} ({w['img_s']:.0f} img/s)" if w else "none ran"
            print(f"winner{label}: {text}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1500, help="images in the set (made from the bundled photos, or "
                                                         "the first n of --src)")
    ap.add_argument("--src", type=Path, help="a folder of JPEGs to use instead of the bundled photos")
    ap.add_argument("--batches", type=int, nargs="+", default=[64, 256],
                    help="batch sizes: the first sweeps all configurations, later ones the --top fastest")
    ap.add_argument("--decode-threads", type=int, nargs="+", default=[4, 8], help="nvImageCodec decoder threads")
    ap.add_argument("--encode-threads", type=int, nargs="+", default=[1, 4, 8], help="nvImageCodec encoder threads")
    ap.add_argument("--pool-threads", type=int, nargs="+", default=[4, 8, 16], help="simplejpeg pool threads")
    ap.add_argument("--top", type=int, default=3, help="configurations per stage re-timed at later batch sizes")
    ap.add_argument("--budget-s", type=float, default=2.0, help="timed seconds per configuration")
    ap.add_argument("--max-seconds", type=float, default=120.0, help="configurations that would start later "
                                                                     "than this into the sweep are skipped")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--json", type=Path, default=Path(os.environ["OUT"]) / "gpu_codecs.json"
                    if os.environ.get("OUT") else Path("gpu_codecs.json"))
    ap.add_argument("--smoke", action="store_true", help="tiny CPU run that checks the script (no GPU needed)")
    args = ap.parse_args()
    if args.smoke:
        args.device, args.n, args.batches, args.top = "cpu", 24, [8], 1
        args.decode_threads, args.encode_threads, args.pool_threads = [1, 2], [1, 2], [2, 4]
        args.budget_s, args.max_seconds = 0.15, 50.0
    elif not torch.cuda.is_available():
        sys.exit("gpu_codecs: no CUDA device (use --smoke for a CPU run of the script)")

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_codecs_") as tmp:
        if args.src:
            files, source = find_jpegs(args.src, args.n), str(args.src)
        else:
            files = build_image_set(Path(tmp), args.n, workers=1 if args.smoke else os.cpu_count() or 1)
            source = "himr_pipe.sample_data (imagenet-like sizes, q90)"
        if not files:
            sys.exit(f"gpu_codecs: no JPEG files in {args.src}")
        set_s = time.perf_counter() - t0
        print(f"gpu_codecs: {len(files)} images from {source} ({set_s:.1f} s)", flush=True)
        result = sweep(files, tuple(args.batches), tuple(args.decode_threads), tuple(args.encode_threads),
                       tuple(args.pool_threads), args.budget_s, args.max_seconds, args.device, args.top)
    result["images"].update(source=source, build_seconds=round(set_s, 1))
    if result["images"]["distinct_sizes"] < 50 and not args.smoke:
        print(f"note: only {result['images']['distinct_sizes']} distinct image sizes (per-size work is "
              "under-represented below about 50)")
    result["smoke"] = args.smoke
    print_tables(result)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    failed = [f"{s} {r['name']} {_fmt_config(r['config'])}: {r['status']}"
              for s, st in result["stages"].items() for r in st["results"] if r["status"].startswith("failed")]
    print(f"\n{len(files)} images ({result['images']['distinct_sizes']} sizes), sweep {result['seconds']} s, "
          f"total {time.perf_counter() - t0:.1f} s; wrote {args.json}")
    if failed:
        print("FAILED:", *failed, sep="\n  ")
        sys.exit(1)


if __name__ == "__main__":
    main()
