"""Benchmark tasks: no work, just count completions in Redis so the benchmark knows when all ran.

The counter lives in the broker's Redis (the URL Celery reads), so finishing N tasks is one
GET away, whatever the result backend or acknowledgement settings are.
"""

import os
import time

import redis
from celery import Celery

app = Celery("transcritor")
_counter = redis.Redis.from_url(os.environ["CELERY_BROKER_URL"])


@app.task(name="src.bench_tasks.count", ignore_result=True)
def count(key: str, payload: str = "", seconds: float = 0.0) -> int:
    """Sleep `seconds`, then count one completion under `key`; the payload is only carried."""
    time.sleep(seconds)
    return int(_counter.incr(key)) + 0 * len(payload)
