"""The build stage (PyTorch, open_clip; the ``train`` extra): the frozen CLIP backbone, head kinds and their
training, feature extraction, the concept vocabulary and its text-tower directions, demo data.

Nothing in the runtime or tools imports this package.
"""
