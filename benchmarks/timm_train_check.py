"""timm's own train.py on himr-pipe shards, end to end (issue 19): not a test, because train.py does not ship
in timm's wheel (pass the script of a pytorch-image-models checkout; the suite runs a stand-in of the same timm
calls, tests/test_user_path.py).

For each classification scheme of the check it encrypts the bundled sample, runs
``himr-pipe timm-train TRAIN_PY --data-dir OUT --device cpu --epochs E ...`` in its own process (the command a
user runs, with the flags the wrapper adds), and checks that train.py exits 0, created the model OUT's manifest
names, saw the stored input size with crop_pct 1.0, trained on --no-aug, and wrote its summary. It prints one
JSON record per scheme and writes them to --json.

    python benchmarks/timm_train_check.py --train-py pytorch-image-models/train.py
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCHEMES = {"mi-shuffle-flip (default)": [], "rs": ["--scheme", "rs"], "mi": ["--scheme", "mi"],
           "none": ["--scheme", "none"]}


def run(cmd, **kw):
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train-py", required=True, help="timm's train.py (a pytorch-image-models checkout)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--per-class", type=int, default=8, help="sample photos per class (6 classes)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="himr-timm-"))
    him = [sys.executable, "-m", "himr_pipe.cli"]
    assert run([*him, "sample-data", work / "src", "--per-class", a.per_class]).returncode == 0
    rows, ok = [], True
    for name, args in SCHEMES.items():
        out = work / re.sub(r"\W+", "-", name)
        r = run([*him, "encrypt-shards", work / "src", out, "--shard-size", "16", "--no-audit", "--no-progress",
                 "--state-dir", f"{out}.state", *args])
        assert r.returncode == 0, r.stderr
        m = json.loads((out / "manifest.json").read_text())
        t0 = time.time()
        r = run([*him, "timm-train", a.train_py, "--data-dir", out, "--device", "cpu", "--epochs", a.epochs,
                 "--batch-size", "16", "--workers", "1", "--warmup-epochs", "0", "--output", out / "run",
                 "--log-interval", "1"], env={**os.environ, "PYTHONWARNINGS": "ignore"})
        log = r.stdout + r.stderr
        summary = next((out / "run").rglob("summary.csv"), None)
        losses = [float(x["train_loss"]) for x in csv.DictReader(summary.open())] if summary else []
        created = re.search(r"Model (\S+) created", log)
        size = re.search(r"input_size: \((\d+), (\d+), (\d+)\)", log)
        crop = re.search(r"crop_pct: ([\d.]+)", log)
        row = {"scheme": name, "rc": r.returncode, "seconds": round(time.time() - t0, 1),
               "model": created.group(1) if created else None,
               "manifest_model": m["model"]["timm"][0],
               "input_size": [int(g) for g in size.groups()] if size else None,
               "stored_size": m["model"]["input_size"], "crop_pct": float(crop.group(1)) if crop else None,
               "no_aug": "--no-aug" in log, "train_loss": losses,
               "added": next((ln.split("shards: ", 1)[1] for ln in log.splitlines()
                              if "for himr-pipe shards:" in ln), None)}
        row["ok"] = (r.returncode == 0 and row["model"] == row["manifest_model"] and row["input_size"] ==
                     row["stored_size"] and row["crop_pct"] == 1.0 and row["no_aug"] and len(losses) == a.epochs)
        if not row["ok"]:
            row["log_tail"] = log[-3000:]
        ok &= row["ok"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps({"train_py": a.train_py, "rows": rows}, indent=1))
    print("timm train.py check:", "OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
