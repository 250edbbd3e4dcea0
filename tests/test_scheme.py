import pytest

from himr_pipe.encode import FormatError, choose_format
from himr_pipe.scheme import Scheme, SchemeError, parse_size


def test_geometry_rs_and_mi():
    rs = Scheme("rs", 16, 224, 224)
    assert rs.grid == (14, 14) and rs.num_patches == 196 and rs.out_size == (224, 224) and rs.out_cell == 16
    mi = Scheme("mi", 16, 224, 192)
    assert mi.grid == (14, 12) and mi.out_size == (112, 96) and mi.out_cell == 8


@pytest.mark.parametrize("kw, msg", [
    (dict(kind="rs", patch=16, height=224, width=200), "does not divide"),
    (dict(kind="mi", patch=7, height=224, width=224), "even patch"),
    (dict(kind="xx", patch=16, height=224, width=224), "unknown scheme"),
    (dict(kind="rs", patch=0, height=224, width=224), "positive"),
])
def test_invalid_schemes_are_clear_errors(kw, msg):
    with pytest.raises(SchemeError, match=msg):
        Scheme(**kw)


def test_round_trip_through_manifest_dict():
    s = Scheme("mi", 8, 64, 96)
    assert Scheme.from_dict(s.to_dict()) == s
    bad = dict(s.to_dict(), out_height=99)
    with pytest.raises(SchemeError):
        Scheme.from_dict(bad)


def test_parse_size():
    assert parse_size("224") == (224, 224)
    assert parse_size("192x256") == (192, 256)
    with pytest.raises(SchemeError):
        parse_size("abc")


def test_jpeg_subsampling_keeps_blocks_inside_patches():
    assert choose_format("jpeg", Scheme("rs", 16, 224, 224)).subsampling == "420"
    assert choose_format("jpeg", Scheme("rs", 8, 224, 224)).subsampling == "444"
    # MI output cells are P/2: 8 px for P=16, so 4:2:0 macroblocks (16 px) would straddle them
    assert choose_format("jpeg", Scheme("mi", 16, 224, 224)).subsampling == "444"
    with pytest.raises(FormatError, match="multiple of 8"):
        choose_format("jpeg", Scheme("rs", 4, 32, 32))
    assert choose_format("png", Scheme("rs", 4, 32, 32)).name == "png"


def test_rs_defences_are_validated_and_recorded():
    s = Scheme("rs", 16, 224, 224, gap=2, drop=0.25)
    assert s.dropped == 49 and Scheme.from_dict(s.to_dict()) == s
    assert Scheme.from_dict({"kind": "rs", "patch": 16, "height": 224, "width": 224}).gap == 0  # older manifests
    with pytest.raises(SchemeError, match="belong to the shuffled schemes"):
        Scheme("mi", 16, 224, 224, gap=2)
    with pytest.raises(SchemeError, match="gap"):
        Scheme("rs", 8, 64, 64, gap=4)
    with pytest.raises(SchemeError, match="drop"):
        Scheme("rs", 8, 64, 64, drop=1.0)


def test_mi_shuffle_is_mi_with_shuffled_cells_and_takes_the_defences_on_its_cell():
    s = Scheme.named("mi-shuffle", 16, 224, 224, gap=1, drop=0.25)
    assert (s.kind, s.shuffle, s.name, s.shuffled) == ("mi", True, "mi-shuffle", True)
    assert s.out_size == (112, 112) and s.out_cell == 8 and s.num_patches == 196
    assert Scheme.from_dict(s.to_dict()) == s and s.to_dict()["shuffle"] is True
    assert Scheme.from_dict({"kind": "mi", "patch": 16, "height": 224, "width": 224}).shuffle is False  # older
    assert not Scheme("mi", 16, 224, 224).shuffled and Scheme("rs").shuffled
    with pytest.raises(SchemeError, match="gap"):
        Scheme.named("mi-shuffle", 16, 224, 224, gap=4)  # 2*4 is not < the stored cell 8
    with pytest.raises(SchemeError, match="shuffle is an option of scheme mi"):
        Scheme("rs", 16, 224, 224, shuffle=True)
    with pytest.raises(SchemeError, match="unknown scheme"):
        Scheme.named("mix")
    # JPEG: the stored cell is 8, so 4:4:4 (blocks stay inside cells); a 4-pixel cell refuses JPEG
    assert choose_format("jpeg", s).subsampling == "444"
    with pytest.raises(FormatError, match="multiple of 8"):
        choose_format("jpeg", Scheme.named("mi-shuffle", 8, 64, 64))


def test_flip_is_a_defence_of_the_shuffled_schemes_and_is_recorded():
    s = Scheme.named("mi-shuffle", 16, 224, 224, 1, flip=True)
    assert s.flip and s.describe() == "mi-shuffle P=16 gap 1 flip"
    assert Scheme.from_dict(s.to_dict()) == s
    assert "flip" not in Scheme("rs").to_dict() and Scheme.from_dict(Scheme("rs").to_dict()).flip is False
    assert Scheme.named("rs", flip=True).describe() == "rs P=16 flip"
    for bad in (dict(kind="mi"), dict(kind="none")):
        with pytest.raises(SchemeError, match="flip defence belongs to the shuffled schemes"):
            Scheme(**bad, flip=True)
    with pytest.raises(SchemeError, match="flip must be True or False"):
        Scheme("rs", flip=1)
