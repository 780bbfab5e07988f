"""Script watchdog benchmark: how long a runaway Lua script keeps the broker BUSY.

    .venv/bin/python -m bench.broker_script_watchdog [--runs 5]

Boots the prod stack's rendered broker (redis.conf with busy-reply-threshold, the start
script, the ACL) on Debian's redis-server with its rendered reloader sidecar beside it, as
tests/integration/test_broker_script_watchdog.py does. Each run the `keda` user EVALs
`while true do end`; the figures are the time from the script's start to Redis's first BUSY
answer, and from that BUSY until a celery-user client is served again (LPUSH then BRPOP).
Target: served again within SCRIPT_KILL_BOUND_SECONDS of the script's start (the bound the
liveness probe waits on BUSY), with the same redis-server process throughout.
"""

from __future__ import annotations

import argparse
import statistics
import time

import redis

from components import redis_config
from tests.integration.test_broker_script_watchdog import RunawayScript, broker_with_watchdog
from tests.support.broker_boot import KEDA_PASSWORD, BootedBroker, admin_ping
from tests.support.redis_server import CELERY_PASSWORD

LIMIT_SECONDS = 60.0


def first_busy(server: BootedBroker) -> float:
    """Return when Redis first answers BUSY (monotonic time)."""
    deadline = time.monotonic() + LIMIT_SECONDS
    while time.monotonic() < deadline:
        if admin_ping(server).startswith(b"-BUSY"):
            return time.monotonic()
        time.sleep(0.005)
    msg = "Redis never answered BUSY"
    raise RuntimeError(msg)


def served(client: redis.Redis) -> float:
    """Return when a celery-user LPUSH and BRPOP first succeed (monotonic time)."""
    deadline = time.monotonic() + LIMIT_SECONDS
    while time.monotonic() < deadline:
        try:
            client.lpush("celery", "task")
            client.brpop(["celery"], timeout=1)
            return time.monotonic()
        except redis.ResponseError as error:
            if not str(error).startswith("BUSY"):
                raise
            time.sleep(0.005)
    msg = "celery was not served again"
    raise RuntimeError(msg)


def main() -> None:
    """Measure `--runs` runaway scripts and print each run and the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    to_busy, busy_to_served, pids = [], [], set()
    with broker_with_watchdog() as (_broker, server):
        celery = server.client("celery", CELERY_PASSWORD)
        for run in range(args.runs):
            runaway = RunawayScript(server, "keda", KEDA_PASSWORD)
            started = time.monotonic()
            runaway.start()
            busy = first_busy(server)
            done = served(celery)
            runaway.join(LIMIT_SECONDS)
            pids.add(server.admin().info("server")["process_id"])
            to_busy.append(busy - started)
            busy_to_served.append(done - busy)
            print(
                f"run {run + 1}: BUSY after {busy - started:.2f} s, served {done - busy:.2f} s "
                f"after BUSY ({done - started:.2f} s after the script started)"
            )
    total = [a + b for a, b in zip(to_busy, busy_to_served, strict=True)]
    print(
        f"median: start->BUSY {statistics.median(to_busy):.2f} s, "
        f"BUSY->served {statistics.median(busy_to_served):.2f} s, "
        f"start->served {statistics.median(total):.2f} s (max {max(total):.2f} s; "
        f"bound {redis_config.SCRIPT_KILL_BOUND_SECONDS} s); "
        f"redis-server processes seen: {len(pids)}"
    )


if __name__ == "__main__":
    main()
