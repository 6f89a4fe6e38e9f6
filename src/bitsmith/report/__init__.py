"""The HTML report (`bitsmith report`): one self-contained page of everything bitsmith measured
about some runs and graphs: model summary, training curves, weight and activation histograms with
the ranges a quantizer may choose, quantization results, QAT curves, integer parameters, the
accelerator's cost, verification status, and the sweeps and searches found beside them.

Rendered with Jinja2 from templates/report.html.j2 and matplotlib (Agg), figures embedded as PNG
data URIs: the file opens from disk, offline. Floor 3: it reads runs (front end), graphs and
back-end results.
"""

from bitsmith.report.build import REPORT, build_report

__all__ = ["REPORT", "build_report"]
