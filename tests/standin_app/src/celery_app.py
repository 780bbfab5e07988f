"""The stand-in app: named like the user's (`transcritor`), configured only by environment.

Celery gives CELERY_BROKER_URL and CELERY_RESULT_BACKEND precedence over constructor arguments,
so the worker's Secret decides where it connects, as in production.
"""

from celery import Celery

app = Celery("transcritor", include=["src.tasks"])
app.conf.update(
    task_serializer="json",  # the user's tasks carry PDF bytes, base64 inside JSON
    accept_content=["json"],
    result_expires=3600,
    broker_connection_retry_on_startup=True,
)
