"""A client of a deployed broker, run inside the cluster's pod network (a script).

    python tests/realengine/sentinel_client.py publish --count 30 --prefix before \
        --seconds 0.2 --record-file /tmp/executions.log      # {label: task id}
    python tests/realengine/sentinel_client.py status <task id> ...
        # {"master": host, "queued": n, "unacked": [task id], "results": {task id: status}}
    python tests/realengine/sentinel_client.py lengths --queue moved
        # {pod host: n}: the queue's length on every broker pod's Redis, replicas included
    python tests/realengine/sentinel_client.py consume --queue moved
        # [{worker: {"ok": ...}}]: running workers start consuming that queue (remote control)
    python tests/realengine/sentinel_client.py sentinels
        # {pod host: {"master": host, "flags": ..., "down_after_ms": n}}: each Sentinel's view

Started by MultiNodeCluster.run_in_netns, so the per-pod names in the client Secret's URLs
resolve as in a pod. Behind Sentinel it connects the way the README tells an application to:
through the Sentinels named in the URLs (`sentinel://celery:<pw>@<pod>:26379/<db>;...`), with
the Sentinel password in `sentinel_kwargs` and the master's name; a standalone broker's
`redis://` or `rediss://` URLs are used as they are (the move from standalone publishes
before it). Secrets come from the environment (CELERY_BROKER_URL, CELERY_RESULT_BACKEND,
BROKER_SENTINEL_PASSWORD, SENTINEL_MASTER), never argv. With TLS, BROKER_CA_FILE names the CA
to verify Sentinels and Redis against (and their per-pod names: redis-py checks the
hostname), in place of the path the URLs carry for pods. Prints one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.parse
from typing import TYPE_CHECKING

import redis
from redis.sentinel import Sentinel

if TYPE_CHECKING:
    from celery import Celery

RECORD_TASK = "src.tasks.record_execution"
TIMEOUT = 5.0
"""Seconds any one connection or command may take."""


def tls_options() -> dict[str, object]:
    """Return redis-py's TLS options when BROKER_CA_FILE is set (the stack serves TLS)."""
    ca_file = os.environ.get("BROKER_CA_FILE")
    return {"ssl": True, "ssl_cert_reqs": "required", "ssl_ca_certs": ca_file} if ca_file else {}


def sentinel_urls(variable: str) -> list[urllib.parse.SplitResult]:
    """Split a `sentinel://...;sentinel://...` URL from the environment into its parts."""
    return [urllib.parse.urlsplit(part) for part in os.environ[variable].split(";")]


def local_url(variable: str) -> str:
    """Return a URL from the environment whose ssl_ca_certs names BROKER_CA_FILE (if set)."""
    ca_file = os.environ.get("BROKER_CA_FILE")
    parts = []
    for url in sentinel_urls(variable):
        query = urllib.parse.parse_qsl(url.query)
        if ca_file:
            query = [(k, ca_file if k == "ssl_ca_certs" else v) for k, v in query]
        parts.append(url._replace(query=urllib.parse.urlencode(query, safe="/")).geturl())
    return ";".join(parts)


def behind_sentinel() -> bool:
    """Whether the client Secret's URLs are Sentinel URLs (topology sentinel)."""
    return os.environ["CELERY_BROKER_URL"].startswith("sentinel://")


def sentinel() -> tuple[Sentinel, str, str]:
    """Return a Sentinel client of the URL's hosts, the master's name and celery's password."""
    urls = sentinel_urls("CELERY_BROKER_URL")
    hosts = [(url.hostname or "", url.port or 26379) for url in urls]
    bounded = {"socket_timeout": TIMEOUT, "socket_connect_timeout": TIMEOUT, **tls_options()}
    kwargs = {"password": os.environ["BROKER_SENTINEL_PASSWORD"], **bounded}
    client = Sentinel(hosts, sentinel_kwargs=kwargs, **bounded)
    password = urllib.parse.unquote(urls[0].password or "")
    return client, os.environ["SENTINEL_MASTER"], password


def master_client(variable: str) -> redis.Redis:
    """Return a celery-user client of the master, on the database of the URL in `variable`."""
    if not behind_sentinel():
        return redis.Redis.from_url(
            local_url(variable), socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT
        )
    client, name, password = sentinel()
    db = int(sentinel_urls(variable)[0].path.strip("/") or 0)
    return client.master_for(
        name, username="celery", password=password, db=db, socket_connect_timeout=TIMEOUT
    )


