"""A steady producer, as the user's web app would be: publishes at a fixed rate, logs each outcome.

Run in a pod of the workers' image (`python -m src.steady_producer`): it imports the platform's
wiring module (celery_platform_wiring), so it connects exactly as the workers do (Sentinel URLs,
the Sentinel password from the client Secret, the same timeouts and publish retries). Each
publish sends `src.tasks.record_execution(RECORD_FILE, label)`, which the worker that runs it
appends to its own record file; comparing those records with this log counts lost and doubled
tasks (tests/ha).

One line per publish on stdout (the pod's log), times from the shared wall clock:
    ack <label> <started> <finished>          the broker acknowledged the publish
    fail <label> <started> <finished> <error>  the publish raised after Celery's retries
Stops after PRODUCER_SECONDS, or on SIGTERM (as PID 1 it needs a handler for that).
"""

import os
import signal
import sys
import time
import traceback

from celery_platform_wiring import app

RECORD_TASK = "src.tasks.record_execution"
RECORD_FILE = os.environ.get("RECORD_FILE", "/tmp/e2e-executions.log")
RATE = float(os.environ.get("PRODUCER_RATE", "20"))
SECONDS = float(os.environ.get("PRODUCER_SECONDS", "600"))
PREFIX = os.environ.get("PRODUCER_PREFIX", "p")
QUEUES = os.environ.get("PRODUCER_QUEUES", "celery").split(",")
"""Published to in turn; each label starts with its queue (`<queue>:<prefix><n>`)."""

stopping = False


def stop(*_: object) -> None:
    """SIGTERM: finish the publish in progress, then exit."""
    global stopping  # the loop's only way to hear the signal
    stopping = True


def main() -> None:
    """Publish every 1/RATE seconds until told to stop; a slow publish delays the next ones."""
    signal.signal(signal.SIGTERM, stop)
    interval = 1.0 / RATE
    started = time.monotonic()
    next_at = started
    sequence = 0
    print(f"start {time.time():.3f} rate={RATE}", flush=True)
    while not stopping and time.monotonic() - started < SECONDS:
        queue = QUEUES[sequence % len(QUEUES)]
        label = f"{queue}:{PREFIX}{sequence}"
        began = time.time()
        try:
            app.send_task(RECORD_TASK, args=[RECORD_FILE, label, 0.0], queue=queue)
        except Exception as error:  # every failure is a data point, not the end of the run
            print(f"fail {label} {began:.3f} {time.time():.3f} {type(error).__name__}", flush=True)
            if os.environ.get("PRODUCER_TRACEBACKS"):
                traceback.print_exc()
        else:
            print(f"ack {label} {began:.3f} {time.time():.3f}", flush=True)
        sequence += 1
        next_at = max(next_at + interval, time.monotonic())  # no burst after a stall
        time.sleep(max(0.0, next_at - time.monotonic()))
    print(f"stop {time.time():.3f} published={sequence}", flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
