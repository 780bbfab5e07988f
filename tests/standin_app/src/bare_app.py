"""An app that defines no task: what a worker knows without the user's code."""

from celery import Celery

app = Celery("bare")
