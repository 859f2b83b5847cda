"""The artifact contract (standard library, numpy-free where possible): the typed manifest, the names of the files
an artifact holds, the preprocessing rule, hashing and atomic writes.

Every other stage reads and writes artifacts through this package; it imports nothing else of sid_edge.
"""
