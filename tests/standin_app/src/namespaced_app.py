"""A Django-style app: settings read from an object under the `CELERY_` namespace.

With a namespace, Celery looks keys up as `CELERY_<NAME>`; the platform's settings must still
take effect in the worker.
"""

from celery import Celery


class DjangoSettings:
    """Settings as a Django project would hold them."""

    CELERY_TASK_ACKS_LATE = False
    CELERY_WORKER_PREFETCH_MULTIPLIER = 8
    CELERY_TASK_TIME_LIMIT = 77777
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 7}  # noqa: RUF012


app = Celery("namespaced", include=["src.tasks"])
app.config_from_object(DjangoSettings, namespace="CELERY")
