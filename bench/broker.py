"""Broker benchmark: what each persistence mode costs, loses, and how fast an AOF loads.

    .venv/bin/python -m bench.broker [--seconds 3] [--workdir DIR]

Runs Debian's redis-server with the redis.conf that `components.redis_config.redis_conf`
renders for each mode (so it measures what we ship), on one filesystem, and prints:

1. steady-state throughput of a broker-shaped load (producers LPUSH, consumers BRPOP, one
   command per message as kombu sends them) with 1 KB and 1 MB messages, per mode, as
   ratios to `none` measured in the same run; for 1 MB also against the disk's sequential
   write bandwidth (dd conv=fdatasync on the same filesystem);
2. acknowledged writes lost to kill -9 per mode (a process crash: the page cache survives,
   so this is not a power cut);
3. the AOF load rate (MB/s, caches dropped first when run as root) that sizes the startup
   probe (BrokerSettings.aof_load_mb_per_second).
Targets: 1 KB aof >= 0.9x none; 1 MB aof payload rate >= 0.8x disk bandwidth.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis

from components.redis_config import redis_conf
from components.settings import StackSettings

MODES = ("none", "rdb", "aof", "aof-always")
SIZES = {"1KB": 1024, "1MB": 1024 * 1024}
PRODUCERS = 2
CONSUMERS = 2
QUEUE = "celery"


def settings_for(mode: str) -> StackSettings:
    """Return stack settings of the given persistence mode, with room for the 1 MB backlog."""
    return StackSettings.model_validate(
        {
            "ephemeral": True,
            "broker": {
                "persistence": mode,
                "resources": {"memory_request": "4Gi", "memory_limit": "4Gi"},
            },
            "workers": {
                "pools": [{"name": "bench", "image": "registry.example.com/transcritor-pdf:1.0.0"}]
            },
        }
    )


@dataclass
class Server:
    """A redis-server started by the bench, in its own directory."""

    process: subprocess.Popen[bytes]
    port: int
    directory: Path

    def client(self) -> redis.Redis:
        """Return a client with generous timeouts (fsync always can be slow)."""
        return redis.Redis(port=self.port, socket_timeout=30)


def free_port() -> int:
    """Return a port that was free a moment ago."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def redis_server(conf: str, directory: Path, *extra: str) -> Iterator[Server]:
    """Start redis-server from `conf` in `directory`, loopback only; wait until loaded."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "redis.conf").write_text(conf)
    port = free_port()
    argv = ["redis-server", str(directory / "redis.conf"), "--port", str(port)]
    argv += ["--bind", "127.0.0.1", "--dir", str(directory), *extra]
    with (directory / "redis.log").open("ab") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    server = Server(process, port, directory)
    try:
        wait_loaded(server)
        yield server
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=120)


def wait_loaded(server: Server, timeout: float = 600) -> float:
    """Wait until PING answers PONG (not LOADING); return the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        with contextlib.suppress(redis.ConnectionError, redis.ResponseError):
            if redis.Redis(port=server.port, socket_timeout=1, retry_on_error=[]).ping():
                return time.monotonic() - started
        time.sleep(0.01)
    msg = f"redis-server not loaded after {timeout} s"
    raise RuntimeError(msg)


def _produce(port: int, size: int, stop_at: float, counter: multiprocessing.Value) -> None:
    client = redis.Redis(port=port, socket_timeout=30)
    payload = b"p" * size
    sent = 0
    while time.monotonic() < stop_at:
        client.lpush(QUEUE, payload)
        sent += 1
    with counter.get_lock():
        counter.value += sent


def _consume(port: int, stop_at: float, counter: multiprocessing.Value) -> None:
    client = redis.Redis(port=port, socket_timeout=30)
    received = 0
    while time.monotonic() < stop_at:
        if client.brpop([QUEUE], timeout=1):
            received += 1
    with counter.get_lock():
        counter.value += received


