"""A task with no delivery options of its own, so only the pool's settings decide acks_late.

`src.tasks.record_execution` sets `acks_late=True` itself; a shutdown test that used it would
not prove that the platform's `task_acks_late` reaches the worker.
"""

import os
import time
from pathlib import Path

from celery import Celery

app = Celery("transcritor")


@app.task(name="src.plain_tasks.record_plain")
def record_plain(path: str, label: str, seconds: float = 0.0) -> str:
    """Append `label` to `path` on start, sleep, return `label`: each line is one execution."""
    with Path(path).open("a") as record:
        record.write(f"{label} {os.getpid()} {time.time():.3f}\n")
    time.sleep(seconds)
    return label
