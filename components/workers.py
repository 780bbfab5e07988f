"""Celery worker pools (placeholder until the workers component lands)."""

from __future__ import annotations

import pulumi

from components.broker import RedisBroker
from components.settings import StackSettings


class WorkerPools(pulumi.ComponentResource):
    """One Deployment per pool."""

    def __init__(
        self, name: str, settings: StackSettings, broker: RedisBroker, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("celery-redis:index:WorkerPools", name, None, opts)
        self.summary = [
            {"name": p.name, "queues": list(p.queues), "replicas": p.replicas} for p in settings.workers.pools
        ]
        self.expected_workers = sum(p.replicas for p in settings.workers.pools)
        self.ready: list[pulumi.Resource] = []
        self.register_outputs({"pools": self.summary})
