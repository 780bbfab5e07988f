"""The stand-in app behind Sentinel: the master name and Sentinel's password from the environment.

kombu and Celery find the master through Sentinel only with transport options (`master_name`,
`sentinel_kwargs`), which no URL can carry: the platform's wiring module sets them in the
worker pods; this module does the same for tests until they feed that module to a worker.
"""

import os

from src.celery_app import app

_options = {
    "master_name": os.environ["BROKER_SENTINEL_MASTER"],
    "sentinel_kwargs": {"password": os.environ["BROKER_SENTINEL_PASSWORD"]},
}
app.conf.update(broker_transport_options=_options, result_backend_transport_options=_options)
