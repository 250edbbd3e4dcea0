"""PEViT / MI-ViT / plain ViT (himr_pipe.train.models): the properties the method rests on.

* PEViT's logits do not depend on the order of the patches (RS), with and
  without RPE; a ViT with learned position embedding's do.
* MI patch embedding: conv on the float MI image == the research code's conv
  on the plain image followed by 2x2 average pooling.
* timm registry names, build_model from a Scheme, check_model_matches.
* The flip defence: the orbit-pooled (D4) patch embedding makes the rs and
  mi-shuffle models exactly invariant to the orientation of every cell, and is
  what the docstring says it is (the shared first layer on all eight
  orientations of the input, GELU, mean, 1x1 conv); the models without flip
  are unchanged and do depend on the orientations.

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

from himr_pipe.kernels import encrypt, make_permutations, mi_mix, rs_permute
from himr_pipe.scheme import Scheme
from himr_pipe.train.models import (D4MIPatchEmbed, D4OrbitProj, D4PatchEmbed, MIPatchEmbed, MIViT, PEViT,
                                    RPED4MIPatchEmbed, RPED4PatchEmbed, RPEMIPatchEmbed, RPEPatchEmbed, build_model,
                                    check_model_matches, model_scheme)

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


# ---------------------------------------------------------------- flip defence: orientation invariance
def flip_cells(scheme: Scheme, b: int, seed: int) -> torch.Tensor:
    """Packed cells (permutation + N * orientation) of ``b`` images, as the pipeline makes them."""
    keys = torch.from_numpy(np.random.default_rng(seed).integers(0, 2**63, (b, scheme.num_patches)))
    return make_permutations(keys, orient=True)


def randomise(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Perturb every parameter (biases, the RPE reference, norms, ...) so that no weight is left in a
    special, symmetric state by the initialisation."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for prm in model.parameters():
            prm.add_(0.05 * torch.randn(prm.shape, generator=g, dtype=prm.dtype))
    return model


FLIP_SCHEMES = [("rs", 0), ("mi-shuffle", 1)]  # mi-shuffle with a gap: blanked borders are D4-symmetric


@pytest.mark.parametrize("rpe", [True, False])
@pytest.mark.parametrize("name,gap", FLIP_SCHEMES)
def test_flip_models_are_invariant_to_cell_orientation_and_order(name, gap, rpe):
    torch.manual_seed(0)
    s = Scheme.named(name, patch=8, height=32, width=32, gap=gap, flip=True)
    model = randomise(build_model(s, 5, rpe=rpe, **TINY)).eval()
    pe = model.patch_embed
    want = {("rs", True): RPED4PatchEmbed, ("rs", False): D4PatchEmbed,
            ("mi-shuffle", True): RPED4MIPatchEmbed, ("mi-shuffle", False): D4MIPatchEmbed}[name, rpe]
    assert type(pe) is want and isinstance(pe.proj, D4OrbitProj) and model.pos_embed is None and model.flip
    x = photo(32, n=2)
    # the same photos in three encryptions: identity cells (no shuffle, no turn) and two keyed flip encryptions
    ident = torch.arange(s.num_patches).repeat(2, 1)
    encs = [encrypt(s, x, ident)] + [encrypt(s, x, flip_cells(s, 2, seed)) for seed in (1, 2)]
    for seed in (1, 2):
        orient = flip_cells(s, 2, seed) // s.num_patches
        assert len(orient.unique()) == 8  # every orientation occurs: the test is not about a few flips
    assert not torch.equal(encs[0], encs[1]) and not torch.equal(encs[1], encs[2])
    # float32, as trained: equal up to rounding
    with torch.no_grad():
        logits = [model(to_input(e)) for e in encs]
    for other in logits[1:]:
        torch.testing.assert_close(other, logits[0], atol=1e-5, rtol=1e-5)
    for e in encs[1:]:
        torch.testing.assert_close(pooled(model, e), pooled(model, encs[0]), atol=1e-5, rtol=1e-5)
    assert (logits[0][0] - logits[0][1]).abs().max() > 1e-3  # not trivially: the two photos differ
    # float64: equal to float64 rounding, so nothing but rounding separates them
    m64 = model.double()
    with torch.no_grad():
        l64 = [m64(to_input(e).double()) for e in encs]
    for other in l64[1:]:
        torch.testing.assert_close(other, l64[0], atol=1e-12, rtol=1e-12)
    # so the augmentation's cell flip (patch_hflip) changes nothing for this model: off by default for flip
    from himr_pipe.train.augment import build_augment, patch_hflip

    with torch.no_grad():
        torch.testing.assert_close(m64(patch_hflip(to_input(encs[1]).double(), s.out_cell, p=1.0)), l64[0],
                                   atol=1e-12, rtol=1e-12)
    assert build_augment(s, 5).config["hflip"] == 0.0
    # and the invariance is to the group only: rolling every cell by one row (no symmetry of the square)
    # changes the logits
    cell = s.out_cell
    rolled = to_input(encs[0]).double().unflatten(2, (-1, cell)).roll(1, dims=3).flatten(2, 3)
    with torch.no_grad():
        assert (m64(rolled) - l64[0]).abs().max() > 1e-4


@pytest.mark.parametrize("name", ["rs", "mi-shuffle"])
def test_orbit_proj_is_the_shared_layer_on_all_eight_orientations_of_the_input(name):
    """The weights-oriented implementation equals the definition: every cell turned into each of the eight
    orientations (by the encryption kernel's own convention), the shared first conv, GELU, mean, 1x1 conv."""
    torch.manual_seed(0)
    s = Scheme.named(name, patch=8, height=32, width=32, flip=True)
    pe = randomise(build_model(s, 5, **TINY)).patch_embed.double()
    proj, cell = pe.proj, s.out_cell
    x8 = photo(32, n=2)
    if s.kind == "mi":
        x8 = mi_mix(x8, s.patch)
    ident = torch.arange(s.num_patches).repeat(2, 1)
    acts = []
    for g in range(8):
        turned = rs_permute(x8, ident, cell, orient=torch.full_like(ident, g))  # every cell in orientation g
        acts.append(F.gelu(proj[0](to_input(turned).double())))
    want = proj[2](torch.stack(acts).mean(0))
    got = proj(to_input(x8).double())
    assert got.shape == want.shape == (2, TINY["embed_dim"], 4, 4)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
    # a single orientation (the plain conv stack) is not the same thing
    assert (proj[2](acts[0]) - want).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["rs", "mi-shuffle"])
