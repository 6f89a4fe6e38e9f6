"""Heads, decoding, IoU and the loss on hand-made cases; the loss trains; integer boxes equal
fake-quant boxes on a small quantized UltraNet."""

from __future__ import annotations

import math

import pytest
import torch

from bitsmith.detection import HEADS, box_iou, decode, detection_head, detection_loss, mean_iou
from bitsmith.detection.loss import responsible
from bitsmith.errors import ConfigError, DataError
from bitsmith.integer import engine
from bitsmith.models import build_model
from bitsmith.quant import lower
from bitsmith.quant.qat.prepare import QATSpec, qat_prepare, sync_input_scales


def test_iou_hand_made_cases():
    a = torch.tensor([[0.0, 0.0, 0.2, 0.2], [0.0, 0.0, 0.2, 0.2], [0.0, 0.0, 0.2, 0.2], [0.1, 0.1, 0.1, 0.3]])
    b = torch.tensor([[0.0, 0.0, 0.2, 0.2], [0.5, 0.5, 0.7, 0.7], [0.1, 0.1, 0.3, 0.3], [0.0, 0.0, 1.0, 1.0]])
    assert box_iou(a, b).tolist() == pytest.approx([1.0, 0.0, 1 / 7, 0.0])  # identical, disjoint, known, empty
    assert mean_iou(a[:3], b[:3]) == pytest.approx((1 + 0 + 1 / 7) / 3)
    with pytest.raises(DataError, match=r"\[N, 4\]"):
        box_iou(a, b[:, :2])


def test_heads_match_the_original_designs():
    ultranet, skynet = detection_head("ultranet"), detection_head("skynet")
    assert ultranet.channels == 36 and ultranet.anchors == ((20.0, 20.0),) * 6  # 6 anchors x (4 + obj + class)
    assert skynet.channels == 10 and len(skynet.anchors) == 2  # 2 anchors x (4 + obj)
    assert skynet.anchors[0][0] == pytest.approx(1.4940052559648322 * 8)
    assert HEADS["ultranet_bypass"] == ultranet
    with pytest.raises(ConfigError, match="vgg7 has no detection head"):
        detection_head("vgg7")


def _encode(head, target, grid, anchor, gy, gx, channels_first=True):
    """A head output whose decoding is `target` [4] at (anchor, gy, gx), with everything else 0."""
    gh, gw = grid
    out = torch.zeros(1, len(head.anchors), head.values, gh, gw)
    cx, cy = (target[0] + target[2]) / 2, (target[1] + target[3]) / 2
    w, h = target[2] - target[0], target[3] - target[1]
    aw, ah = head.anchor_fractions()[anchor]
    fx, fy = cx * gw - gx, cy * gh - gy
    out[0, anchor, :4, gy, gx] = torch.tensor([math.log(fx / (1 - fx)), math.log(fy / (1 - fy)),
                                               math.log(w / aw), math.log(h / ah)])
    out[0, anchor, 4, gy, gx] = 12.0  # far above the 0 elsewhere: the softmax puts ~all mass here
    return out.reshape(1, head.channels, gh, gw)


@pytest.mark.parametrize("model", ["ultranet", "skynet"])
def test_decode_inverts_the_encoding_of_a_box(model):
    head = detection_head(model)
    target = torch.tensor([0.30, 0.40, 0.55, 0.90])
    grid = (4, 8)
    anchor, gy, gx = (t.item() for t in responsible(target[None], head, grid))
    assert (gy, gx) == (2, 3)  # the cell holding the centre (0.425, 0.65)
    boxes, objectness = decode(_encode(head, target, grid, anchor, gy, gx), head)
    assert torch.allclose(boxes[0], target, atol=1e-6) and objectness.item() == 12.0


def test_decode_takes_the_highest_objectness_and_clips_to_the_image():
    head = detection_head("skynet")
    out = torch.zeros(2, 2, 5, 2, 4)
    out[0, 1, 4, 1, 3] = 2.0  # anchor 1, bottom-right cell: a box of the anchor's size at the cell centre
    out[1, 0, 4, 0, 0] = 1.0
    out[1, 0, 2:4, 0, 0] = 3.0  # e^3 x the anchor: far larger than the image
    boxes, _ = decode(out.reshape(2, 10, 2, 4), head)
    aw, ah = head.anchor_fractions()[1]
    expected = torch.tensor([3.5 / 4 - aw / 2, 1.5 / 2 - ah / 2, 3.5 / 4 + aw / 2, 1.5 / 2 + ah / 2]).clamp(0, 1)
    assert torch.allclose(boxes[0], expected, atol=1e-6)
    aw, ah = head.anchor_fractions()[0]
    assert boxes[1].tolist() == [0.0, 0.0, pytest.approx(0.125 + math.e ** 3 * aw / 2), 1.0]  # 0.25 + e^3 ah / 2 > 1
    with pytest.raises(DataError, match=r"\[B, 10, gh, gw\]"):
        decode(torch.zeros(1, 36, 2, 4), head)


def test_loss_is_low_for_a_perfect_encoding_and_high_for_a_wrong_one():
    head = detection_head("ultranet")
    target = torch.tensor([[0.30, 0.40, 0.55, 0.90]])
    anchor, gy, gx = (t.item() for t in responsible(target, head, (4, 8)))
    perfect = _encode(head, target[0], (4, 8), anchor, gy, gx)
    wrong = _encode(head, torch.tensor([0.0, 0.0, 0.1, 0.2]), (4, 8), anchor, 0, 0)
    assert detection_loss(perfect, target, head) < 0.1 < 2.0 < detection_loss(wrong, target, head)


def test_the_loss_trains_a_small_ultranet():
    torch.manual_seed(0)
    head = detection_head("ultranet")
    model = build_model("ultranet", num_classes=head.channels, input_shape=(3, 32, 64))
    x = torch.randn(8, 3, 32, 64)
    target = torch.tensor([[0.1, 0.1, 0.4, 0.6], [0.5, 0.3, 0.9, 0.9]]).repeat(4, 1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = detection_loss(model(x), target, head)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    model.eval()
    with torch.no_grad():
        assert mean_iou(decode(model(x), head)[0], target) > 0.5


@pytest.mark.parametrize("model_name", ["ultranet", "skynet"])
def test_integer_boxes_equal_fake_quant_boxes(model_name):
    torch.manual_seed(0)
    head = detection_head(model_name)
    model = build_model(model_name, num_classes=head.channels, input_shape=(3, 32, 64)).eval()
    x = torch.randn(48, 3, 32, 64)
    bits = "4" * (9 if model_name == "ultranet" else 13)
    qmodel = qat_prepare(model, [x[:16]], QATSpec("lsq", bitw=bits, bita=bits))
    qmodel.eval()
    sync_input_scales(qmodel)
    graph = lower(qmodel)
    with torch.no_grad():
        fake = decode(qmodel(x), head)[0]
    integer = decode(engine.predict(graph, x), head)[0]
    assert torch.equal(fake, integer)
    assert len(set(map(tuple, fake.tolist()))) > 1  # not a degenerate all-equal answer