def steady_state(server: Server, size: int, seconds: float) -> float:
    """Messages per second consumed while producers and consumers run together."""
    context = multiprocessing.get_context("fork")
    consumed = context.Value("q", 0)
    produced = context.Value("q", 0)
    stop_at = time.monotonic() + seconds
    workers = [
        context.Process(target=_produce, args=(server.port, size, stop_at, produced))
        for _ in range(PRODUCERS)
    ] + [
        context.Process(target=_consume, args=(server.port, stop_at, consumed))
        for _ in range(CONSUMERS)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    server.client().delete(QUEUE)
    return consumed.value / seconds


def kill_9_loss(conf: str, directory: Path, seconds: float = 2.0) -> tuple[int, int]:
    """Push 1 KB messages, kill -9 mid-stream, restart; return (acknowledged, lost)."""
    acknowledged = 0
    with redis_server(conf, directory) as server:
        client = server.client()
        stop_at = time.monotonic() + seconds
        while time.monotonic() < stop_at:
            client.lpush(QUEUE, b"%08d" % acknowledged + b"m" * 1024)
            acknowledged += 1
        server.process.send_signal(signal.SIGKILL)
        server.process.wait()
    with redis_server(conf, directory) as server:
        kept = server.client().llen(QUEUE)
    return acknowledged, acknowledged - kept


def disk_write_mb_per_second(directory: Path, megabytes: int = 1024) -> float:
    """Sequential write bandwidth with dd conv=fdatasync on the bench's filesystem."""
    target = directory / "dd.bin"
    result = subprocess.run(
        ["dd", "if=/dev/zero", f"of={target}", "bs=1M", f"count={megabytes}", "conv=fdatasync"],
        capture_output=True,
        text=True,
        check=True,
    )
    target.unlink()
    match = re.search(r"copied, ([0-9.]+) s", result.stderr)
    if match is None:
        msg = f"cannot read dd's output: {result.stderr}"
        raise RuntimeError(msg)
    return megabytes * 1024 * 1024 / 1e6 / float(match[1])


def write_aof(path: Path, megabytes: int, commands: list[bytes]) -> int:
    """Write a single-file AOF repeating `commands` up to `megabytes`; return its size."""
    chunk = b"".join(commands) * 1000
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as aof:
        for _ in range(max(megabytes * 1_000_000 // len(chunk), 1)):
            aof.write(chunk)
    return path.stat().st_size


def resp(*parts: bytes) -> bytes:
    """Encode one command the way Redis logs it in the AOF."""
    encoded = b"".join(b"$%d\r\n%s\r\n" % (len(part), part) for part in parts)
    return b"*%d\r\n" % len(parts) + encoded


def drop_caches() -> bool:
    """Drop the page cache (root only) so the AOF is read from disk; return whether it did."""
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def aof_load_rate(directory: Path, name: str, commands: list[bytes], megabytes: int) -> float:
    """MB/s at which redis-server replays an AOF of `commands`, from a cold cache."""
    data = directory / f"load-{name}"
    shutil.rmtree(data, ignore_errors=True)
    size = write_aof(data / "appendonly.aof", megabytes, commands)
    cold = drop_caches()
    conf = redis_conf(settings_for("aof"))
    with redis_server(conf, data) as server:
        log = (server.directory / "redis.log").read_text()
    match = re.search(r"DB loaded from base file appendonly\.aof: ([0-9.]+) seconds", log)
    if match is None:
        msg = f"no load time in the log:\n{log}"
        raise RuntimeError(msg)
    seconds = float(match[1])
    print(
        f"  AOF {name}: {size / 1e6:.0f} MB in {seconds:.2f} s, cache {'cold' if cold else 'warm'}"
    )
    shutil.rmtree(data, ignore_errors=True)
    return size / 1e6 / seconds


def main() -> None:
    """Run every measurement and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each load run")
    parser.add_argument("--workdir", type=Path, default=None, help="where data files go")
    parser.add_argument("--aof-mb", type=int, default=500, help="size of the AOF load test")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-broker-"))
    workdir.mkdir(parents=True, exist_ok=True)
    version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True)
    print(f"redis-server: {version.stdout.strip()}")
    print(f"workdir: {workdir} ({os.cpu_count()} cores)")
    disk = disk_write_mb_per_second(workdir)
    print(f"disk sequential write (dd conv=fdatasync): {disk:.0f} MB/s\n")

    rates: dict[tuple[str, str], float] = {}
    for mode in MODES:
        conf = redis_conf(settings_for(mode))
        shutil.rmtree(workdir / mode, ignore_errors=True)
        with redis_server(conf, workdir / mode) as server:
            for label, size in SIZES.items():
                rates[mode, label] = steady_state(server, size, args.seconds)
    headers = ("1KB msg/s", "vs none", "1MB msg/s", "MB/s", "vs none", "vs disk")
    widths = (10, 8, 10, 7, 8, 8)
    print(f"{'mode':<11} " + " ".join(f"{h:>{w}}" for h, w in zip(headers, widths, strict=True)))
    for mode in MODES:
        small, large = rates[mode, "1KB"], rates[mode, "1MB"]
        large_mb = large * SIZES["1MB"] / 1e6
        print(
            f"{mode:<11} {small:>10.0f} {small / rates['none', '1KB']:>7.2f}x {large:>10.1f} "
            f"{large_mb:>7.0f} {large / rates['none', '1MB']:>7.2f}x {large_mb / disk:>7.2f}x"
        )
    print()

    print(f"{'mode':<11} {'acked':>8} {'lost to kill -9':>16}")
    for mode in MODES:
        shutil.rmtree(workdir / f"kill-{mode}", ignore_errors=True)
        acked, lost = kill_9_loss(redis_conf(settings_for(mode)), workdir / f"kill-{mode}")
        print(f"{mode:<11} {acked:>8} {lost:>16}")
    print()

    print("AOF load rate (sizes the startup probe):")
    broker_shaped = [resp(b"LPUSH", b"celery", b"m" * 1024), resp(b"RPOP", b"celery")]
    small_writes = [resp(b"SET", b"loadkey", b"v" * 200)]
    broker_rate = aof_load_rate(workdir, "lpush-1KB+rpop", broker_shaped, args.aof_mb)
    small_rate = aof_load_rate(workdir, "set-200B", small_writes, args.aof_mb)
    print(
        f"  broker-shaped {broker_rate:.0f} MB/s; small writes {small_rate:.0f} MB/s; "
        f"aof_load_mb_per_second <= {min(broker_rate, small_rate):.0f}"
    )
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
