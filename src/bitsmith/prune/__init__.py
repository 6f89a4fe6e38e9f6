"""Pruning: keep-masks kept through fine-tuning and QAT (bitsmith.prune.magnitude) from unstructured
magnitude pruning (magnitude), N:M sparsity (nm) and 3×3 pattern + connectivity pruning (pattern);
structured channel pruning that shrinks the layers with Torch-Pruning (structured), SSL group-lasso
training and removal (ssl), and L1 / L2 weight penalties for fine-tuning (regularise)."""

from bitsmith.prune.magnitude import (
    SCHEDULES,
    SCOPES,
    WeightMask,
    agp_sparsity,
    apply_masks,
    current_masks,
    finetune,
    magnitude_masks,
    prunable_layers,
    prune_finetune,
    quantize_pruned,
    remove_masks,
    sparsity_of,
)
from bitsmith.prune.nm import is_nm, nm_mask, nm_masks
from bitsmith.prune.pattern import pattern_candidates, pattern_library, pattern_masks
from bitsmith.prune.regularise import weight_penalty
from bitsmith.prune.ssl import GROUPS, SSLReport, group_lasso, group_norms, ssl_remove, ssl_train
from bitsmith.prune.structured import CRITERIA, StructuredReport, channel_prune, save_pruned_run

__all__ = ["SCHEDULES", "SCOPES", "WeightMask", "agp_sparsity", "apply_masks", "current_masks", "finetune",
           "magnitude_masks", "prunable_layers", "prune_finetune", "quantize_pruned", "remove_masks", "sparsity_of",
           "is_nm", "nm_mask", "nm_masks", "pattern_candidates", "pattern_library", "pattern_masks", "weight_penalty",
           "GROUPS", "SSLReport", "group_lasso", "group_norms", "ssl_remove", "ssl_train", "CRITERIA",
           "StructuredReport", "channel_prune", "save_pruned_run"]
