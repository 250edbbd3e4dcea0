"""sample-data: the bundled samples."""

from __future__ import annotations

import os

import click

from .base import fail_usage, main


@main.command("sample-data")
@click.argument("dest", type=click.Path(file_okay=False))
@click.option("--task", type=click.Choice(["classification", "detection", "shapes"]), default="classification",
              show_default=True, help="classification: an ImageNet-style class-per-folder tree; detection: a "
                                      "COCO-format set (train2017/, val2017/, annotations/instances_*.json); shapes: "
                                      "the structured accuracy proxy (one large photo-textured shape per image, "
                                      "classes bar, disc, square, triangle), DEST/train and DEST/val as "
                                      "ImageNet-style folders.")
@click.option("--per-class", type=int, default=8, show_default=True,
              help="Images per class (classification; shapes: train images per class, and a quarter as many, "
                   "at least 2, for val).")
@click.option("--size", type=int, default=128, show_default=True, help="Image side in pixels (shapes).")
@click.option("--kind", type=click.Choice(["shapes", "rects"]), default="shapes", show_default=True,
              help="Detection: shapes (four kinds of shape drawn on the bundled photos, JPEG) or rects (red and "
                   "green rectangles on dark noise, PNG: the set a small detector learns to find within minutes "
                   "on a CPU; the README's detection path).")
@click.option("--train-images", type=int, default=24, show_default=True, help="Train images (detection).")
@click.option("--val-images", type=int, default=8, show_default=True, help="Val images (detection).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.pass_context
def sample_data_cmd(ctx, dest, task, per_class, size, kind, train_images, val_images, seed):
    """Write a small sample dataset cut from scikit-image's bundled photos (no download): an ImageNet-style
    folder, with --task detection a COCO-format detection set of coloured shapes drawn on them, or with
    --task shapes the structured accuracy proxy (train/ and val/ folders)."""
    from click.core import ParameterSource

    from ..sample_data import make_detection_sample, make_rect_detection, make_sample_folder, make_shapes_classification

    def given(name):
        return ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)

    if task != "detection" and (given("train_images") or given("val_images") or given("kind")):
        fail_usage("--kind/--train-images/--val-images are for --task detection")
    if task != "shapes" and given("size"):
        fail_usage("--size is for --task shapes")
    if task == "shapes" and (per_class < 1 or size < 16):
        fail_usage("--per-class must be at least 1 and --size at least 16")
    if task == "detection" and given("per_class"):
        fail_usage("--per-class is for --task classification")
    if task == "detection" and (train_images < 1 or val_images < 0):
        fail_usage("--train-images must be at least 1 and --val-images at least 0")
    if os.path.exists(dest) and os.listdir(dest):
        fail_usage(f"{dest} exists and is not empty; choose a new folder")
    if task == "detection" and kind == "rects":
        # distinct draws for the two splits (as --task shapes)
        make_rect_detection(dest, train_images, [seed, 0], "train2017")
        make_rect_detection(dest, val_images, [seed, 1], "val2017")
        click.echo(f"himr-pipe: wrote {train_images + val_images} PNGs ({train_images} train, {val_images} val) "
                   f"of red and green rectangles (COCO detection) to {dest}")
        return
    if task == "detection":
        r = make_detection_sample(dest, train_images=train_images, val_images=val_images, seed=seed)
        click.echo(f"himr-pipe: wrote {r['images']} JPEGs ({r['train_images']} train, {r['val_images']} val) "
                   f"with {r['annotations']} boxes in {r['categories']} categories (COCO detection) to {dest}")
        return
    if task == "shapes":
        # distinct draws for the two splits: the train and val images never repeat each other
        tr = make_shapes_classification(os.path.join(dest, "train"), per_class=per_class, size=size, seed=[seed, 0])
        va = make_shapes_classification(os.path.join(dest, "val"), per_class=max(2, per_class // 4), size=size,
                                        seed=[seed, 1])
        click.echo(f"himr-pipe: wrote {tr['images']} train and {va['images']} val JPEGs ({size}x{size}) of "
                   f"{tr['classes']} shape classes to {dest}/train and {dest}/val")
        return
    r = make_sample_folder(dest, per_class=per_class, seed=seed)
    click.echo(f"himr-pipe: wrote {r['images']} JPEGs in {r['classes']} classes to {dest}")
