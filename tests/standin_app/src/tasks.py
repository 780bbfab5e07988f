"""Stand-in tasks: the user's PDF task (fake work) and a counter for redelivery tests."""

import os
import time
from pathlib import Path

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
