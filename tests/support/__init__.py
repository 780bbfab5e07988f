"""Helpers shared by integration tests: real redis-server, real Celery workers, the check CLI.

- `redis_server`: `running_redis(config_text)` and `broker_config(...)` (ACL users, noeviction).
- `celery_worker`: `running_worker(worker_argv(...), env=worker_env(...))`.
- `network`: `dead_port()` and `silent_listener()`, endpoints that misbehave on purpose.
- `check_cli`: `run_check(...)` runs the broker check as a subprocess and parses its report.

Every helper starts real processes and always stops them (context managers), so a failing
test cannot leave a broker or a worker running. None skips: a missing redis-server is an error.
"""
