"""An app that configures itself against the platform: `broker=`, config_from_object, conf.update.

Every value here conflicts with what the platform renders, so a test that reads the running
worker's settings proves the wiring module wins over all three ways an app sets its own.
"""

from celery import Celery


class OwnSettings:
    """What a careless app might ship: early acks, deep prefetch, short visibility."""

    task_acks_late = False
    task_reject_on_worker_lost = False
    worker_prefetch_multiplier = 16
    task_time_limit = 99999
    task_soft_time_limit = 99998
    broker_transport_options = {"visibility_timeout": 5, "socket_timeout": 999}  # noqa: RUF012


app = Celery(
    "self_configured",
    broker="redis://wrong-host.invalid:6379/9",  # CELERY_BROKER_URL must still win
    include=["src.tasks"],
)
app.config_from_object(OwnSettings)
app.conf.update(worker_prefetch_multiplier=32, result_expires=5)
