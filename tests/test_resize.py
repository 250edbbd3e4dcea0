"""The one resizer of the CPU decoders: plans per mode, pixels against a float reference, threads."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from himr_pipe.resize import Plan, Resizer, plan, resize_into


def photo(h: int, w: int) -> torch.Tensor:
    """A real photo (scikit-image's) resized to h x w, HWC uint8."""
    import skimage.data

    from PIL import Image

    return torch.from_numpy(np.asarray(Image.fromarray(skimage.data.astronaut()).resize((w, h))).copy())


def reference(img: torch.Tensor, p: Plan, size) -> torch.Tensor:
    """The plan carried out in float (the CUDA path's arithmetic), as a separate reference."""
    x = img[p.y0:p.y0 + p.ch, p.x0:p.x0 + p.cw].permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=(p.rh, p.rw), mode="bilinear", antialias=True, align_corners=False)
    x = x.round().clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0)
    if p.flip:
        x = x.flip(1)
    out = torch.zeros((*size, 3), dtype=torch.uint8)
    out[:p.rh, :p.rw] = x
    return out


def test_crop_plans_the_centred_window_of_the_outputs_aspect():
    assert plan("crop", 375, 500, (224, 224)) == Plan(0, 62, 375, 375, 224, 224)
    assert plan("crop", 500, 375, (224, 224)) == Plan(62, 0, 375, 375, 224, 224)
    assert plan("crop", 100, 400, (64, 128)) == Plan(0, 100, 100, 200, 64, 128)
    assert plan("stretch", 375, 500, (224, 224)) == Plan(0, 0, 375, 500, 224, 224)
    # letterbox rows are pixels of the stored image (boxes.Frame.decoder_row); views are relative windows
    assert plan("letterbox", 300, 400, (512, 512), [10, 20, 380, 270, 512, 364, 1.0]) == \
        Plan(20, 10, 270, 380, 364, 512, True)
    assert plan("crop", 300, 400, (64, 64), [0.25, 0.5, 0.5, 0.25, 0.2], views=True) == \
        Plan(150, 100, 75, 200, 64, 64, False)


@pytest.mark.parametrize("mode,size,row,views", [
    ("crop", (224, 224), None, False),
    ("stretch", (96, 160), None, False),
    ("crop", (64, 64), [0.1, 0.2, 0.6, 0.5, 0.9], True),
    ("letterbox", (256, 256), [5, 7, 300, 200, 256, 171, 0.7], False),
    ("letterbox", (256, 256), [0, 0, 120, 90, 240, 180, 0.0], False),  # an upscale
])
def test_resize_into_matches_the_float_reference(mode, size, row, views):
    img = photo(333, 517)
    p = plan(mode, 333, 517, size, row, views)
    out = torch.full((*size, 3), 77, dtype=torch.uint8)  # garbage left by an earlier batch: must be overwritten
    resize_into(img, p, out)
    ref = reference(img, p, size)
    diff = (out.int() - ref.int()).abs()
    assert diff.max() <= 1, diff.max()  # torch's uint8 kernel rounds in fixed point: off by one at most
    if mode == "letterbox":
        assert not out[p.rh:].any() and not out[:, p.rw:].any()  # the padding is black


def test_resizer_threads_give_the_same_batch_as_one_thread_and_skip_failed_images():
    sizes = [(333, 517), (500, 375), (224, 224), (640, 333), (401, 402)]
    images = [photo(h, w) for h, w in sizes]
    images.insert(2, None)  # a failed decode: left out, order kept
    serial = Resizer((224, 224), "crop", False, 1).run(list(images), None, torch.empty((6, 224, 224, 3), dtype=torch.uint8))
    threaded = Resizer((224, 224), "crop", False, 2).run(list(images), None,
                                                          torch.empty((6, 224, 224, 3), dtype=torch.uint8))
    assert serial.shape == (5, 224, 224, 3) and torch.equal(serial, threaded)
    one = torch.empty((224, 224, 3), dtype=torch.uint8)
    resize_into(images[3], plan("crop", 224, 224, (224, 224)), one)
    assert torch.equal(one, images[3]) and torch.equal(serial[2], one)  # same size: the pixels as they are


def test_16_bit_images_are_taken_as_decoded():
    img = photo(120, 90)
    out = Resizer((64, 64), "stretch", False, 1).run([img, (img.to(torch.int32) * 257).to(torch.uint16)], None,
                                                     torch.empty((2, 64, 64, 3), dtype=torch.uint8))
    assert torch.equal(out[0], out[1])


def test_both_cpu_decoders_decode_the_sample_photos_alike(sample_src):
    """DALI (CPU) and torchvision decode with libjpeg-turbo and resize with this module: the same pictures."""
    from himr_pipe.decoders import DaliDecoder, DecodeBatch, TorchvisionDecoder

    blobs = [f.read_bytes() for f in sorted(sample_src.glob("*/*.jpg"))[:6]]
    (_, a, bad_a), = DaliDecoder((224, 224), "crop", 8, 2, None).run([DecodeBatch(blobs)])
    (_, b, bad_b), = TorchvisionDecoder((224, 224), "crop", 8, "cpu").run([DecodeBatch(blobs)])
    assert not bad_a and not bad_b and a.shape == b.shape == (6, 224, 224, 3)
    assert (a.float() - b.float()).abs().mean() < 1.0
