"""Decode and resize encoded images, one bad sample skipping only itself: three decoders, one interface.

- DALI (:class:`DaliDecoder`, :mod:`.dali`), the default: ``--decoder auto`` resolves to it, as DALI is a
  dependency. On a GPU it decodes and resizes; on the CPU it decodes and :mod:`himr_pipe.resize` resizes;
- torchvision (:class:`TorchvisionDecoder`, :mod:`.tv`): nvJPEG's batched ``decode_jpeg``, then
  :mod:`himr_pipe.resize`; ``auto`` falls back to it where neither DALI nor nvImageCodec is installed;
- nvImageCodec (:class:`NvImageCodecDecoder`, :mod:`.nvimgcodec`): nvImageCodec's batched decode, then
  :mod:`himr_pipe.resize`; ``auto`` picks it where DALI is not installed and nvImageCodec is.

Before any decoder, :func:`inspect_header` checks each image from its header alone. Every decoder's ``run``
takes :class:`DecodeBatch` es (their windows: VIEW_FIELDS, (n, 5), for ``--views``; LETTERBOX_FIELDS, (n, 7),
for resize "letterbox") and yields (batch, images, failures). :func:`resolve_decoder` and
:func:`make_decoder` (:mod:`.choose`) choose and build the decode stage by name. The shared parts live in
:mod:`.common`. DALI, torchvision and nvImageCodec are imported when a decoder first needs them, not with this
package. The decoders differ in their pixels, so the resolved decoder is part of the job record.
"""

from .choose import DECODERS, make_decoder, resolve_decoder
from .common import (DALI_FORMATS, DECODE_ERROR, DEFAULT_MAX_PIXELS, LETTERBOX_FIELDS, RESIZE_MODES, VIEW_FIELDS,
                     DecodeBatch, DecodeFailed, Header, inspect_header)
from .dali import DaliDecoder
from .nvimgcodec import NvImageCodecDecoder
from .tv import TorchvisionDecoder

__all__ = [
    "DALI_FORMATS", "DECODERS", "DECODE_ERROR", "DEFAULT_MAX_PIXELS", "LETTERBOX_FIELDS", "RESIZE_MODES", "VIEW_FIELDS",
    "DaliDecoder", "DecodeBatch", "DecodeFailed", "Header", "NvImageCodecDecoder", "TorchvisionDecoder",
    "inspect_header", "make_decoder", "resolve_decoder",
]
