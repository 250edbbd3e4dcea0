"""A small ImageNet-style folder cut from the real photos scikit-image ships.

No download: ``skimage.data`` carries these photos inside its wheel. Each
class is one photo; its images are random crops (scale, position, flip,
landscape or portrait) resized to about 500x375 and saved as JPEG q90, like
a typical ImageNet file. Deterministic for a given seed.

Also here: a COCO-format detection sample (shapes drawn on crops of the same
photos, :func:`make_detection_sample`) and a structured classification proxy
(:func:`make_shapes_classification`: one large photo-textured shape per
image, for measuring what the privacy defences cost where patches carry
texture and edges, not only seams).
"""

from .detection import (DETECTION_CATEGORIES, SHAPE_COLOURS, make_detection_sample, make_rect_detection, mask_box,
                        mask_to_rle, render_shape)
from .photos import PHOTOS, imagenet_like_size, load_photos, make_sample_folder, random_view
from .shapes import (PUBLIC_CLASSES, PUBLIC_PHOTOS, SHAPE_CLASSES, TEXTURE_PHOTOS, load_public_textures, load_textures,
                     make_public_classification, make_shapes_classification, public_outline, shapes_image)

__all__ = ["DETECTION_CATEGORIES", "PHOTOS", "PUBLIC_CLASSES", "PUBLIC_PHOTOS", "SHAPE_CLASSES", "SHAPE_COLOURS",
           "TEXTURE_PHOTOS", "imagenet_like_size", "load_photos", "load_public_textures", "load_textures",
           "make_detection_sample", "make_public_classification", "make_rect_detection", "make_sample_folder",
           "make_shapes_classification", "mask_box", "mask_to_rle", "public_outline", "random_view", "render_shape",
           "shapes_image"]
