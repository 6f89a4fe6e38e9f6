"""An independent oracle: the IntegerGraph computed in plain int64 numpy, from docs/arithmetic.md.

No torch arithmetic, no floating point except the float32 input division the spec prescribes, and
nothing of bitsmith's engine (bitsmith.integer.engine / reference): it reads only graph.json-level
facts (node ops, attributes, tensor specs) and the stored integer parameters (through
`IntegerGraph.weight_codes`, which expands codebooks). Tests of the engine (tests/integer/) and of
the front end (tests/quant/) compare with it; keep it independent of the code it checks.
"""

import numpy as np

# -- the reference, straight from docs/arithmetic.md ----------------------------------------


def ref_quantize_input(x, spec):
    q = np.rint(x.astype(np.float32) / np.float32(spec.scale)).astype(np.int64)  # rint: half to even
    return np.clip(q + spec.zero_point, spec.qmin, spec.qmax)


def ref_conv(v, w, b, stride, padding, dilation, groups):
    n, c, h, wd = v.shape
    o, cg, kh, kw = w.shape
    if isinstance(padding, int):
        padding = [padding] * 4
    top, left, bottom, right = padding if len(padding) == 4 else (padding[0], padding[1], padding[0], padding[1])
    v = np.pad(v, ((0, 0), (0, 0), (top, bottom), (left, right)))  # zero = real 0 after centring
    oh = (v.shape[2] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (v.shape[3] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    out = np.zeros((n, o, oh, ow), dtype=np.int64)
    og = o // groups
    for g in range(groups):
        xs = v[:, g * cg:(g + 1) * cg]
        ws = w[g * og:(g + 1) * og]
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, :, i * dilation[0]: i * dilation[0] + stride[0] * (oh - 1) + 1: stride[0],
                           j * dilation[1]: j * dilation[1] + stride[1] * (ow - 1) + 1: stride[1]]
                out[:, g * og:(g + 1) * og] += np.tensordot(patch, ws[:, :, i, j], axes=([1], [1])).transpose(0, 3, 1, 2)
    if b is not None:
        out += b.reshape(1, -1, 1, 1)
    return out


def ref_requant(v, m, s, zp, lo, hi):
    if m.size > 1:
        m = m.reshape((1, -1) + (1,) * (v.ndim - 2))
        s = s.reshape((1, -1) + (1,) * (v.ndim - 2))
    rounding = np.where(s > 0, np.left_shift(np.int64(1), np.maximum(s - 1, 0)), 0)
    return np.clip(zp + np.right_shift(v * m + rounding, s), lo, hi)


def ref_windows(v, k, stride):
    n, c, h, w = v.shape
    oh, ow = (h - k[0]) // stride[0] + 1, (w - k[1]) // stride[1] + 1
    win = np.empty((n, c, oh, ow, k[0] * k[1]), dtype=np.int64)
    for i in range(k[0]):
        for j in range(k[1]):
            win[..., i * k[1] + j] = v[:, :, i: i + stride[0] * (oh - 1) + 1: stride[0], j: j + stride[1] * (ow - 1) + 1: stride[1]]
    return win


def ref_reorg(v, r):
    n, c, h, w = v.shape
    out = np.empty((n, c * r * r, h // r, w // r), dtype=np.int64)
    for ch in range(c):
        for i in range(r):
            for j in range(r):
                out[:, ch * r * r + i * r + j] = v[:, ch, i::r, j::r]
    return out


def reference_run(g, x):
    """Every tensor of the graph, computed the slow way."""
    vals = {g.inputs[0]: x.numpy()}
    P = {k: t.numpy().astype(np.int64) for k, t in g.params.items()}
    for node in g.nodes:
        a = node.attrs
        ins = [vals[i] for i in node.inputs]
        in_specs = [g.tensors[i] for i in node.inputs]
        out = g.tensors[node.output]
        centred = ins[0] - in_specs[0].zero_point if in_specs[0].dtype == "int" else None
        if node.op == "QuantizeInput":
            y = ref_quantize_input(ins[0], out)
        elif node.op == "Conv2d":
            b = P[node.params["bias"]] if "bias" in node.params else None
            y = ref_conv(centred, g.weight_codes(node).numpy().astype(np.int64), b, a["stride"], a["padding"], a["dilation"], a["groups"])
        elif node.op == "Linear":
            y = centred @ g.weight_codes(node).numpy().astype(np.int64).T
            if "bias" in node.params:
                y = y + P[node.params["bias"]]
        elif node.op == "Requant":
            y = ref_requant(centred, P[node.params["multiplier"]], P[node.params["shift"]], out.zero_point,
                            a["clamp_min"], a["clamp_max"])
        elif node.op == "MaxPool2d":
            y = ref_windows(ins[0], a["kernel"], a["stride"]).max(axis=-1)
        elif node.op == "AvgPool2d":
            y = ref_windows(centred, a["kernel"], a["stride"]).sum(axis=-1)
        elif node.op == "Flatten":
            y = ins[0].reshape(ins[0].shape[0], -1)
        elif node.op == "Reorg":
            y = ref_reorg(ins[0], a["stride"])
        elif node.op == "Concat":
            y = np.concatenate(ins, axis=1)
        elif node.op == "Add":
            m = P[node.params["multiplier"]]
            y = (ins[0] - in_specs[0].zero_point) * m[0] + (ins[1] - in_specs[1].zero_point) * m[1]
        else:
            raise AssertionError(f"reference has no rule for {node.op}")
        vals[node.output] = y
    return vals
