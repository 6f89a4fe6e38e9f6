"""bitsmith's AVX2 int8 kernel (bitsmith.integer.u8s8) against plain int64 arithmetic, element by
element: the weight split that keeps vpmaddubsw's 16-bit pair sums from saturating, every layout
(row runs, dilated taps, strides, asymmetric padding, odd channel counts), and the fused
requantization and pooling against CodeRequant."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bitsmith.integer import engine, int8_gemm, u8s8
from bitsmith.integer.engine import float_requant
from bitsmith.integer.requant_kernels import CodeRequant

pytestmark = pytest.mark.skipif(not u8s8.available(), reason="AVX2 kernels not built or no AVX2 on this CPU")


def reference(x, w, z, bias=None, stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1)):
    """Σ w·(x − z) + bias in float64 (exact here), padding counting as z."""
    top, left, bottom, right = pads
    centred = F.pad(x.double() - z, (left, right, top, bottom))
    b = None if bias is None else bias.double()
    return F.conv2d(centred, w.double(), b, stride=stride, dilation=dilation)


def test_safe_pairs_bounds_the_pair_sums():
    w = np.array([[127, 127, 64, 64, -128, -128, 127, -128, 100, 28]])
    assert safe_list(w, 0, 255) == [False, True, False, True, True]  # 255·128 = 32640 fits, 255·129 does not
    assert safe_list(w, 0, 127) == [True] * 5  # 7-bit activations: every pair fits (fbgemm's choice)


def safe_list(w, lo, hi):
    return u8s8.safe_pairs(w, lo, hi)[0].tolist()


def test_pack_moves_the_second_weight_of_unsafe_pairs_only():
    w = np.zeros((3, 5, 4), dtype=np.int64)
    w[0, 1] = [127, 127, 1, 2]  # first pair unsafe for output channel 0
    w[2, 3] = [5, 6, -128, -100]  # second pair unsafe for channel 2
    packed, groups = u8s8.pack(w, 0, 255)
    assert groups.tolist() == [0, 1, 2, 3, 4, 1, 3]  # two extra entries, over the same activations
    entries = packed.transpose(0, 2, 1, 3).reshape(16, -1, 4)[:3].astype(np.int64)
    assert entries[0, 1].tolist() == [127, 0, 1, 2] and entries[0, 5].tolist() == [0, 127, 0, 0]
    assert entries[2, 3].tolist() == [5, 6, -128, 0] and entries[2, 6].tolist() == [0, 0, 0, -100]
    restored = np.zeros_like(w)
    np.add.at(restored, (slice(None), groups), entries)
    assert np.array_equal(restored, w)  # W_a + W_b = W


def test_the_split_is_what_makes_extreme_pairs_exact():
    """Every weight ±127/−128 and every activation 255: a plain vpmaddubsw sum would saturate."""
    w = torch.full((16, 8, 3, 3), 127, dtype=torch.int8)
    w[8:] = -128
    x = torch.full((2, 8, 5, 5), 255, dtype=torch.uint8)
    conv = u8s8.U8S8Conv(w, 0, stride=(1, 1), pads=(1, 1, 1, 1), dilation=(1, 1))
    assert conv.extra_entries == 3 * (3 * 8 // 4)  # every pair unsafe: each of the 18 groups gets an extra entry
    assert torch.equal(conv(x).double(), reference(x, w, 0, pads=(1, 1, 1, 1)))


@pytest.mark.parametrize("channels,out,kernel,stride,pads,dilation", [
    (1, 16, 3, (1, 1), (1, 1, 1, 1), (1, 1)),  # VGG's first layer: one row run of 3 bytes
    (3, 10, 5, (1, 1), (0, 0, 0, 0), (1, 1)),  # LeNet-like, 10 outputs (a partial block of 16)
    (16, 32, 3, (2, 2), (1, 0, 2, 1), (1, 1)),  # stride 2, asymmetric padding
    (5, 20, 3, (1, 2), (2, 2, 2, 2), (2, 2)),  # dilation: one run per tap, channels padded to 8
    (64, 17, 1, (1, 1), (0, 0, 0, 0), (1, 1)),  # pointwise
    (7, 33, 2, (2, 1), (0, 1, 1, 0), (1, 3)),
])
def test_conv_equals_int64(channels, out, kernel, stride, pads, dilation):
    g = torch.Generator().manual_seed(channels * 100 + out)
    w = torch.randint(-128, 128, (out, channels, kernel, kernel), generator=g).to(torch.int8)
    w[0, :, 0, 0] = 127  # make unsafe pairs likely
    bias = torch.randint(-5000, 5000, (out,), generator=g)
    x = torch.randint(0, 256, (3, channels, 9, 11), generator=g, dtype=torch.uint8)
    x[0] = 255
    z = 37
    conv = u8s8.U8S8Conv(w, z, stride=stride, pads=pads, dilation=dilation, bias=bias)
    got = conv(x.contiguous(memory_format=torch.channels_last))
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got.double(), reference(x, w, z, bias, stride, pads, dilation))
    assert torch.equal(conv(x).double(), got.double())  # an NCHW input gives the same


def test_linear_equals_int64_with_an_odd_fan_in():
    g = torch.Generator().manual_seed(3)
    w = torch.randint(-128, 128, (10, 1027), generator=g).to(torch.int8)
    x = torch.randint(0, 256, (37, 1027), generator=g, dtype=torch.uint8)
    bias = torch.randint(-99, 99, (10,), generator=g)
    got = u8s8.U8S8Linear(w, 200, bias)(x)
    assert torch.equal(got.double(), (x.double() - 200) @ w.double().t() + bias.double())


@pytest.mark.parametrize("pool", [None, ((2, 2), (2, 2)), ((3, 3), (2, 2))])
@pytest.mark.parametrize("narrow", [False, True], ids=["plain", "saturation-clamp"])
def test_fused_requant_equals_code_requant(pool, narrow):
    """The kernel's epilogue (and uint8 pool) against the conv's float32 accumulator through
    CodeRequant: the same codes, per-channel multipliers, a saturation clamp, a code offset."""
    g = torch.Generator().manual_seed(int(narrow))
    w = torch.randint(-128, 128, (24, 6, 3, 3), generator=g).to(torch.int8)
    x = torch.randint(0, 256, (4, 6, 10, 10), generator=g, dtype=torch.uint8)
    conv = u8s8.U8S8Conv(w, 9, stride=(1, 1), pads=(1, 1, 1, 1), dilation=(1, 1))
    acc = conv(x)
    bound = int(acc.abs().max()) + 1
    v_range = (-(1 << 40), 1 << 40) if narrow else (-bound, bound)  # a huge range needs the clamp
    m = torch.randint(1 << 20, 1 << 30, (24,), generator=g).tolist()
    s = torch.randint(37, 40, (24,), generator=g).tolist()
    fr = float_requant(m, s, -3, -20, 100, v_range, rank=4)
    assert (fr.v_min is not None) == narrow
    requant = CodeRequant(fr, (24, 10, 10), z_in=0, code_offset=20, pool=pool)
    want = requant(acc)
    got = u8s8.ConvRequant(conv, requant)(x)
    assert got.dtype == torch.uint8 and torch.equal(got, want)
    assert len(torch.unique(got)) > 20


def test_the_engine_runs_single_images_on_the_kernels_for_large_graphs():
    from tests.integer.test_engine_fast_paths import W8A8, assert_fast_equals_literal, graph

    g, shape = graph("vgg_tiny", W8A8)
    plan = engine._plan(g)
    on_avx2 = int8_gemm.backend() == "avx2"  # a VNNI machine runs oneDNN's kernels, from 16 images on
    assert plan.int8_small_batches == (on_avx2 and engine._macs_per_image(g) >= engine.AVX2_SMALL_BATCH_MACS)
    for batch in (1, 5):
        assert_fast_equals_literal(g, torch.randn(batch, *shape) * 2)
    small, shape = graph("lenet5", W8A8)
    assert not engine._plan(small).int8_small_batches  # 0.4M MACs: the single-image program


def test_a_nan_single_image_is_refused_on_the_int8_program():
    from bitsmith.errors import GraphError
    from tests.integer.test_engine_fast_paths import W8A8, graph

    g, shape = graph("vgg_tiny", W8A8)
    x = torch.randn(1, *shape)
    x[0, 0, 3, 4] = float("nan")
    with pytest.raises(GraphError, match="NaN"):
        engine.run(g, x)


def test_many_batch_sizes_keep_a_bounded_cache():
    w = torch.randint(-128, 128, (4, 3, 3, 3), dtype=torch.int8)
    conv = u8s8.U8S8Conv(w, 0, stride=(1, 1), pads=(1, 1, 1, 1), dilation=(1, 1))
    for n in range(1, 100):
        x = torch.randint(0, 256, (n, 3, 5, 5), dtype=torch.uint8)
        if n % 20 == 0:
            assert torch.equal(conv(x).double(), reference(x, w, 0, pads=(1, 1, 1, 1)))
        else:
            conv(x)
    assert len(conv._layouts) <= 64
