"""CLIP-Q hex images (docs/clipq-hex.md): the W2 packing layout, and a round trip of the 2-bit
codebook layers of a golden CLIP-Q graph."""

import json

import numpy as np
import pytest
import torch

from bitsmith.errors import DataError
from bitsmith.targets.clipq_hex import pack_w2, read_clipq_hex, unpack_w2, write_clipq_hex
from tests.helpers import golden


def test_w2_packing_layout():
    index = np.full((5, 6, 1, 2), 2, dtype=np.uint32)
    index[0, 0, 0, 0] = 0b01  # output 0, input 0, first kernel position: lowest bits of line 0
    index[1, 3, 0, 1] = 0b11  # output 1, input 3: bits [15:14] of line 1 (second kernel position)
    index[4, 5, 0, 0] = 0b00  # output 4, input 5: output group 1, input group 1, slot (0, 1)
    words = pack_w2(index)
    assert len(words) == 2 * 2 * 2  # 2 output groups × 2 input groups × 2 kernel positions
    assert words[0] & 0b11 == 0b01 and (words[0] >> 2) & 0b11 == 0b10
    assert (words[1] >> 14) & 0b11 == 0b11
    assert (words[6] >> 2) & 0b11 == 0b00  # og 1, ig 1, position 0; slot i=0, j=1
    assert (words[6] >> 4) & 0b11 == 0b10  # padding input channel 6 → zero code
    assert words[7] == 0xAAAAAAAA  # og 1, ig 1, position 1: every code 10 (real or padding)
    assert np.array_equal(unpack_w2(words, index.shape), index)


def test_hex_round_trip(tmp_path):
    g = golden("lenet5_clipq_3bit")   # 2-bit conv1, conv2, fc1; 3-bit conv3; dense fc2
    manifest = write_clipq_hex(g, tmp_path / "hex")
    names = [entry["name"] for entry in manifest["layers"]]
    assert names == ["q_conv1_acc", "q_conv2_acc", "q_fc1_acc"]  # the 2-bit layers only
    back = read_clipq_hex(tmp_path / "hex")
    for node in g.nodes:
        if node.name in back:
            assert torch.equal(back[node.name]["weight_index"], g.params[node.params["weight_index"]])
            assert torch.equal(back[node.name]["codebook"], g.params[node.params["codebook"]])
    folder = tmp_path / "hex" / manifest["layers"][0]["folder"]
    lines = (folder / "W2.hex").read_text().split()
    assert len(lines) == 2 * 1 * 25 and all(len(s) == 8 for s in lines)  # 6 out → 2 groups, 1 in → 1 group
    w8 = int((folder / "W8.hex").read_text().strip(), 16)
    cb = g.params["q_conv1_acc.codebook"].tolist()
    assert [((w8 >> (8 * c)) & 0xFF) for c in range(4)] == [v & 0xFF for v in cb]
    (folder / "W2.hex").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(DataError, match="lines"):
        read_clipq_hex(tmp_path / "hex")
    json.loads((tmp_path / "hex" / "manifest.json").read_text())