def celery_app() -> Celery:
    """Return a producer app with the stack's client contract (its URLs and options)."""
    from celery import Celery  # only `publish` pays for importing Celery

    broker, backend = local_url("CELERY_BROKER_URL"), local_url("CELERY_RESULT_BACKEND")
    via_sentinel = behind_sentinel()
    # Celery prefers these variables to its arguments: they hold the pods' CA path.
    for variable in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):
        os.environ.pop(variable)
    app = Celery("sentinel-drain-client", broker=broker, backend=backend, set_as_current=False)
    options: dict[str, object] = {"socket_timeout": TIMEOUT, "socket_connect_timeout": TIMEOUT}
    if via_sentinel:
        options["master_name"] = os.environ["SENTINEL_MASTER"]
        options["sentinel_kwargs"] = {
            "password": os.environ["BROKER_SENTINEL_PASSWORD"],
            **tls_options(),
        }
        if os.environ.get("BROKER_CA_FILE"):
            # Celery's Sentinel result backend takes TLS from this setting only (not the URL).
            tls = tls_options()
            app.conf.redis_backend_use_ssl = {k: v for k, v in tls.items() if k != "ssl"}
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        broker_connection_timeout=TIMEOUT,
        broker_transport_options=options,
        result_backend_transport_options=options,
    )
    return app


def status(task_ids: list[str], queue: str) -> dict[str, object]:
    """Return the master's name, its queue length, unacked task ids and the tasks' results."""
    if behind_sentinel():
        client, name, _ = sentinel()
        host, _ = client.discover_master(name)
    else:
        host = sentinel_urls("CELERY_BROKER_URL")[0].hostname
    broker = master_client("CELERY_BROKER_URL")
    tags = [tag.decode() for tag in broker.zrange("unacked_index", 0, -1)]
    messages = [broker.hget("unacked", tag) for tag in tags]
    results = master_client("CELERY_RESULT_BACKEND")
    raw = results.mget([f"celery-task-meta-{task}" for task in task_ids]) if task_ids else []
    return {
        "master": host,
        "queued": broker.llen(queue),
        "unacked": [json.loads(message)[0]["headers"]["id"] for message in messages if message],
        "results": {
            task: json.loads(value)["status"] if value else None
            for task, value in zip(task_ids, raw, strict=True)
        },
    }


def lengths(queue: str, port: int) -> dict[str, int]:
    """Return the queue's length on every broker pod's Redis (Sentinel URLs' hosts).

    Asked of each pod directly, replicas included (they serve reads), as the celery user.
    """
    _, _, password = sentinel()
    found = {}
    for url in sentinel_urls("CELERY_BROKER_URL"):
        host = url.hostname or ""
        pod = redis.Redis(
            host=host, port=port, username="celery", password=password,
            socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT, **tls_options(),
        )  # fmt: skip
        found[host] = pod.llen(queue)
    return found


def add_consumer(queue: str) -> list[dict[str, object]]:
    """Ask every running worker to consume `queue` too; return the workers' replies.

    Celery's remote control, as `celery control add_consumer` sends it: through the broker,
    to workers that keep running.
    """
    app = celery_app()
    replies = app.control.add_consumer(queue, reply=True, timeout=TIMEOUT)
    app.close()
    return replies


def sentinel_views() -> dict[str, dict[str, object]]:
    """Return what each Sentinel of the URLs says of the master: its name, flags, down-after."""
    name = os.environ["SENTINEL_MASTER"]
    found: dict[str, dict[str, object]] = {}
    for url in sentinel_urls("CELERY_BROKER_URL"):
        host = url.hostname or ""
        client = redis.Redis(
            host=host, port=url.port or 26379, password=os.environ["BROKER_SENTINEL_PASSWORD"],
            socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT, decode_responses=True,
            **tls_options(),
        )  # fmt: skip
        view = client.execute_command("SENTINEL", "MASTER", name)
        fields = dict(zip(view[::2], view[1::2], strict=True)) if isinstance(view, list) else view
        found[host] = {
            "master": fields["ip"],
            "flags": fields["flags"],
            "down_after_ms": int(fields["down-after-milliseconds"]),
        }
    return found


def main(argv: list[str]) -> int:
    """Run one command; print its JSON answer."""
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    publish = commands.add_parser("publish")
    publish.add_argument("--count", type=int, required=True)
    publish.add_argument("--prefix", required=True)
    publish.add_argument("--seconds", type=float, default=0.0)
    publish.add_argument("--record-file", required=True)
    publish.add_argument("--queue", default="celery")
    state = commands.add_parser("status")
    state.add_argument("--queue", default="celery")
    state.add_argument("ids", nargs="*")
    sizes = commands.add_parser("lengths")
    sizes.add_argument("--queue", default="celery")
    sizes.add_argument("--port", type=int, default=6379)
    commands.add_parser("sentinels")
    consume = commands.add_parser("consume")
    consume.add_argument("--queue", required=True)
    args = parser.parse_args(argv)
    if args.command == "publish":
        app = celery_app()
        labels = [f"{args.prefix}-{n}" for n in range(args.count)]
        answer: object = {
            label: app.send_task(
                RECORD_TASK, args=[args.record_file, label, args.seconds], queue=args.queue
            ).id
            for label in labels
        }
        app.close()
    elif args.command == "lengths":
        answer = lengths(args.queue, args.port)
    elif args.command == "sentinels":
        answer = sentinel_views()
    elif args.command == "consume":
        answer = add_consumer(args.queue)
    else:
        answer = status(args.ids, args.queue)
    print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
