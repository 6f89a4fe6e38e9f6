"""Pruning: keep-masks kept through fine-tuning and QAT (bitsmith.prune.magnitude) from unstructured
magnitude pruning (magnitude), N:M sparsity (nm) and 3×3 pattern + connectivity pruning (pattern)."""

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
from bitsmith.prune.nm import is_nm, nm_mask, nm_masks
from bitsmith.prune.pattern import pattern_candidates, pattern_library, pattern_masks

__all__ = ["SCHEDULES", "SCOPES", "WeightMask", "agp_sparsity", "apply_masks", "current_masks", "magnitude_masks",
           "prunable_layers", "prune_finetune", "quantize_pruned", "remove_masks", "sparsity_of", "is_nm", "nm_mask",
           "nm_masks", "pattern_candidates", "pattern_library", "pattern_masks"]
