"""Helpers shared by integration tests: a real redis-server and real Celery workers.

Both helpers start real processes and always stop them (context managers), so a failing test
cannot leave a broker or a worker running. Neither skips: a missing redis-server is an error.
"""
