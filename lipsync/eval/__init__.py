"""Evaluation: quality metrics (metrics.py), the self-reconstruction evaluation (evaluate.py) and
mouth-aperture statistics of dubs (aperture.py).

Import from the submodules (`from lipsync.eval.evaluate import evaluate`): the package itself
imports nothing, so a dub worker that needs aperture.py does not pay for torchmetrics and the
training code that evaluate.py brings (a cold start cost; docs/BENCHMARKS.md).
"""