def test_without_flip_the_models_are_unchanged_and_depend_on_orientation(name):
    torch.manual_seed(0)
    s = Scheme.named(name, patch=8, height=32, width=32)
    model = build_model(s, 5, **TINY).eval()
    pe = model.patch_embed
    assert type(pe) is (RPEPatchEmbed if name == "rs" else RPEMIPatchEmbed) and not model.flip
    assert not isinstance(pe.proj, D4OrbitProj)
    assert type(pe.proj) is (torch.nn.Conv2d if name == "rs" else torch.nn.Sequential)
    assert model.pretrained_cfg["first_conv"] == ("patch_embed.proj" if name == "rs" else "patch_embed.proj.0")
    assert model_scheme(model) == s and not model_scheme(model).flip
    # the same seed builds the same weights as before the flip models existed: the embedding of a
    # plain PEViT / MI-ViT built directly
    torch.manual_seed(0)
    direct = (PEViT(img_size=32, patch_size=8, num_classes=5, **TINY) if name == "rs" else
              MIViT(img_size=16, patch_size=4, shuffled=True, num_classes=5, **TINY))
    sd, sd_direct = model.state_dict(), direct.state_dict()
    assert sd.keys() == sd_direct.keys() and all(torch.equal(sd[k], sd_direct[k]) for k in sd)
    # the order-invariant model without flip does see the orientations
    x = photo(32, n=2)
    flip_s = Scheme.named(name, patch=8, height=32, width=32, flip=True)
    cells = flip_cells(flip_s, 2, 1)
    perm_only = encrypt(s, x, cells % s.num_patches)
    turned = encrypt(flip_s, x, cells)
    with torch.no_grad():
        fa, fb = pooled(model, perm_only), pooled(model, turned)
    assert (fa - fb).abs().max() > 1e-3


def test_flip_model_scheme_and_check_model_matches():
    for name, gap in FLIP_SCHEMES:
        flip_s = Scheme.named(name, patch=8, height=32, width=32, gap=gap, flip=True)
        plain_s = Scheme.named(name, patch=8, height=32, width=32, gap=gap)
        flip_m, plain_m = build_model(flip_s, 3, **TINY), build_model(plain_s, 3, **TINY)
        assert model_scheme(flip_m) == Scheme.named(name, patch=8, height=32, width=32, flip=True)
        assert model_scheme(flip_m).flip and not model_scheme(plain_m).flip
        assert flip_m.himr_scheme == flip_s.to_dict() and flip_m.pretrained_cfg["first_conv"] == "patch_embed.proj.0"
        check_model_matches(flip_m, flip_s)
        check_model_matches(flip_m, flip_s.to_dict())
        check_model_matches(torch.nn.DataParallel(flip_m), flip_s)
        # from the structure alone as well (no recorded scheme, e.g. from timm.create_model)
        for m in (flip_m, plain_m):
            del m.himr_scheme
        with pytest.raises(ValueError, match="flip: the shards' cells are each turned.*not invariant"):
            check_model_matches(plain_m, flip_s)
        with pytest.raises(ValueError, match="flip: the model's patch embedding is pooled.*keep their orientation"):
            check_model_matches(flip_m, plain_s)
        check_model_matches(flip_m, flip_s)
        check_model_matches(plain_m, plain_s)
    # a flip model of one kind on flip data of the other is refused for the kind
    with pytest.raises(ValueError, match="kind"):
        check_model_matches(build_model(Scheme.named("rs", 8, 32, 32, flip=True), 3, **TINY),
                            Scheme.named("mi-shuffle", 8, 32, 32, flip=True))
    # flip belongs to the shuffled MI model only
    with pytest.raises(ValueError, match="shuffled=True"):
        MIViT(img_size=16, patch_size=4, flip=True, **TINY)


@pytest.mark.parametrize("name,kw", [("pevit_tiny_patch16_224", {}), ("mivit_tiny_patch16_224", {"shuffled": True})])
def test_registered_factories_take_flip(name, kw):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=4, flip=True, depth=1, **kw).eval()
    side = 224 if name.startswith("pevit") else 112
    assert isinstance(model.patch_embed.proj, D4OrbitProj) and model.flip and model.pos_embed is None
    assert model.pretrained_cfg["first_conv"] == "patch_embed.proj.0"
    assert model.get_submodule(model.pretrained_cfg["first_conv"]).kernel_size == (side // 14,) * 2
    want = Scheme.named("rs" if name.startswith("pevit") else "mi-shuffle", 16, 224, 224, flip=True)
    assert model_scheme(model) == want
    check_model_matches(model, want)
    with torch.no_grad():
        assert model(torch.randn(1, 3, side, side)).shape == (1, 4)
    with pytest.raises(ValueError, match="patch size"):
        model.patch_embed.set_input_size(patch_size=side // 7)


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
