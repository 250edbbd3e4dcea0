"""The study's output: the table, its notes, the markdown report, report.json and the grid of stored samples."""

from __future__ import annotations

import json
from pathlib import Path

from .settings import default_setting


def duration(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min"


def row_line(row: dict) -> str:
    accs = ", ".join(f"{r['val_top1']:.3f}" for r in row["runs"])
    lk = row.get("leak")
    leak_s = ("not encrypted" if lk is None else "not measured (the attack failed)" if "error" in lk else
              f"neighbour {lk['mean']['neighbour_accuracy']:.3f}{_pose_free(lk['mean'])}, "
              f"direct {lk['mean']['direct_accuracy']:.3f}")
    return f"{row['label']}: top-1 {accs} (mean {row['top1_mean']:.3f}); leak {leak_s}"


def _leak_cell(r: dict) -> str:
    if r["status"] != "ok":
        return "-"
    if r.get("leak") is None:
        return "plain (not encrypted)"
    if "error" in r["leak"]:
        return "attack failed"
    m = r["leak"]["mean"]
    return f"{m['neighbour_accuracy']:.3f}{_pose_free(m)} / {m['direct_accuracy']:.3f}"


def _pose_free(mean: dict) -> str:
    """The pose-free neighbour figure, where the audit measured one apart from the frame's (shuffled schemes)."""
    return f" (pose-free {mean['pose_free_neighbour']:.3f})" if "pose_free_neighbour" in mean else ""


def _top1_cell(r: dict) -> str:
    if r["status"] == "n/a":
        return "n/a"
    if r["status"] != "ok":
        return "error"
    s = f"{r['top1_mean']:.3f}"
    if r["top1_std"] is not None:
        s += f" ± {r['top1_std']:.3f} ({len(r['runs'])} seeds)"
    return s


def table_rows(res: dict) -> list[list[str]]:
    head = ["setting", "leak neighbour / direct", "meets budget", "top-1", "cost vs none"]
    lines = [head]
    for r in res["rows"]:
        lk = r.get("leak")
        budget = ("-" if r["status"] != "ok" else "no (plain)" if lk is None else "unknown" if "error" in lk
                  else "yes" if lk["meets_budget"] else "no")
        # the plain baseline (not encrypted, so no leak figures) is what the cost is measured against
        cost = f"{r['cost_vs_none']:+.3f}" if "cost_vs_none" in r and lk is not None else "-"
        lines.append([r["label"] + (f" ({r['setting']})" if r.get("setting") else ""), _leak_cell(r), budget,
                      _top1_cell(r), cost])
    return lines


def notes(res: dict) -> list[str]:
    attacks: dict[str, list[str]] = {}
    for r in res["rows"]:
        if r["status"] == "ok" and r.get("leak") and "attack" in r["leak"]:
            attacks.setdefault(r["leak"]["attack"], []).append(r["label"])
    out = [f"{res['counts']['train']} train / {res['counts']['val']} val images, {res['counts']['classes']} classes, "
           f"{res['size'][0]}x{res['size'][1]}, {res['format']['name']}"
           + (f" q{res['format']['quality']}" if res["format"]["quality"] else "") + f", on {res['device']}; "
           f"top-1 95% half-width on this sample <= {res['half_width']:.3f} (differences below about "
           f"{1.4 * res['half_width']:.3f} are noise); spread: standard deviation over training seeds",
           f"model: {res['recipe_text']}",
           f"leak: the audit's attack on {res['rule']['audit_samples']} validation images of each setting; "
           "lower bounds: a stronger attack may recover more"]
    out += [f"attack on {', '.join(labels)}: {name}" for name, labels in attacks.items()]
    out.append(f"the product's default (encrypt-shards without --scheme / --gap / --flip): {default_setting()}")
    for r in res["rows"]:
        if r["status"] == "n/a":
            out.append(f"n/a: {r['label']}: {r['reason']}")
        elif r["status"] == "error":
            out.append(f"error: {r['label']}: {r['error']}")
        elif r.get("leak") and "error" in r["leak"]:
            out.append(f"attack failed: {r['label']}: {r['leak']['error']} (so it is not recommended)")
        elif r.get("leak") and not r["leak"]["meets_budget"]:
            out.append(f"over budget: {r['label']}: " + "; ".join(r["leak"]["over_budget"]))
    return out


def format_table(res: dict) -> str:
    """The table as aligned text, with its notes and the recommendation."""
    lines = table_rows(res)
    w = [max(len(l[i]) for l in lines) for i in range(len(lines[0]))]
    fmt = lambda l: " | ".join(c.ljust(w[i]) for i, c in enumerate(l))  # noqa: E731
    rec = res["recommendation"]
    return "\n".join([fmt(lines[0]), "-+-".join("-" * x for x in w)] + [fmt(l) for l in lines[1:]] + [""]
                     + notes(res) + ["", "recommendation: " + rec["why"]])


def markdown(res: dict) -> str:
    lines = table_rows(res)
    out = [f"# Privacy/accuracy trade-off on a sample of {res['src']}", "",
           "| " + " | ".join(lines[0]) + " |", "|" + "---|" * len(lines[0])]
    out += ["| " + " | ".join(l) + " |" for l in lines[1:]]
    out += [""] + [f"- {n}" for n in notes(res)]
    out += ["", f"**Recommendation:** {res['recommendation']['why']}.", "",
            f"grid.png: one validation sample per setting, as stored (MI images are half size), each enlarged by a "
            f"whole factor to at least {GRID_MIN_SIDE} px a side (the factor beside it).", ""]
    return "\n".join(out)


def write_report(res: dict, dest: Path, outs: dict) -> None:
    """report.json (every figure), report.md (the table) and grid.png (one stored sample per setting)."""
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "report.json").write_text(json.dumps(res, indent=1))
    (dest / "report.md").write_text(markdown(res))
    _grid(res, outs, dest / "grid.png")


