"""GPU check: correctness on the device, then speed against the memory-bandwidth limit.

One script for a lent H100/H200 (under 8 minutes). In order:

1. correctness: the Triton kernels against the torch reference (computed on
   the CPU), bit for bit, on random batches of several shapes and on real
   photos; the inverse RS; then encrypt-shards on the GPU: RS output is a
   patch permutation of the plain output, MI the documented mean, and the GPU
   JPEG encoders' bytes decode to what was encoded (this is where a stream-
   ordering bug would show);
2. bandwidth: device-to-device copy (bytes read + written) against each
   kernel's effective bandwidth at batch 256 (and 64) of 224x224x3 (goal >= 0.9);
3. the RS kernel against the research code's per-image ``randperm`` loop
   (goal >= 50x) and against plain torch gathers;
4. encrypt-shards img/s on the GPU for none, rs, mi, mi-shuffle and mi-shuffle
   --flip (marginal: 2N minus N images), rs/none (goal >= 0.95), both GPU JPEG
   encoders, and the rate of the decoder + resize alone on the same files (the
   decode limit); the kernels against device copy at batch 4x --batch (1024) too;
5-6. the codec sweep and the CPU path's scaling over worker counts (--scaling);
7. training: the loader (decoding in its workers, or as bytes for one nvJPEG
   call) against a ViT-S training step (bf16) of the shards' own model, for rs
   and mi-shuffle --flip shards (goal: loader >= 1.5x the step).

DALI cannot be installed on the lent machine (its wheel is too large to
carry), so the pipeline there uses the torchvision (nvJPEG) decoder; the DALI
GPU path is checked for correctness wherever DALI and a GPU meet, and its
speed is not measured here.

Run:  python benchmarks/gpu_check.py [--n 1500] [--out DIR]   (on a lent machine: benchmarks/gpu_run.sh)
      python benchmarks/gpu_check.py --smoke      (CPU, tiny sizes, Triton interpreter: checks the script)
Writes DIR/gpu_check.json (DIR defaults to $OUT, else ./gpu_check_out) and prints a table last.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import gpu_codecs  # noqa: E402  (beside this script: the codec sweep, and the image sets both use)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1500, help="images in the small set (the large one has 2n)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--out", default=os.environ.get("OUT") or "gpu_check_out")
    ap.add_argument("--smoke", action="store_true", help="CPU run with tiny sizes (Triton interpreter)")
    ap.add_argument("--codecs", type=float, default=100.0,
                    help="seconds for the codec sweep (benchmarks/gpu_codecs.py) on the 2n set; 0: skip it")
    ap.add_argument("--scaling", default="",
                    help="worker counts for the CPU path's scaling (torchvision CPU decoder), e.g. 1,2,4,8,16")
    args = ap.parse_args()
    if args.smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")
        args.n, args.batch = 12, 4

    import numpy as np
    import torch  # noqa: E402
    from PIL import Image  # noqa: E402

    from himr_pipe.kernels import make_permutations  # noqa: E402
    from himr_pipe.kernels import reference as ref  # noqa: E402
    from himr_pipe.kernels import triton_kernels as tk  # noqa: E402

    DEV = "cpu" if args.smoke else "cuda"
    if DEV == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device (use --smoke for a CPU run of the script)")
    OUT = Path(args.out)
    OUT.mkdir(parents=True, exist_ok=True)
    R: dict = {"device": torch.cuda.get_device_name() if DEV == "cuda" else "cpu (smoke)",
               "torch": torch.__version__, "smoke": args.smoke, "checks": {}}
    rng = np.random.default_rng(0)


    def sync():
        if DEV == "cuda":
            torch.cuda.synchronize()


    def bench(fn, reps: int = 50) -> float:
        """Seconds per call (median); triton's do_bench on the GPU."""
        if DEV == "cuda":
            import triton.testing

            return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median") / 1e3
        fn()
        t = time.perf_counter()
        for _ in range(max(1, reps // 25)):
            fn()
        return (time.perf_counter() - t) / max(1, reps // 25)


    def check(name: str, ok: bool, detail: str = "") -> None:
        R["checks"][name] = {"ok": bool(ok), "detail": detail}
        print(f"  [{'ok' if ok else 'FAIL'}] {name} {detail}", flush=True)


    def perms_for(b: int, n: int) -> torch.Tensor:
        return torch.from_numpy(make_permutations(rng.integers(0, 2**63, (b, n))))


    # -- 1. kernel correctness ----------------------------------------------------------
    print("1. correctness of the kernels on", R["device"], flush=True)
    shapes = [(3, 32, 48, 3, 16), (2, 24, 24, 1, 4), (5, 64, 32, 3, 32), (2, 20, 30, 3, 10)]
    if not args.smoke:
        shapes += [(17, 224, 224, 3, 16), (9, 384, 256, 3, 8), (4, 224, 224, 1, 14)]
    for b, h, w, c, p in shapes:
        x = torch.from_numpy(rng.integers(0, 256, (b, h, w, c), dtype=np.uint8))
        pm = perms_for(b, (h // p) * (w // p))
        y = tk.rs_permute(x.to(DEV), pm.to(DEV), p)
        ok = torch.equal(y.cpu(), ref.rs_permute(x, pm, p)) and torch.equal(tk.rs_unpermute(y, pm.to(DEV), p).cpu(), x)
        if p % 2 == 0:
            ok = ok and torch.equal(tk.mi_mix(x.to(DEV), p).cpu(), ref.mi_mix(x, p))
        check(f"triton == reference {b}x{h}x{w}x{c} P={p}", ok)
        # the flip defence: the orientation gather (a different kernel) and its inverse
        o = torch.from_numpy(rng.integers(0, 8, pm.shape))
        y = tk.rs_permute(x.to(DEV), pm.to(DEV), p, orient=o.to(DEV))
        ok = (torch.equal(y.cpu(), ref.rs_permute(x, pm, p, orient=o))
              and torch.equal(tk.rs_unpermute(y, pm.to(DEV), p, orient=o.to(DEV)).cpu(), x))
        check(f"triton == reference with orientations {b}x{h}x{w}x{c} P={p}", ok)

    # mi-shuffle (the default scheme): MI, then RS on the P/2 cells; the device path composes the same kernels
    from himr_pipe.kernels import decrypt as k_decrypt  # noqa: E402
    from himr_pipe.kernels import encrypt as k_encrypt  # noqa: E402
    from himr_pipe.scheme import Scheme  # noqa: E402

    for b, h, w, p in ((3, 32, 48, 16), (5, 224, 224, 16), (2, 64, 32, 8)):
        for flip in (False, True):
            sch = Scheme.named("mi-shuffle", p, h, w, flip=flip)
            x = torch.from_numpy(rng.integers(0, 256, (b, h, w, 3), dtype=np.uint8))
            # flip: orientations packed into the permutations (perm + N * o), as the pipeline makes them
            pm = torch.from_numpy(make_permutations(rng.integers(0, 2**63, (b, sch.num_patches)), orient=flip))
            y = k_encrypt(sch, x.to(DEV), pm.to(DEV), impl="triton")
            want = k_encrypt(sch, x, pm, impl="torch")
            back = k_decrypt(sch, y, pm.to(DEV)).cpu()
            check(f"mi-shuffle{' flip' if flip else ''} triton == reference {b}x{h}x{w} P={p}",
                  torch.equal(y.cpu(), want) and torch.equal(back, ref.mi_mix(x, p)))

    from himr_pipe.sample_data import load_photos  # noqa: E402

    photos = torch.stack([torch.from_numpy(np.asarray(Image.fromarray(a).resize((224, 224))))
                          for a in load_photos().values()])
    pm = perms_for(len(photos), 196)
    check("triton == reference on real photos",
          torch.equal(tk.rs_permute(photos.to(DEV), pm.to(DEV), 16).cpu(), ref.rs_permute(photos, pm, 16))
          and torch.equal(tk.mi_mix(photos.to(DEV), 16).cpu(), ref.mi_mix(photos, 16)))

    # -- 2. bandwidth ----------------------------------------------------------------------
    print("2. bandwidth at batch", args.batch, flush=True)
    B = args.batch
    H = W = 224 if not args.smoke else 32
    P = 16
    x = torch.randint(0, 256, (B, H, W, 3), dtype=torch.uint8, device=DEV)
    pm = perms_for(B, (H // P) * (W // P)).to(DEV)
    nbytes = x.numel()
    dst = torch.empty_like(x)
    t_copy = bench(lambda: dst.copy_(x))
    copy_bw = 2 * nbytes / t_copy
    # sweep the launch shapes (output chunks per program x warps) and keep the fastest for every figure below;
    # outputs go into reused buffers (out=), as in the pipeline
    dst_mi = torch.empty((B, H // 2, W // 2, 3), dtype=torch.uint8, device=DEV)
    orient = torch.from_numpy(rng.integers(0, 8, tuple(pm.shape))).to(DEV)  # the flip defence's orientations
    sweep = {"rs": {}, "mi": {}, "rs_orient": {}}
    for nw in (2, 4, 8):
        for blk in (512, 1024, 2048, 4096):
            sweep["rs"][f"{blk}x{nw}"] = bench(lambda: tk.rs_permute(x, pm, P, out=dst, block=blk, num_warps=nw))
            sweep["mi"][f"{blk}x{nw}"] = bench(lambda: tk.mi_mix(x, P, out=dst_mi, block=blk, num_warps=nw))
            sweep["rs_orient"][f"{blk}x{nw}"] = bench(
                lambda: tk.rs_permute(x, pm, P, out=dst, orient=orient, block=blk, num_warps=nw))
    best = {k: min(v, key=v.get) for k, v in sweep.items()}
    tk.RS_BLOCK, tk.RS_NUM_WARPS = map(int, best["rs"].split("x"))
    tk.MI_BLOCK, tk.MI_NUM_WARPS = map(int, best["mi"].split("x"))
    tk.RS_ORIENT_BLOCK, tk.RS_ORIENT_NUM_WARPS = map(int, best["rs_orient"].split("x"))
    R["launch_sweep"] = {"seconds": sweep, "best (output chunks per program x warps)": best}
    print("  launch sweep best:", best, flush=True)
    t_rs = bench(lambda: tk.rs_permute(x, pm, P, out=dst))
    t_inv = bench(lambda: tk.rs_unpermute(x, pm, P, out=dst))
    t_mi = bench(lambda: tk.mi_mix(x, P, out=dst_mi))
    t_orient = bench(lambda: tk.rs_permute(x, pm, P, out=dst, orient=orient))        # the flip defence
    t_orient_inv = bench(lambda: tk.rs_unpermute(x, pm, P, out=dst, orient=orient))
    b64 = min(64, B)  # the pipeline's default batch: short grids show launch and tail costs
    t64 = {"copy": bench(lambda: dst[:b64].copy_(x[:b64])),
           "rs": bench(lambda: tk.rs_permute(x[:b64], pm[:b64], P, out=dst[:b64])),
           "mi": bench(lambda: tk.mi_mix(x[:b64], P, out=dst_mi[:b64]))}
    R["fraction_of_copy_at_batch_64"] = {"rs": t64["copy"] / t64["rs"],
                                         "mi": t64["copy"] / t64["mi"] * 1.25 / 2}
    # and at batch 1024 (4x the default batch; 154 MB of 224x224 RGB): longer grids, the tail amortised
    b1k = 4 * B
    x1k = torch.randint(0, 256, (b1k, H, W, 3), dtype=torch.uint8, device=DEV)
    pm1k, d1k = perms_for(b1k, (H // P) * (W // P)).to(DEV), torch.empty_like(x1k)
    o1k = torch.from_numpy(rng.integers(0, 8, tuple(pm1k.shape))).to(DEV)
    m1k = torch.empty((b1k, H // 2, W // 2, 3), dtype=torch.uint8, device=DEV)
    t1k = {"copy": bench(lambda: d1k.copy_(x1k)), "rs": bench(lambda: tk.rs_permute(x1k, pm1k, P, out=d1k)),
           "rs_orient": bench(lambda: tk.rs_permute(x1k, pm1k, P, out=d1k, orient=o1k)),
           "mi": bench(lambda: tk.mi_mix(x1k, P, out=m1k))}
    R[f"fraction_of_copy_at_batch_{b1k}"] = {"rs": t1k["copy"] / t1k["rs"], "rs_orient": t1k["copy"] / t1k["rs_orient"],
                                             "mi": t1k["copy"] / t1k["mi"] * 1.25 / 2}
    print(f"  batch {b1k}: " + ", ".join(f"{k} {v:.2f} of copy" for k, v in R[f"fraction_of_copy_at_batch_{b1k}"].items()),
          flush=True)
    x1k = d1k = m1k = None  # the 1024 batch freed before the pipeline
    bw = {
        "copy": {"s": t_copy, "bytes": 2 * nbytes, "GBps": copy_bw / 1e9, "fraction": 1.0},
        "rs": {"s": t_rs, "bytes": 2 * nbytes, "GBps": 2 * nbytes / t_rs / 1e9, "fraction": 2 * nbytes / t_rs / copy_bw},
        "rs_inverse": {"s": t_inv, "bytes": 2 * nbytes, "GBps": 2 * nbytes / t_inv / 1e9,
                       "fraction": 2 * nbytes / t_inv / copy_bw},
        "mi": {"s": t_mi, "bytes": nbytes * 5 // 4, "GBps": nbytes * 1.25 / t_mi / 1e9,
               "fraction": nbytes * 1.25 / t_mi / copy_bw},
        "rs_orient": {"s": t_orient, "bytes": 2 * nbytes, "GBps": 2 * nbytes / t_orient / 1e9,
                      "fraction": 2 * nbytes / t_orient / copy_bw},
        "rs_orient_inverse": {"s": t_orient_inv, "bytes": 2 * nbytes, "GBps": 2 * nbytes / t_orient_inv / 1e9,
                              "fraction": 2 * nbytes / t_orient_inv / copy_bw},
    }
    R["bandwidth"] = bw
    # the flip defence's cost: plain RS time over RS-with-orientations time (1.0: free)
    R["orient_vs_rs"] = {"forward": t_rs / t_orient, "inverse": t_inv / t_orient_inv}
    for k, v in bw.items():
        print(f"  {k:17s} {v['s'] * 1e6:9.1f} us  {v['GBps']:8.1f} GB/s  {v['fraction']:.2f} of copy", flush=True)
    print(f"  orientations: {R['orient_vs_rs']['forward']:.2f} of the plain RS kernel's speed "
          f"({R['orient_vs_rs']['inverse']:.2f} for the inverse)", flush=True)

    # -- 3. against the research code's loop and plain torch ---------------------------------
    print("3. RS kernel against the per-image randperm loop and torch gathers", flush=True)
    n = (H // P) * (W // P)
    tokens = x.view(B, H // P, P, W // P, P, 3).permute(0, 1, 3, 2, 4, 5).reshape(B, n, P * P * 3).contiguous()


    def research_loop():  # the released code: one randperm and one gather per image, in Python
        out = torch.empty_like(tokens)
        for i in range(B):
            out[i] = tokens[i, torch.randperm(n, device=DEV)]
        return out


    rows = torch.arange(B, device=DEV)[:, None]
    t_loop = bench(research_loop, reps=25)
    t_gather = bench(lambda: tokens[rows, pm])
    t_ref = bench(lambda: ref.rs_permute(x, pm, P))
    keys = rng.integers(0, 2**63, (B, n))
    keys_dev = torch.from_numpy(keys).to(DEV)
    t_full = bench(lambda: tk.rs_permute(x, make_permutations(keys_dev), P))  # device argsort + kernel
    from himr_pipe.keys import permutation_keys

    t_shake = bench(lambda: tk.rs_permute(x, make_permutations(
        torch.from_numpy(permutation_keys("ab" * 32, 0, B, n)).to(DEV)), P), reps=25)
    R["vs_baselines"] = {
        "research_loop_s": t_loop, "torch_token_gather_s": t_gather, "torch_reference_on_device_s": t_ref,
        "triton_rs_s": t_rs, "triton_rs_with_device_argsort_s": t_full,
        "triton_rs_with_shake_keys_upload_and_argsort_s": t_shake,
        "speedup_vs_loop": t_loop / t_rs, "speedup_vs_loop_incl_perms": t_loop / t_full,
        "speedup_vs_loop_incl_shake_keys": t_loop / t_shake,
        "speedup_vs_token_gather": t_gather / t_rs, "speedup_vs_torch_reference": t_ref / t_rs,
    }
    for k, v in R["vs_baselines"].items():
        print(f"  {k:38s} {v:.6g}", flush=True)

    # -- 4. the pipeline on the device ---------------------------------------------------------
    print("4. encrypt-shards on", DEV, flush=True)
    from himr_pipe.decoders import TorchvisionDecoder  # noqa: E402
    from himr_pipe.encode import NvImageCodecEncoder, TorchvisionJpegEncoder, choose_format  # noqa: E402
    from himr_pipe.job import JobConfig, RunOptions  # noqa: E402
    from himr_pipe.pipeline import encrypt_shards  # noqa: E402
    from himr_pipe.scheme import Scheme  # noqa: E402
    from himr_pipe.shards import iter_samples  # noqa: E402

    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    sets = {"n": work / "set_n", "2n": work / "set_2n"}
    for tag, mult in (("n", 1), ("2n", 2)):
        gpu_codecs.build_image_set(sets[tag], args.n * mult, seed=100 * mult, workers=min(12, os.cpu_count() or 1))
    counts = {k: sum(1 for _ in v.glob("*/*.jpg")) for k, v in sets.items()}
    print(f"  image sets: {counts} (ImageNet-like sizes, hundreds of them, JPEG q90, from the bundled photos)",
          flush=True)

    has_nvimgcodec = True
    try:
        from nvidia import nvimgcodec  # noqa: F401
    except ImportError:
        has_nvimgcodec = False
    gpu_encoder = "nvimgcodec" if has_nvimgcodec else "torchvision"


    def run(src, scheme: str, fmt: str = "jpeg", encoder: str | None = None, seed: int = 1, workers: int = 0,
            decoder: str = "torchvision", out: Path | None = None):
        out = out or work / "out"
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(work / "state", ignore_errors=True)
        s = Scheme.named(scheme.split()[0], 16, 224, 224, flip=scheme.endswith("--flip"))  # "mi-shuffle --flip"
        enc = ("cpu" if fmt != "jpeg" else encoder or gpu_encoder) if DEV == "cuda" else "cpu"
        f = choose_format(fmt, s, 90, allow_420=enc != "torchvision")
        cfg = JobConfig(scheme=s, fmt=f, shard_size=500 if not workers else 250, seeded=True, decoder=decoder,
                        encoder=enc)
        opts = RunOptions(workers=workers, threads=8 if not workers else max(1, 16 // workers), batch_size=B,
                          state_dir=str(work / "state"), progress=False, device=DEV, audit_samples=0)
        sync()
        t = time.perf_counter()
        res = encrypt_shards(str(src), str(out), cfg, seed=seed, opts=opts)
        sync()
        dt = time.perf_counter() - t
        if res.exit_code != 0:
            raise SystemExit(f"encrypt-shards failed: {res.messages} {res.manifest['totals']}")
        LAST_RUN.update(state=str(work / "state"), out=str(out))
        stages = Counter()
        for st in (work / "state" / "shards").glob("*.json"):
            stages.update(json.loads(st.read_text()).get("seconds", {}))
        LAST_STAGES.clear()
        LAST_STAGES.update(stages)
        return dt, out


    LAST_STAGES: dict = {}
    LAST_RUN: dict = {}


    def load(out, ext):
        d = {}
        for tar in sorted(out.glob("*.tar")):
            for k, m in iter_samples(str(tar)):
                d[k] = np.asarray(Image.open(io.BytesIO(m[ext])).convert("RGB"))
        return d


    # correctness of the pipeline on the device (small set, lossless output)
    small = sets["n"]
    _, o = run(small, "none", "png")
    plain = load(o, "png")
    _, o = run(small, "rs", "png")
    enc_rs = load(o, "png")
    ok = plain.keys() == enc_rs.keys()
    for k in plain:
        pa = plain[k].reshape(14, 16, 14, 16, 3).transpose(0, 2, 1, 3, 4).reshape(196, -1)
        pb = enc_rs[k].reshape(14, 16, 14, 16, 3).transpose(0, 2, 1, 3, 4).reshape(196, -1)
        ok = ok and Counter(map(bytes, pa)) == Counter(map(bytes, pb)) and not np.array_equal(pa, pb)
    check("pipeline rs output is a patch permutation of none, per image", ok, f"({len(plain)} images)")
    _, o = run(small, "mi", "png")
    enc_mi = load(o, "png")
    ok = all(np.array_equal(enc_mi[k], ref.mi_mix(torch.from_numpy(plain[k][None].copy()), 16)[0].numpy())
             for k in plain)
    check("pipeline mi output equals the documented mean of sub-patches", ok)
    # mi-shuffle, the default: the owner's key (job key -> per-shard sort keys) undoes the shuffle exactly
    from himr_pipe.decrypt import open_owner, true_permutations  # noqa: E402

    _, o = run(small, "mi-shuffle", "png")
    view = open_owner(LAST_RUN["out"], LAST_RUN["state"])
    sch = Scheme.named("mi-shuffle", 16, 224, 224)
    ok, n_ms = True, 0
    for tar in sorted(o.glob("*.tar")):
        samples = list(iter_samples(str(tar)))
        perms = true_permutations(view, tar.name, [k for k, _ in samples])
        for k, m in samples:
            y = torch.from_numpy(np.asarray(Image.open(io.BytesIO(m["png"])).convert("RGB")).copy())[None]
            back = k_decrypt(sch, y, torch.from_numpy(perms[k])[None])[0].numpy()
            ok = ok and k in enc_mi and np.array_equal(back, enc_mi[k]) and not np.array_equal(y[0].numpy(), enc_mi[k])
            n_ms += 1
    check("pipeline mi-shuffle output decrypts with the owner's key to the mi output", ok and n_ms == len(plain),
          f"({n_ms} images)")
    encoders = ["torchvision"] + (["nvimgcodec"] if has_nvimgcodec else [])
    if DEV == "cpu":
        encoders = []
    for e in encoders:
        _, o = run(small, "none", "jpeg", encoder=e)
        jp = load(o, "jpg")
        psnr = min(10 * np.log10(255**2 / max(1e-9, ((plain[k].astype(float) - jp[k]) ** 2).mean())) for k in plain)
        check(f"GPU encoder {e}: bytes decode to the encoded image", psnr > 30, f"(min PSNR {psnr:.1f} dB)")

    # speed: marginal rates
    rates = {}
    # (4 worker processes on one GPU were measured once: slower, 1135/993 img/s for none/rs against
    #  1266/1421 in one process, with 4 CUDA contexts contending; see benchmarks/RESULTS.md)
    configs = [("none", None, 0, "torchvision"), ("rs", None, 0, "torchvision"), ("mi", None, 0, "torchvision"),
               ("mi-shuffle", None, 0, "torchvision"), ("mi-shuffle --flip", None, 0, "torchvision")]
    if has_nvimgcodec and DEV == "cuda":
        configs += [("rs", "torchvision", 0, "torchvision"), ("none", None, 0, "nvimgcodec"),
                    ("rs", None, 0, "nvimgcodec")]
    run(sets["n"], "rs")  # warm-up: Triton compilation, nvJPEG and codec handles
    for scheme, e, nwk, dec_name in configs:
        t_n, _ = run(sets["n"], scheme, encoder=e, workers=nwk, decoder=dec_name)
        t_2n, _ = run(sets["2n"], scheme, encoder=e, workers=nwk, decoder=dec_name)
        name = scheme + (f" ({e} encoder)" if e else "") + (f" ({nwk} worker processes)" if nwk else "") + (
            f" ({dec_name} decoder)" if dec_name != "torchvision" else "")
        rates[name] = {"t_n": t_n, "t_2n": t_2n, "marginal_img_s": (counts["2n"] - counts["n"]) / max(1e-9, t_2n - t_n),
                       "end_to_end_img_s_2n": counts["2n"] / t_2n,
                       "stage_seconds_2n": dict(LAST_STAGES)}
        print(f"  {name:26s} marginal {rates[name]['marginal_img_s']:8.0f} img/s  "
              f"(e2e {rates[name]['end_to_end_img_s_2n']:.0f})", flush=True)

    # the decode limit: the decoder + resize alone on the same files, bytes already in memory
    blobs = [p.read_bytes() for p in sorted(sets["2n"].glob("*/*.jpg"))]
    dec = TorchvisionDecoder((224, 224), "crop", B, DEV)
    batches = [blobs[i:i + B] for i in range(0, len(blobs), B)]
    list(dec.run(batches[:1]))
    sync()
    t = time.perf_counter()
    for _ in dec.run(batches):
        pass
    sync()
    decode_rate = len(blobs) / (time.perf_counter() - t)
    # the encoders alone on one batch of real photos
    enc_rates = {}
    if DEV == "cuda":
        fmt444 = choose_format("jpeg", Scheme("rs", 16, 224, 224), 90, allow_420=False)
        fmt420 = choose_format("jpeg", Scheme("rs", 16, 224, 224), 90)
        photo_batch = photos.to(DEV).repeat((B + len(photos) - 1) // len(photos), 1, 1, 1)[:B].contiguous()
        for name, enc in [("torchvision 4:4:4", TorchvisionJpegEncoder(fmt444))] + (
                [("nvimgcodec 4:2:0", NvImageCodecEncoder(fmt420, "cuda")),
                 ("nvimgcodec 4:4:4", NvImageCodecEncoder(fmt444, "cuda"))] if has_nvimgcodec else []):
            enc.encode(photo_batch)
            sync()
            t = time.perf_counter()
            for _ in range(5):
                enc.encode(photo_batch)
            sync()
            enc_rates[name] = 5 * B / (time.perf_counter() - t)
    R["pipeline"] = {"sets": counts, "decoder": "torchvision (nvJPEG)" if DEV == "cuda" else "torchvision (cpu)",
                     "encoder": gpu_encoder if DEV == "cuda" else "cpu", "batch": B, "rates": rates,
                     "decode_resize_only_img_s": decode_rate, "encoder_only_img_s": enc_rates,
                     "rs_over_none": rates["rs"]["marginal_img_s"] / rates["none"]["marginal_img_s"],
                     "rs_over_decode_limit": rates["rs"]["marginal_img_s"] / decode_rate}
    # -- 5. the codecs at their limit: every decoder and encoder configuration on the same files -------------
    if args.codecs > 0:
        files = sorted(sets["2n"].glob("*/*.jpg"))
        R["codecs"] = gpu_codecs.sweep(files, batches=(B,) if args.smoke else (64, 256), max_seconds=args.codecs,
                                       budget_s=0.15 if args.smoke else 2.0, device=DEV)
    # -- 6. many cores: the CPU path (torchvision's CPU decoder: no DALI here) at several worker counts -------
    if args.scaling:
        scaling = {}
        for nwk in [int(v) for v in args.scaling.split(",")]:
            times = []
            for tag in ("n", "2n"):
                out = work / "out"
                shutil.rmtree(out, ignore_errors=True)
                shutil.rmtree(work / "state", ignore_errors=True)
                s_ = Scheme.named("rs", 16, 224, 224)
                cfg = JobConfig(scheme=s_, fmt=choose_format("jpeg", s_, 90), shard_size=125, seeded=True,
                                decoder="torchvision")
                opts = RunOptions(workers=nwk, threads=1, batch_size=64, state_dir=str(work / "state"),
                                  progress=False, device="cpu", audit_samples=0)
                t = time.perf_counter()
                res = encrypt_shards(str(sets[tag]), str(out), cfg, seed=1, opts=opts)
                times.append(time.perf_counter() - t)
                if res.exit_code != 0:
                    raise SystemExit(f"encrypt-shards (cpu, {nwk} workers) failed: {res.messages}")
            scaling[nwk] = (counts["2n"] - counts["n"]) / max(1e-9, times[1] - times[0])
            print(f"  cpu rs, {nwk:2d} workers: {scaling[nwk]:7.0f} img/s marginal", flush=True)
        R["cpu_scaling"] = {"cores": os.cpu_count(), "decoder": "torchvision (cpu)", "marginal_img_s": scaling}
    # -- 7. training: does the loader feed a ViT-S step (bf16) faster than the step consumes? ---------------------
    # The loader alone (every batch of one epoch, decoded in its worker processes, or as JPEG bytes for one nvJPEG
    # call on the device) against the model's training step alone (forward, backward, AdamW; bf16 autocast) on
    # batches already on the device. Goal: loader >= 1.5x the step.
    print("7. the training loader against a ViT-S step", flush=True)
    from himr_pipe.train.models import build_model  # noqa: E402
    from himr_pipe.train.loader import decode_on_device, loader_workers, train_loader  # noqa: E402

    feed = {}
    lb = 32 if args.smoke else 256
    for scheme in ("rs", "mi-shuffle --flip"):
        out = work / ("train_" + scheme.split()[0])
        run(sets["2n"], scheme, out=out)
        m = json.loads((out / "manifest.json").read_text())
        nw = loader_workers(min(16, os.cpu_count() or 1), len(m["shards"]))
        rates_l = {}
        for mode in ("workers", "device"):
            raw = mode == "device"
            loader = train_loader(str(out), lb if not args.smoke else 4, epoch=0, workers=nw, raw=raw)
            n, t = 0, time.perf_counter()
            for xb, _ in loader:
                if raw:
                    xb = decode_on_device(xb, DEV)
                else:
                    xb = xb.to(DEV, non_blocking=True)
                n += len(xb)
            sync()
            rates_l[mode] = n / (time.perf_counter() - t)
        size = "small" if not args.smoke else "tiny"
        sch = Scheme.from_dict(m["job"]["scheme"])
        # the shards' own family at ViT-S (the builder timm's registered entries use)
        model = build_model(sch, num_classes=len(m["classes"]), size=size).to(DEV).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        hw = sch.out_size
        xb = torch.randn(lb, 3, *hw, device=DEV)
        yb = torch.randint(0, len(m["classes"]), (lb,), device=DEV)

        def step():
            with torch.autocast(DEV, dtype=torch.bfloat16, enabled=DEV == "cuda"):
                loss = torch.nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        t_step = bench(step, reps=25 if not args.smoke else 2)
        feed[scheme] = {"loader_img_s": rates_l, "loader_workers": nw, "step_img_s": lb / t_step, "batch": lb,
                        "model": type(model).__name__ + f" ({size})",
                        "loader_over_step": {k: v / (lb / t_step) for k, v in rates_l.items()}}
        print(f"  {scheme:18s} loader {rates_l['workers']:7.0f} img/s (workers), {rates_l['device']:7.0f} (device "
              f"decode); step {lb / t_step:7.0f} img/s; ratio {feed[scheme]['loader_over_step']['workers']:.2f} / "
              f"{feed[scheme]['loader_over_step']['device']:.2f}", flush=True)
        model = opt = None
    R["train_feed"] = feed
    shutil.rmtree(work, ignore_errors=True)

    (OUT / "gpu_check.json").write_text(json.dumps(R, indent=1))
    # -- table ----------------------------------------------------------------------------------
    print("\n== gpu_check summary:", R["device"], "==")
    print(f"checks: {sum(c['ok'] for c in R['checks'].values())}/{len(R['checks'])} passed")
    print(f"copy bandwidth (read+write)  {bw['copy']['GBps']:.0f} GB/s; launch shapes used {best}")
    for k in ("rs", "rs_inverse", "mi"):
        print(f"{k:11s} kernel          {bw[k]['GBps']:.0f} GB/s = {bw[k]['fraction']:.2f} of copy (goal >= 0.9)")
    for k in ("rs_orient", "rs_orient_inverse"):
        print(f"{k:17s} kernel    {bw[k]['GBps']:.0f} GB/s = {bw[k]['fraction']:.2f} of copy "
              f"(flip defence; {R['orient_vs_rs']['forward' if k == 'rs_orient' else 'inverse']:.2f} of plain RS)")
    vb = R["vs_baselines"]
    print(f"rs vs research randperm loop {vb['speedup_vs_loop']:.0f}x (with device argsort "
          f"{vb['speedup_vs_loop_incl_perms']:.0f}x, with host SHAKE keys too {vb['speedup_vs_loop_incl_shake_keys']:.0f}x;"
          f" goal >= 50x), vs token gather {vb['speedup_vs_token_gather']:.1f}x, "
          f"vs torch reference on device {vb['speedup_vs_torch_reference']:.1f}x")
    pl = R["pipeline"]
    for k, v in pl["rates"].items():
        print(f"encrypt-shards {k:26s} {v['marginal_img_s']:7.0f} img/s marginal")
    print(f"rs/none {pl['rs_over_none']:.2f} (goal >= 0.95); decoder+resize alone {pl['decode_resize_only_img_s']:.0f} img/s "
          f"-> rs at {pl['rs_over_decode_limit']:.2f} of the decode limit")
    for k, v in pl["encoder_only_img_s"].items():
        print(f"encoder alone {k:20s} {v:7.0f} img/s")
    lim = min([pl["decode_resize_only_img_s"], *pl["encoder_only_img_s"].values()])
    print(f"rs end to end at {pl['rates']['rs']['marginal_img_s'] / lim:.2f} of min(decoder, encoder) alone "
          f"(goal >= 0.9, and >= 5000 img/s)")
    for stage, v in R.get("codecs", {}).get("stages", {}).items():
        w = v.get("winner")
        if w:
            print(f"fastest {stage:6s}: {w['name']} {w['config']} {w['img_s']:.0f} img/s")
    if "cpu_scaling" in R:
        print("cpu scaling (rs, marginal img/s by workers):", {k: round(v) for k, v in R["cpu_scaling"]["marginal_img_s"].items()})
    failed = [k for k, c in R["checks"].items() if not c["ok"]]
    if failed:
        print("FAILED CHECKS:", failed)
        sys.exit(1)


if __name__ == "__main__":
    main()
