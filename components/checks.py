"""Post-deploy check Job (placeholder until the checks component lands)."""

from __future__ import annotations

import pulumi

from components.broker import RedisBroker
from components.settings import StackSettings
from components.workers import WorkerPools


class BrokerCheck(pulumi.ComponentResource):
    """The in-cluster check that gates `pulumi up`."""

    def __init__(
        self,
        name: str,
        settings: StackSettings,
        broker: RedisBroker,
        pools: WorkerPools,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("celery-redis:index:BrokerCheck", name, None, opts)
        self.register_outputs({})
