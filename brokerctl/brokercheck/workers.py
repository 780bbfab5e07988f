"""Worker checks: kombu (control commands) and celery (canary), as the workers' user.

Here the check writes to the broker (a control broadcast, one canary task per queue), so its
kombu connections run without ack emulation: they can never restore or requeue a task that a
worker is running. The reply queue and the canary's result are deleted afterwards.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from brokerctl.brokercheck.config import CheckConfig, Pool
from brokerctl.brokercheck.contract import (
    FAIL,
    PASS,
    WARN,
    Deadline,
)
from brokerctl.brokercheck.report import Report
from brokerctl.brokercheck.sentinel import sentinel_backend_tls, sentinel_transport_options

CONTROL_EXCHANGE = "celery.pidbox"  # Celery's control_exchange "celery" + ".pidbox"
REPLY_EXCHANGE = "reply.celery.pidbox"
CANARY_TASK = "celery.accumulate"  # built into every Celery app: returns args[index]
FINAL_STATES = ("SUCCESS", "FAILURE", "REVOKED")  # celery.states.READY_STATES
RESULT_POLL_SECONDS = 0.01
CELERY_URL_ENV = (
    "CELERY_BROKER_URL",
    "CELERY_BROKER_READ_URL",
    "CELERY_BROKER_WRITE_URL",
    "CELERY_RESULT_BACKEND",
)

SAFE_TRANSPORT_OPTIONS: dict[str, Any] = {
    # Without ack emulation kombu's Redis channel uses the virtual QoS: restore_visible is a
    # no-op and nothing is written to (or restored from) the `unacked` hash. With it, an idle
    # poll of our reply queue (MultiChannelPoller.maybe_restore_messages) requeues every
    # delivery older than *this connection's* visibility_timeout, including the tasks that
    # workers are running: an acks_late task would run twice (tests/integration/
    # test_check_safety.py proves both sides).
    "ack_emulation": False,
    # BRPOP wait per poll (seconds): closing a channel reads its pending BRPOP reply first.
    "polling_interval": 0.1,
    "retry_on_timeout": False,
    "max_retries": 0,  # Connection.default_channel (Celery's producer) retries no connect
}


@dataclass
class ControlReplies:
    """Replies to one broadcast, by worker node name."""

    ping: dict[str, Any] = field(default_factory=dict)
    active_queues: dict[str, Any] = field(default_factory=dict)

    def consumers(self, queue: str) -> list[str]:
        """Workers that consume `queue`."""
        return sorted(
            node for node, queues in self.active_queues.items() if queue in _queue_names(queues)
        )

    def serving(self, pool: Pool) -> list[str]:
        """Workers that consume every queue of `pool`."""
        return sorted(
            node
            for node, queues in self.active_queues.items()
            if set(pool.queues) <= _queue_names(queues)
        )

    def queue_declaration(self, queue: str) -> dict[str, Any] | None:
        """How a consumer declared `queue` (exchange, routing key), to route the canary alike."""
        for node in self.consumers(queue):
            for declared in self.active_queues[node]:
                if isinstance(declared, dict) and declared.get("name") == queue:
                    return declared
        return None


def _queue_names(queues: Any) -> set[str]:
    """Names in one worker's active_queues reply."""
    if not isinstance(queues, list):
        return set()
    return {q.get("name") for q in queues if isinstance(q, dict)}


def check_workers(
    config: CheckConfig, report: Report, deadline: Deadline, depths: Mapping[str, int]
) -> None:
    """Workers answer a control ping, every pool's queues have consumers, canaries run.

    `depths` (messages waiting per queue) tells a stuck canary from one queued behind tasks.
    """
    with _without_celery_url_env():
        try:
            replies = _broadcast_ping_and_queues(config, deadline)
        except Exception as error:
            report.add(
                "workers",
                FAIL,
                f"control broadcast failed: {type(error).__name__}: {error}",
                f">= {config.expected_workers} answer",
                "check the workers' URL (user celery, password) and its ACL",
            )
            return
        _report_workers(report, config, replies)
        if config.canary and config.result_backend_url:
            _run_canaries(report, config, replies, deadline, depths)


