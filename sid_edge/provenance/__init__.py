"""Provenance signals beside the CLIP score: C2PA content credentials, the IPTC digital source type, generator
metadata and Stable Diffusion's invisible watermark (torch-free; the ``provenance`` extra brings c2pa-python,
defusedxml and PyWavelets, invisible-watermark is installed with ``--no-deps``).

    >>> from sid_edge.provenance import ProvenanceReader
    >>> reader = ProvenanceReader(c2pa_trust="trust.pem", check_watermark=True)
    >>> for s in reader.read("image.png").signals:
    ...     print(s.kind, s.trust, s.assertion)

    >>> det = Detector.load("my-detector"); attach(det)   # every Prediction now carries .provenance

The signals never change p_synthetic: the CLIP score stays pixel-only.
"""

from sid_edge.provenance.containers import Limits
from sid_edge.provenance.reader import ProvenanceReader, ProvenanceResult, read_provenance
from sid_edge.provenance.signals import KINDS, TRUST_LEVELS, Signal, csv_cell

__all__ = ["KINDS", "TRUST_LEVELS", "Limits", "ProvenanceReader", "ProvenanceResult", "Signal", "attach", "csv_cell",
           "read_provenance"]


def attach(detector, reader: ProvenanceReader | None = None, **options) -> ProvenanceReader:
    """Make ``detector`` (a :class:`~sid_edge.runtime.detector.Detector`) read provenance for every image it scores:
    each Prediction's ``provenance`` becomes the list of signal dicts (see :meth:`Signal.to_dict`). ``options`` go
    to :class:`ProvenanceReader` when no ``reader`` is given. Returns the reader."""
    reader = reader or ProvenanceReader(**options)
    detector.provenance_reader = reader
    return reader
