"""PEViT / MI-ViT / plain ViT (himr_pipe.train.models): the properties the method rests on.

* PEViT's logits do not depend on the order of the patches (RS), with and
  without RPE; a ViT with learned position embedding's do.
* MI patch embedding: conv on the float MI image == the research code's conv
  on the plain image followed by 2x2 average pooling.
* timm registry names, build_model from a Scheme, check_model_matches.

Tiny configs on real photo content (scikit-image's astronaut), CPU only.
"""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from skimage import data as skdata

from himr_pipe.kernels import mi_mix, rs_permute
from himr_pipe.scheme import Scheme
from himr_pipe.train.models import (MIPatchEmbed, MIViT, PEViT, RPEPatchEmbed, build_model, check_model_matches,
                                    model_scheme)

TINY = dict(embed_dim=32, depth=2, num_heads=2)


def photo(size: int, n: int = 1) -> torch.Tensor:
    """uint8 NHWC crops of a real photo, resized to size x size."""
    img = skdata.astronaut()
    crops = [img[:400, :400], img[100:500, 50:450], img[112:, 112:]][:n]
    return torch.from_numpy(np.stack([np.asarray(Image.fromarray(c).resize((size, size), Image.BILINEAR))
                                      for c in crops]))


def to_input(x: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> normalised float NCHW."""
    x = x.permute(0, 3, 1, 2).float() / 255
    return (x - 0.5) / 0.25


def shuffled(x: torch.Tensor, patch: int, seed: int = 0) -> torch.Tensor:
    b, h, w, _ = x.shape
    g = torch.Generator().manual_seed(seed)
    perms = torch.stack([torch.randperm((h // patch) * (w // patch), generator=g) for _ in range(b)])
    return rs_permute(x, perms, patch)


def pooled(model, x8: torch.Tensor) -> torch.Tensor:
    """The normalised class token the head reads (unit scale, unlike the freshly initialised logits)."""
    with torch.no_grad():
        return model.forward_head(model.forward_features(to_input(x8)), pre_logits=True)


# ---------------------------------------------------------------- order invariance
@pytest.mark.parametrize("rpe", [True, False])
def test_pevit_is_invariant_to_patch_order(rpe):
    torch.manual_seed(0)
    s = Scheme("rs", patch=8, height=32, width=32)
    model = build_model(s, 5, rpe=rpe, **TINY).eval()
    assert isinstance(model, PEViT) and model.pos_embed is None
    assert isinstance(model.patch_embed, RPEPatchEmbed) is rpe
    x = photo(32, n=2)
    xs = shuffled(x, 8)
    assert not torch.equal(x, xs)
    with torch.no_grad():
        a, b = model(to_input(x)), model(to_input(xs))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pooled(model, x), pooled(model, xs), atol=1e-5, rtol=1e-5)
    # not trivially so: the two photos get different logits
    assert (a[0] - a[1]).abs().max() > 1e-3


@pytest.mark.parametrize("rpe", [True, False])
def test_mi_shuffle_model_is_invariant_to_cell_order(rpe):
    """mi-shuffle's MI-ViT has no positions: its logits do not depend on the order of the MI cells."""
    from himr_pipe.train.models import RPEMIPatchEmbed

    torch.manual_seed(0)
    s = Scheme.named("mi-shuffle", patch=8, height=32, width=32)
    model = build_model(s, 5, rpe=rpe, **TINY).eval()
    assert isinstance(model, MIViT) and model.pos_embed is None and model.shuffled
    assert isinstance(model.patch_embed, RPEMIPatchEmbed) is rpe
    m = mi_mix(photo(32, n=2), 8)  # 16x16 MI images, cells of 4
    ms = shuffled(m, 4)
    assert not torch.equal(m, ms)
    with torch.no_grad():
        a, b = model(to_input(m)), model(to_input(ms))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert (a[0] - a[1]).abs().max() > 1e-3
    assert model_scheme(model) == Scheme.named("mi-shuffle", 8, 32, 32)
    check_model_matches(model, s)
    # an MI-ViT with positions is refused for shuffled cells, and the other way round
    with pytest.raises(ValueError, match="shuffled per image"):
        check_model_matches(build_model(Scheme("mi", 8, 32, 32), 5, **TINY), s)
    with pytest.raises(ValueError, match="keep MI's cell positions"):
        check_model_matches(model, Scheme("mi", 8, 32, 32))


def test_plain_vit_depends_on_patch_order():
    torch.manual_seed(0)
    model = build_model(Scheme("none", patch=8, height=32, width=32), 5, **TINY).eval()
    assert model.pos_embed is not None
    x = photo(32, n=2)
    with torch.no_grad():
        a, b = model(to_input(x)), model(to_input(shuffled(x, 8)))
    assert not torch.allclose(a, b, atol=1e-5)
    # even at init (pos_embed std .02, tiny head) the pooled features move far beyond float rounding
    fa, fb = pooled(model, x), pooled(model, shuffled(x, 8))
    assert (fa - fb).abs().max() > 1e-3


def test_rpe_is_t_plus_g_of_t_minus_r():
    torch.manual_seed(0)
    pe = RPEPatchEmbed(img_size=32, patch_size=8, in_chans=3, embed_dim=16)
    x = to_input(photo(32))
    t = pe.proj(x).flatten(2).transpose(1, 2)
    g = torch.sigmoid(pe.rpe_mlp[2](torch.relu(pe.rpe_mlp[0](t - pe.ref))))
    torch.testing.assert_close(pe(x), t + g)


def test_patch_dropout_still_usable():
    torch.manual_seed(0)
    model = build_model(Scheme("rs", patch=8, height=32, width=32), 5, patch_drop_rate=0.5, drop_path_rate=0.1,
                        **TINY).train()
    out = model(to_input(photo(32, n=2)))
    assert out.shape == (2, 5)
    out.sum().backward()
    assert model.patch_embed.ref.grad is not None


# ---------------------------------------------------------------- MI embedding
def test_mi_embedding_equals_research_conv_then_avgpool():
    torch.manual_seed(0)
    P, s = 16, 8
    x8 = photo(64, n=2)                                           # plain 64x64 photo, uint8 NHWC
    x = x8.permute(0, 3, 1, 2).float() / 255                      # plain float NCHW
    b, c, h, w = x.shape
    mi = x.view(b, c, h // P, 2, s, w // P, 2, s).mean(dim=(3, 6)).reshape(b, c, h // 2, w // 2)
    # the float MI image is what the encryption kernel rounds
    mi_k = mi_mix(x8, P).permute(0, 3, 1, 2).float() / 255
    assert (mi_k - mi).abs().max() <= 0.5 / 255 + 1e-6

    pe = MIPatchEmbed(img_size=(h // 2, w // 2), patch_size=s, in_chans=3, embed_dim=24)
    conv = pe.proj[0]
    ours = conv(mi)
    research = F.avg_pool2d(F.conv2d(x, conv.weight, conv.bias, stride=s), 2)
    assert ours.shape == research.shape == (b, 24, h // P, w // P)
    torch.testing.assert_close(ours, research, atol=1e-5, rtol=1e-5)
    # the full embedding: GELU and the 1x1 conv on top, tokens on the (H/P)x(W/P) grid
    tokens = pe(mi)
    ref = pe.proj[2](F.gelu(research)).flatten(2).transpose(1, 2)
    torch.testing.assert_close(tokens, ref, atol=1e-5, rtol=1e-5)
    assert pe.grid_size == (h // P, w // P) and pe.num_patches == (h // P) * (w // P)
    assert pe.feat_ratio() == s and pe.dynamic_feat_size((h // 2, w // 2)) == pe.grid_size


# ---------------------------------------------------------------- timm registry
@pytest.mark.parametrize("name,side,cls", [("pevit_tiny_patch16_224", 224, PEViT),
                                           ("mivit_tiny_patch16_224", 112, MIViT)])
def test_registered_models_build_and_run(name, side, cls):
    assert name in timm.list_models("*vit_tiny_patch16_224")
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=7).eval()
    assert isinstance(model, cls) and model.embed_dim == 192 and len(model.blocks) == 12
    assert model.patch_embed.grid_size == (14, 14)
    assert model.pretrained_cfg["input_size"] == (3, side, side)
    with torch.no_grad():
        assert model(torch.randn(1, 3, side, side)).shape == (1, 7)
    if cls is MIViT:
        assert model.pos_embed.shape == (1, 197, 192)
        check_model_matches(model, Scheme("mi", patch=16, height=224, width=224))
    else:
        assert model.pos_embed is None
        check_model_matches(model, Scheme("rs", patch=16, height=224, width=224))
        with pytest.raises(ValueError, match="patch size"):
            check_model_matches(model, Scheme("rs", patch=8, height=224, width=224))
    with pytest.raises(ValueError, match="pretrained"):
        timm.create_model(name, pretrained=True)


# ---------------------------------------------------------------- build_model / check_model_matches
@pytest.mark.parametrize("kind,cls,inp,cell", [("rs", PEViT, (32, 32), 8), ("mi", MIViT, (16, 16), 4),
                                               ("none", timm.models.VisionTransformer, (32, 32), 8)])
def test_build_model_from_scheme(kind, cls, inp, cell):
    s = Scheme(kind, patch=8, height=32, width=32)
    model = build_model(s, 3, **TINY)
    assert type(model) is cls
    assert model.patch_embed.img_size == inp == s.out_size
    assert model.patch_embed.patch_size == (cell, cell) and model.patch_embed.grid_size == (4, 4)
    assert (model.pos_embed is None) == (kind == "rs")
    assert model.himr_scheme == s.to_dict() and model_scheme(model) == s
    assert model.embed_dim == 32 and len(model.blocks) == 2 and model.num_classes == 3
    check_model_matches(model, s)
    check_model_matches(model, s.to_dict())
    with torch.no_grad():
        assert model.eval()(torch.zeros(1, 3, *inp)).shape == (1, 3)


def test_build_model_sizes_and_bad_arguments():
    s = Scheme("rs", patch=16, height=64, width=64)
    small = build_model(s, 2, size="small", depth=1)
    assert small.embed_dim == 384 and small.blocks[0].attn.num_heads == 6 and len(small.blocks) == 1
    with pytest.raises(ValueError, match="size"):
        build_model(s, 2, size="huge")
    with pytest.raises(ValueError, match="from the scheme"):
        build_model(s, 2, patch_size=8, **TINY)


def test_check_model_matches_refuses_mismatches():
    p16 = build_model(Scheme("rs", patch=16, height=32, width=32), 4, **TINY)
    with pytest.raises(ValueError, match="P=8"):          # PEViT P=16, shards P=8
        check_model_matches(p16, Scheme("rs", patch=8, height=32, width=32))
    with pytest.raises(ValueError, match="input size"):
        check_model_matches(p16, Scheme("rs", patch=16, height=64, width=64))
    plain = build_model(Scheme("none", patch=8, height=32, width=32), 4, **TINY)
    with pytest.raises(ValueError, match="position embeddings"):   # learned positions on RS data
        check_model_matches(plain, Scheme("rs", patch=8, height=32, width=32))
    # structure alone decides, without the recorded scheme (e.g. a model from timm.create_model)
    del plain.himr_scheme
    with pytest.raises(ValueError, match="kind"):
        check_model_matches(plain, Scheme("rs", patch=8, height=32, width=32))
    mi = build_model(Scheme("mi", patch=8, height=32, width=32), 4, **TINY)
    with pytest.raises(ValueError, match="kind"):
        check_model_matches(mi, Scheme("rs", patch=8, height=32, width=32))
    with pytest.raises(ValueError, match="kind"):
        check_model_matches(p16, Scheme("mi", patch=16, height=32, width=32))
    # wrappers (DDP / DataParallel style .module) are looked through
    check_model_matches(torch.nn.DataParallel(mi), Scheme("mi", patch=8, height=32, width=32))
