"""A web studio and HTTP API over a run's sampling pipeline: ``tta-run RECIPE serve``.

:class:`~tta_core.serving.studio.Studio` holds the loaded pipeline and the queue (one
generation at a time per device, in order); :mod:`~tta_core.serving.http` serves the page and
the JSON API on the standard library's threaded HTTP server. From Python::

    from tta_core.sampling import load_pipeline
    from tta_core.serving import Studio, start

    studio = Studio(load_pipeline("recipes/quickstart.yaml"), out="runs/quickstart/samples/studio")
    server, thread = start(studio, port=0)   # server.url: http://127.0.0.1:PORT/
"""

from .http import StudioServer, is_loopback, serve_forever, start
from .studio import Busy, Job, Limits, RequestError, Studio

__all__ = ["Busy", "Job", "Limits", "RequestError", "Studio", "StudioServer", "is_loopback", "serve_forever", "start"]
