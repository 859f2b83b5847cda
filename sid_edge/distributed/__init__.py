"""Scans that outgrow one machine: ``sid-edge scan --ray`` on Ray Data (optional extra ``sid-edge[ray]``).

Pipeline (see :func:`sid_edge.distributed.scan.ray_scan`):

1. the driver expands the inputs (files, folders, ``@list`` files, parquet datasets, object-store URIs read through
   pyarrow's filesystems) into *units*: one image file, or one parquet row group (:mod:`.inputs`);
2. Ray tasks on CPUs read and decode/preprocess the units (:func:`.stages.decode_units`), exactly as the local
   ``scan`` does;
3. an actor pool (``ActorPoolStrategy``) scores them; each actor loads the artifact once, sha256-verified
   (:class:`.stages.Scorer`);
4. the driver writes the rows as parquet partitions as they arrive (atomic files, so ``--resume`` can skip what is
   done) and, at the end, the CSV/JSONL the user named, in the local scan's row order and format (:mod:`.results`).

This package sits beside ``sid_edge.tools``: it imports the runtime and artifact packages, nothing below imports it.
The runtime stays importable without Ray; ``ray`` and ``pyarrow`` are imported only here.
"""
