"""Tools on top of the runtime (torch-free): evaluation (scoring, metrics, reports), explanations, dataset readers
and per-image caches.
"""
