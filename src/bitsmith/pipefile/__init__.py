"""Declarative pipelines: `bitsmith run pipeline.toml` (docs/user-guide.md, "Pipelines").

A TOML file names stages (train, prune, search, quantize, qat, export, verify, rtl, cim, report),
each one bitsmith command with its options, and which stage's output each reads (`from`).
`spec` reads and checks the file, `kinds` lists the stage kinds and their settings, `jobs` runs
them, `cache` decides what is already done (content-hash keys, stage records), `runner` plans and
runs, `locate` finds the line of a key for error messages.

This package sits above the jobs it strings together (bitsmith.pipeline, verify, search, prune)
and below the command line.
"""

from bitsmith.pipefile.cache import Step, make_plan
from bitsmith.pipefile.runner import run_pipeline
from bitsmith.pipefile.spec import Pipeline, Stage, load_pipeline

__all__ = ["Pipeline", "Stage", "Step", "load_pipeline", "make_plan", "run_pipeline"]
