"""The detection service: ``sid-edge serve`` (FastAPI on uvicorn) and its batching core (torch-free).

* :class:`~sid_edge.service.core.BatchingDetector` — cross-request dynamic batching around a Detector, usable
  in-process without HTTP (``await bd.detect([...])``);
* :func:`~sid_edge.service.app.create_app` — the HTTP API (``/v1/detect``, ``/v1/model``, ``/healthz``,
  ``/readyz``, ``/metrics``);
* :func:`~sid_edge.service.server.serve` — uvicorn with a draining stop on SIGTERM.

Needs the ``serve`` extra (fastapi, uvicorn, prometheus_client, python-multipart). This package sits beside
``sid_edge.tools``: it imports the runtime and the artifact, nothing below imports it.
"""

from sid_edge.service.core import BatchingDetector, NotAccepting, Overloaded, ServiceError
from sid_edge.service.limits import ImageLimits, ImageRefused, prepare_image

__all__ = ["BatchingDetector", "NotAccepting", "Overloaded", "ServiceError", "ImageLimits", "ImageRefused",
           "prepare_image"]