GRID_MIN_SIDE = 128   # every stored sample is shown at least this large a side (enlarged by a whole factor)


def _grid(res: dict, outs: dict, path: Path) -> None:
    """One stored validation sample per setting, a row each: its label, the setting and its stored size on the
    left, the sample enlarged (nearest neighbour, a whole factor) to at least :data:`GRID_MIN_SIDE` a side."""
    from PIL import Image, ImageDraw, ImageFont

    from ..shards import decode_image, iter_shard

    panels = []
    for r in res["rows"]:
        if r["label"] not in outs:
            continue
        val = outs[r["label"]][1]
        m = json.loads((val / "manifest.json").read_text())
        ext = m["job"]["format"]["ext"]
        _, mem = next(iter(iter_shard(str(val), m["shards"][0]["name"])))
        img = Image.fromarray(decode_image(mem[ext], ext))
        k = max(1, -(-GRID_MIN_SIDE // min(img.size)))
        text = [r["label"], r.get("setting", ""),
                f"stored {img.height}x{img.width}" + (f", shown x{k}" if k > 1 else "")]
        panels.append((text, img.resize((img.width * k, img.height * k), Image.NEAREST)))
    if not panels:
        return
    try:
        font = ImageFont.load_default(size=16)
    except TypeError:  # Pillow before 10.1: the small bitmap font
        font = ImageFont.load_default()
    label_w, pad = 240, 8
    h = max(p.height for _, p in panels)
    w = max(p.width for _, p in panels)
    canvas = Image.new("RGB", (label_w + w + pad, len(panels) * (h + pad) + pad), "white")
    d = ImageDraw.Draw(canvas)
    for i, (text, p) in enumerate(panels):
        y = pad + i * (h + pad)
        for j, t in enumerate(text):
            d.text((pad, y + 4 + 22 * j), t, fill="black", font=font)
        canvas.paste(p, (label_w, y))
    canvas.save(path)