@contextmanager
def _without_celery_url_env() -> Iterator[None]:
    """Hide CELERY_BROKER_URL & co while Celery runs here: they beat any URL given to it."""
    saved = {name: os.environ.pop(name) for name in CELERY_URL_ENV if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _kombu_connection(config: CheckConfig, timeout: float) -> Any:
    """Return a kombu connection that cannot restore unacked messages nor retry for long.

    Behind Sentinel it finds the master the way the workers do (kombu's sentinel transport).
    """
    from kombu import Connection

    url = config.worker_url
    options = SAFE_TRANSPORT_OPTIONS | {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        **sentinel_transport_options(config, url, timeout),
    }
    return Connection(url, connect_timeout=timeout, transport_options=options)


def _broadcast_ping_and_queues(config: CheckConfig, deadline: Deadline) -> ControlReplies:
    """Broadcast `ping` and `active_queues` once; collect until enough answered or time is up.

    Like `celery inspect`, but it stops as soon as the expected workers answered and every
    pool is served, gives the canary the rest of the time, and deletes its reply queue.
    """
    window = deadline.remaining() * (0.5 if config.canary and config.result_backend_url else 1)
    window_end = time.monotonic() + window
    with _kombu_connection(config, deadline.step()) as connection:
        connection.ensure_connection(max_retries=0)  # kombu's default retries once, after 2 s
        channel = connection.channel()
        channel.do_restore = False  # belt and braces: never requeue on close
        try:
            return _collect_replies(connection, channel, config, window_end)
        finally:
            channel.close()


def _collect_replies(
    connection: Any, channel: Any, config: CheckConfig, window_end: float
) -> ControlReplies:
    """Declare a reply queue, publish both commands, drain replies, delete the reply queue."""
    from kombu import Consumer, Exchange, Producer, Queue

    oid = uuid.uuid4().hex
    reply_exchange = Exchange(REPLY_EXCHANGE, "direct", durable=False, delivery_mode="transient")
    # No x-expires: the binding is permanent until we delete the queue below, so nothing is
    # left in kombu's binding-deadline set for sweepers to find.
    reply_queue = Queue(
        f"{oid}.{REPLY_EXCHANGE}", reply_exchange, routing_key=oid, durable=False, auto_delete=True
    )
    control = Exchange(CONTROL_EXCHANGE, "fanout", durable=False, delivery_mode="transient")
    replies = ControlReplies()
    tickets = {uuid.uuid4().hex: command for command in ("ping", "active_queues")}

    def on_reply(body: Any, message: Any) -> None:
        command = tickets.get(message.headers.get("ticket"))
        if command is not None and isinstance(body, dict):
            getattr(replies, command).update(body)

    try:
        with Consumer(channel, [reply_queue], callbacks=[on_reply], no_ack=True, accept=["json"]):
            producer = Producer(channel, auto_declare=False)
            for ticket, command in tickets.items():
                producer.publish(
                    {
                        "method": command,
                        "arguments": {},
                        "destination": None,
                        "pattern": None,
                        "matcher": None,
                        "ticket": ticket,
                        "reply_to": {"exchange": REPLY_EXCHANGE, "routing_key": oid},
                    },
                    exchange=control,
                    declare=[control],
                    serializer="json",
                    retry=False,
                    headers={
                        "clock": 0,
                        "expires": time.time() + max(window_end - time.monotonic(), 0),
                    },
                )
            _drain_until(connection, window_end, lambda: _enough_replies(replies, config))
    finally:
        channel.queue_delete(reply_queue.name)
    return replies


def _drain_until(connection: Any, end: float, done: Callable[[], bool]) -> None:
    """Process replies until `done()` or the monotonic time `end`."""
    while not done():
        left = end - time.monotonic()
        if left <= 0:
            return
        try:
            connection.drain_events(timeout=min(left, 0.25))
        except TimeoutError:
            continue


def _enough_replies(replies: ControlReplies, config: CheckConfig) -> bool:
    """Stop waiting once the expected workers answered both commands and every pool is served."""
    answered = set(replies.ping)
    if len(answered) < config.expected_workers or not answered <= set(replies.active_queues):
        return False
    return all(
        all(replies.consumers(queue) for queue in pool.queues)
        and len(replies.serving(pool)) >= pool.expected_replicas
        for pool in config.pools
    ) and all(replies.consumers(queue) for queue in config.queues)


def _report_workers(report: Report, config: CheckConfig, replies: ControlReplies) -> None:
    """One entry for the worker count, one per pool for its queues' consumers."""
    expected = config.expected_workers
    names = ", ".join(sorted(replies.ping)) or "none"
    measured = f"{len(replies.ping)} answered ({names})"
    if len(replies.ping) >= expected:
        report.add("workers", PASS, measured, f">= {expected} answer the control ping")
    else:
        report.add(
            "workers",
            FAIL,
            measured,
            f">= {expected} answer the control ping",
            "workers are not running, not ready, or connected to another broker/DB "
            "(compare CELERY_BROKER_URL with this URL); see the pods' logs",
        )
    pools = config.pools or (Pool("default", config.queues),)
    for pool in pools:
        _report_pool(report, pool, replies)


def _report_pool(report: Report, pool: Pool, replies: ControlReplies) -> None:
    """Fail when a queue has no consumer; warn when fewer replicas than expected serve it all."""
    consumers = {queue: replies.consumers(queue) for queue in pool.queues}
    serving = replies.serving(pool)
    replicas = pool.expected_replicas
    measured = "; ".join(f"{queue}: {len(nodes)} consumers" for queue, nodes in consumers.items())
    measured += f"; {len(serving)} workers consume all"
    expected = f"every queue consumed; {replicas} workers consume all"
    idle = [queue for queue, nodes in consumers.items() if not nodes]
    if idle and replicas == 0:
        report.add(
            f"pool:{pool.name}",
            WARN,
            measured,
            "0 replicas: no consumer expected",
            f"the pool runs no worker now (scaled to zero, or paused): tasks sent to "
            f"{', '.join(idle)} wait until it scales up",
        )
    elif idle:
        report.add(
            f"pool:{pool.name}",
            FAIL,
            measured,
            expected,
            f"no worker consumes {', '.join(idle)}: tasks sent there wait forever; "
            "check the pool's -Q/--queues and that its pods are ready",
        )
    elif len(serving) < replicas:
        report.add(
            f"pool:{pool.name}",
            WARN,
            measured,
            expected,
            "fewer workers than replicas answered (rolling update, or pods not ready)",
        )
    else:
        report.add(f"pool:{pool.name}", PASS, measured, expected)


def _run_canaries(
    report: Report,
    config: CheckConfig,
    replies: ControlReplies,
    deadline: Deadline,
    depths: Mapping[str, int],
) -> None:
    """Send `celery.accumulate` to each consumed queue, read each result back, forget it."""
    declarations = {q: replies.queue_declaration(q) for q in config.queues}
    targets = {queue: declared for queue, declared in declarations.items() if declared}
    if not targets:
        return
    app = _canary_app(config, deadline.step())
    try:
        canaries = [
            _send_canary(app, queue, declared, deadline, depths.get(queue, 0))
            for queue, declared in targets.items()
        ]
        for canary in canaries:
            _await_canary(report, canary, deadline)
    except Exception as error:
        report.add(
            "canary",
            FAIL,
            f"{type(error).__name__}: {error}",
            "canary sent and its result read back",
            "check the result backend URL (user, DB) and that workers use the same one",
        )
    finally:
        app.close()


@dataclass(frozen=True)
class Canary:
    """One canary in flight: where it went, what it must return, what waited before it."""

    queue: str
    token: str
    result: Any
    started: float
    queued_ahead: int


def _canary_app(config: CheckConfig, timeout: float) -> Any:
    """Return a throw-away Celery app on the workers' broker and backend, safe and bounded."""
    from celery import Celery

    app = Celery(
        "brokercheck",
        broker=config.worker_url,
        backend=config.result_backend_url,
        set_as_current=False,
    )
    backend_url = config.result_backend_url or ""
    app.conf.update(
        broker_transport_options=SAFE_TRANSPORT_OPTIONS
        | {"socket_timeout": timeout, "socket_connect_timeout": timeout}
        | sentinel_transport_options(config, config.worker_url, timeout),
        broker_connection_timeout=timeout,
        broker_connection_retry=False,
        broker_connection_retry_on_startup=False,
        broker_connection_max_retries=0,
        task_publish_retry=False,
        redis_socket_timeout=timeout,
        redis_socket_connect_timeout=timeout,
        redis_retry_on_timeout=False,
        result_backend_transport_options={"retry_policy": {"max_retries": 0}}
        | sentinel_transport_options(config, backend_url, timeout),
        # Celery's Sentinel backend reaches a TLS master only with this (not the URL's query).
        redis_backend_use_ssl=sentinel_backend_tls(config, backend_url) or None,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
    )
    return app


def _send_canary(
    app: Any, queue: str, declared: Mapping[str, Any], deadline: Deadline, queued_ahead: int
) -> Canary:
    """Publish the canary the way the consumer declared the queue; declare nothing new."""
    from kombu import Exchange, Queue

    exchange_info = declared.get("exchange") or {}
    exchange = Exchange(exchange_info.get("name", queue), exchange_info.get("type", "direct"))
    target = Queue(queue, exchange, routing_key=declared.get("routing_key", queue))
    token = f"brokercheck-canary-{uuid.uuid4().hex}"
    started = time.monotonic()
    result = app.send_task(
        CANARY_TASK,
        args=[token],
        kwargs={"index": 0},
        queue=target,
        declare=[],
        expires=max(deadline.remaining(), 1.0),  # a late canary is discarded, not run
        retry=False,
    )
    return Canary(queue, token, result, started, queued_ahead)


def _await_canary(report: Report, canary: Canary, deadline: Deadline) -> None:
    """Wait for one canary's result within the deadline and report its round trip.

    Queues are FIFO: a canary sent behind waiting tasks (minutes-long PDFs) cannot come back
    in time, which says nothing about the broker; that is a warning, not a failure.
    """
    name = f"canary:{canary.queue}"
    expected = f"{CANARY_TASK} runs and its result is read back within {deadline.seconds:g} s"
    try:
        meta = _wait_for_result(canary.result, deadline)
    except Exception as error:
        measured = f"no result ({type(error).__name__}: {error})"
        if canary.queued_ahead:
            report.add(
                name,
                WARN,
                f"{measured}; {canary.queued_ahead} tasks were queued ahead",
                expected,
                "the canary waits behind the backlog; rerun when it drained",
            )
        else:
            report.add(
                name,
                FAIL,
                measured,
                expected,
                "the queue's workers may all be busy with long tasks (rerun with a longer "
                "--timeout), or they store results elsewhere than this result backend",
            )
        return
    finally:
        _forget(canary.result)
    elapsed_ms = (time.monotonic() - canary.started) * 1000
    if meta.get("status") == "SUCCESS" and meta.get("result") == canary.token:
        report.add(name, PASS, f"round trip in {elapsed_ms:.0f} ms", expected)
    else:
        report.add(
            name,
            FAIL,
            f"{meta.get('status')}: {meta.get('result')!r}",
            expected,
            "the worker ran the canary but it did not return its argument",
        )


def _wait_for_result(result: Any, deadline: Deadline) -> dict[str, Any]:
    """Poll the canary's result until it is final; raise TimeoutError at the deadline.

    Polling (one GET each time) instead of `AsyncResult.get`: Celery's pub/sub drainer checks
    its timeout only between one-second waits, so it can overrun the deadline by a second.
    """
    while True:
        meta = result.backend.get_task_meta(result.id)
        if meta.get("status") in FINAL_STATES:
            return meta
        if deadline.remaining() <= 0:
            msg = "no result before the deadline"
            raise TimeoutError(msg)
        time.sleep(min(RESULT_POLL_SECONDS, deadline.remaining()))


def _forget(result: Any) -> None:
    """Delete the canary's stored result so the check leaves no key behind."""
    try:
        result.forget()
    except Exception as error:  # the report already says whether the canary worked
        logging.getLogger("brokercheck").warning("could not delete canary result: %s", error)
