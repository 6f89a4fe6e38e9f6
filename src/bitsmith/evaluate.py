"""Test-set accuracy for anything that maps a float batch to class scores (and, for detection,
the decoded boxes and their mean IoU).

The same two functions measure a float nn.Module, a fake-quant model and an integer graph's
predict function, so every accuracy bitsmith reports is computed the same way: fixed order,
no augmentation, argmax along dim 1.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

from bitsmith.data import ArrayDataset, iterate_batches
from bitsmith.detection import AnchorHead, decode, mean_iou
from bitsmith import progress
from bitsmith.errors import DataError

PredictFn = Callable[[torch.Tensor], Any]


def _per_batch(predict_fn: PredictFn, ds: ArrayDataset, input_shape: Sequence[int], batch_size: int,
               reduce: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """`reduce(scores, x)` of every batch in dataset order, concatenated; an nn.Module runs in eval
    mode and is restored after (dropout / batch-norm statistics must not change a measurement)."""
    if len(ds.labels) == 0:
        raise DataError(f"dataset {ds.info.name!r} is empty; there is nothing to evaluate.")
    was_training = isinstance(predict_fn, nn.Module) and predict_fn.training
    if was_training:
        predict_fn.eval()
    try:
        out = []
        with torch.no_grad():
            batches = iterate_batches(ds, batch_size, input_shape, shuffle=False, augment=False)
            for x, _ in progress.steps(batches, "evaluating", total=-(-len(ds.labels) // batch_size)):
                out.append(reduce(torch.as_tensor(predict_fn(x)), x))
    finally:
        if was_training:
            predict_fn.train()
    return torch.cat(out)


def predictions(
    predict_fn: PredictFn, ds: ArrayDataset, input_shape: Sequence[int], batch_size: int = 1000
) -> torch.Tensor:
    """Predicted class (int64, one per image, dataset order) of `predict_fn` over the whole dataset.

    `predict_fn` gets normalised float batches shaped [B, *input_shape] and returns logits (or any
    scores whose argmax along dim 1 is the class). An nn.Module is run in eval mode and restored after.
    """
    def classes(scores: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if scores.ndim != 2 or scores.shape[0] != x.shape[0]:
            raise DataError(
                f"predict function returned shape {list(scores.shape)} for a batch of {x.shape[0]}; "
                "it must return [batch, classes] scores."
            )
        return scores.argmax(dim=1).to(torch.int64)

    return _per_batch(predict_fn, ds, input_shape, batch_size, classes)


def accuracy(predict_fn: PredictFn, ds: ArrayDataset, input_shape: Sequence[int], batch_size: int = 1000) -> float:
    """Top-1 accuracy of `predict_fn` on `ds`, in percent."""
    pred = predictions(predict_fn, ds, input_shape, batch_size)
    labels = torch.as_tensor(ds.labels, dtype=torch.int64)
    return 100.0 * (pred == labels).sum().item() / len(labels)


def predicted_boxes(predict_fn: PredictFn, ds: ArrayDataset, input_shape: Sequence[int], head: AnchorHead,
                    batch_size: int = 500) -> torch.Tensor:
    """One box per image (normalised x1, y1, x2, y2, dataset order) decoded from what `predict_fn`
    returns for each batch: the detection head's real-valued output [B, channels, gh, gw] (a float or
    fake-quant model, or `graph.dequantize(engine.run(graph, x))`). Eval mode as for `predictions`."""
    return _per_batch(predict_fn, ds, input_shape, batch_size, lambda scores, _: decode(scores, head)[0])


def detection_iou(predict_fn: PredictFn, ds: ArrayDataset, input_shape: Sequence[int], head: AnchorHead) -> float:
    """Mean IoU of `predict_fn`'s decoded boxes with the data set's boxes."""
    return mean_iou(predicted_boxes(predict_fn, ds, input_shape, head), ds.labels)
