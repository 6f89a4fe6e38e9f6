"""Small graphs for the HLS tests, built directly with tests/random_graphs.GraphMaker (no front end):
SkyNet as DeepBurning-MixQ has it (with the original SkyNet's reorg bypass), and one graph holding every
HLS layer kind and form."""

from __future__ import annotations

from bitsmith.integer.graph import IntegerGraph
from tests.random_graphs import GraphMaker


def skynet_graph(seed: int = 0, shape=(3, 16, 32)) -> IntegerGraph:
    """SkyNet at a small size, as DeepBurning-MixQ and the original SkyNet have it: depthwise-separable
    blocks (3x3 depthwise conv + ReLU6, 1x1 pointwise conv + ReLU6), 2x2 max pools after blocks 1-3,
    and the original's bypass: block 3's output reorganised (stride 2) and concatenated with block 5's
    output (moved onto the reorg's grid) before block 6 and the raw 1x1 head."""
    gm = GraphMaker(seed)
    x = gm.input(shape)

    def block(x, out_ch):
        x = gm.conv(x, x.shape[0], 3, groups=x.shape[0], clamp="relu6")      # depthwise
        return gm.conv(x, out_ch, 1, clamp="relu6")                           # pointwise

    x = gm.maxpool(block(x, 8))
    x = gm.maxpool(block(x, 12))
    bypass = block(x, 16)
    x = block(block(gm.maxpool(bypass), 24), 32)
    x = gm.concat([gm.reorg(bypass), x])
    x = block(x, 16)
    return gm.graph(gm.conv(x, 36, 1, requant=False))


def mixed_graph(seed: int = 7) -> IntegerGraph:
    """One of every layer kind and form, in a DAG: dense, depthwise (stride 2) and asymmetrically
    padded convs, a residual Add, a Concat with a regridded input, Reorg, AvgPool, a raw Linear head."""
    gm = GraphMaker(seed)
    x = gm.input((3, 8, 8))
    c1 = gm.conv(x, 6, 3)
    dw = gm.conv(c1, 6, 3, stride=2, groups=6, clamp="relu6")
    pa = gm.conv(dw, 4, 2, pads=[0, 0, 1, 1])
    res = gm.add(pa, gm.conv(pa, 4, 1, clamp="none"))
    cat = gm.concat([res, dw])
    pooled = gm.avgpool(gm.reorg(cat), 2, 2)
    return gm.graph(gm.linear(gm.flatten(pooled), 5, requant=False))
