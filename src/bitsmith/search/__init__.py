"""Mixed-precision search (docs/mixed-precision.md): per-layer bit widths chosen on the
accelerator's own cost (`bitsmith.accel.precision`), by a differentiable supernet (DNAS,
DeepBurning-MixQ style) or by Hessian sensitivities and an integer linear programme (HAWQ-V3 style).

A floor-3 package: it reads float models and data (the front end) and the accelerator's cost
function (a back end), which no floor-2 package may do both of.
"""
