"""Stand-in tasks: the user's PDF task (fake work) and a counter for redelivery tests."""

import os
import socket
import time
from pathlib import Path

import redis

from src.celery_app import app


@app.task(name="src.tasks.process_pdf_task")
def process_pdf_task(file_content_bytes: bytes, filename: str) -> int:
    """Pretend to transcribe a PDF: sleep STANDIN_PDF_SECONDS, return its size in bytes."""
    time.sleep(float(os.environ.get("STANDIN_PDF_SECONDS", "0.1")))
    return len(file_content_bytes)


@app.task(name="src.tasks.record_execution", acks_late=True)
def record_execution(path: str, label: str, seconds: float = 0.0) -> str:
    """Append `label` to `path` on start, then sleep: each line is one execution.

    acks_late keeps the message in kombu's unacked hash while it runs, which is the state a
    broker check must never disturb (a restore would run the task twice).
    """
    with Path(path).open("a") as record:
        record.write(f"{label} {os.getpid()} {time.time():.3f}\n")
    time.sleep(seconds)
    return label


@app.task(name="src.tasks.record_in_broker")
def record_in_broker(key: str, seconds: float) -> str:
    """Note which pod starts and finishes this task in the broker's Redis, sleeping between.

    `<key>:starts` gets one entry per execution (two mean the task was redelivered), across
    pods whose /tmp are their own; no delivery options of its own, so the pool's settings rule.
    """
    client = redis.Redis.from_url(os.environ["CELERY_BROKER_URL"], socket_timeout=10)
    pod = os.environ.get("POD_NAME") or socket.gethostname()
    client.rpush(f"{key}:starts", pod)
    time.sleep(seconds)
    client.rpush(f"{key}:finishes", pod)
    return pod
