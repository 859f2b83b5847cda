"""``sid-edge evaluate``: :mod:`~sid_edge.tools.evaluation.runner` scores datasets with detectors (features shared
per backbone, cached per image); :mod:`~sid_edge.tools.evaluation.metrics` turns scores into AP/mAP, matrices,
plots and reports.
"""
