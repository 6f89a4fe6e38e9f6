"""Pruning: unstructured magnitude pruning with masks kept through fine-tuning and QAT
(bitsmith.prune.magnitude)."""

from bitsmith.prune.magnitude import (
    SCHEDULES,
    SCOPES,
    WeightMask,
    agp_sparsity,
    apply_masks,
    current_masks,
    magnitude_masks,
    prunable_layers,
    prune_finetune,
    quantize_pruned,
    remove_masks,
    sparsity_of,
)

__all__ = ["SCHEDULES", "SCOPES", "WeightMask", "agp_sparsity", "apply_masks", "current_masks", "magnitude_masks",
           "prunable_layers", "prune_finetune", "quantize_pruned", "remove_masks", "sparsity_of"]
