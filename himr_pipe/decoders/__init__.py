"""Decode and resize encoded images, one bad sample skipping only itself: three decoders, one interface.

- DALI (:class:`DaliDecoder`, :mod:`.dali`), the default: ``--decoder auto`` resolves to it, as DALI is a
  dependency. On a GPU it decodes and resizes; on the CPU it decodes and :mod:`himr_pipe.resize` resizes;
- torchvision (:class:`TorchvisionDecoder`, :mod:`.tv`): nvJPEG's batched ``decode_jpeg``, then
  :mod:`himr_pipe.resize`; ``auto`` falls back to it where neither DALI nor nvImageCodec is installed;
- nvImageCodec (:class:`NvImageCodecDecoder`, :mod:`.nvimgcodec`): nvImageCodec's batched decode, then
  :mod:`himr_pipe.resize`; ``auto`` picks it where DALI is not installed and nvImageCodec is.

Before any decoder, :func:`inspect_header` checks each image from its header alone, and :func:`check_data` its
coded data (a corrupt JPEG or PNG is skipped with a reason; :func:`screen` is both); the worker ends a batch before
its decoded pixels pass :data:`BATCH_PIXELS`. Every decoder's ``run``
takes :class:`DecodeBatch` es (their windows: VIEW_FIELDS, (n, 5), for ``--views``; LETTERBOX_FIELDS, (n, 7),
for resize "letterbox") and yields (batch, images, failures). :func:`resolve_decoder` and
:func:`make_decoder` (:mod:`.choose`) choose and build the decode stage by name. The shared parts live in
:mod:`.common`. DALI, torchvision and nvImageCodec are imported when a decoder first needs them, not with this
package. The decoders differ in their pixels, so the resolved decoder is part of the job record.
"""

from .choose import DECODERS, make_decoder, resolve_decoder
from .common import (BATCH_PIXELS, DALI_FORMATS, DECODE_ERROR, DEFAULT_MAX_PIXELS, LETTERBOX_FIELDS, RESIZE_MODES,
                     VIEW_FIELDS, DecodeBatch, DecodeFailed, Header, check_data, inspect_header, screen)
from .dali import DaliDecoder
from .nvimgcodec import NvImageCodecDecoder
from .tv import TorchvisionDecoder

__all__ = [
    "BATCH_PIXELS", "DALI_FORMATS", "DECODERS", "DECODE_ERROR", "DEFAULT_MAX_PIXELS", "LETTERBOX_FIELDS", "RESIZE_MODES",
    "VIEW_FIELDS",
    "DaliDecoder", "DecodeBatch", "DecodeFailed", "Header", "NvImageCodecDecoder", "TorchvisionDecoder",
    "check_data", "inspect_header", "make_decoder", "resolve_decoder", "screen",
]
