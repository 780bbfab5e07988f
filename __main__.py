"""Celery on Redis on Kubernetes.

Settings -> target -> broker -> worker pools -> scale-in controller -> checks -> alerts ->
exports. Clients of the broker (pools, the controller, the check) see only its endpoint
(components/endpoint.py).
"""

import pulumi

from components import metrics, workers
from components.broker import RedisBroker
from components.checks import BrokerCheck, sentinel_expectations
from components.cluster import ClusterTarget
from components.deployed import (
    ENGINE_OUTPUT,
    STORAGE_SIZE_OUTPUT,
    deployed_engine,
    deployed_storage_size,
)
from components.scale_in import ScaleInController
from components.stack_config import load_stack_config

config = load_stack_config()  # every settings problem stops here, before any resource exists
settings = config.settings

target = ClusterTarget("cluster", settings)
broker = RedisBroker(
    "broker",
    settings,
    config.secrets,
    opts=target.child_options(),
    client_peers=workers.broker_peers(settings),
)
pools = workers.WorkerPools("workers", settings, broker.endpoint, opts=target.child_options())
# Scale-in removes idle workers first: keeps each worker's pod-deletion-cost = its running tasks.
scale_in = ScaleInController(
    "scale-in", settings, broker.endpoint, pools, opts=target.child_options()
)
check = BrokerCheck("check", settings, broker.endpoint, pools, opts=target.child_options())
# One PrometheusRule for the stack: the broker's alerts and the pools' queue rules. Created
# by the broker before (hence the alias: existing stacks keep the object, not replace it).
alerts = metrics.prometheus_rule(
    settings,
    "broker-alerts",
    pulumi.ResourceOptions.merge(
        target.child_options(), pulumi.ResourceOptions(aliases=[pulumi.Alias(parent=broker)])
    ),
    metrics.rule_file(pools.record_groups, [*broker.alert_groups, *pools.alert_groups]),
)

pulumi.export("namespace", target.namespace_name)
pulumi.export("broker_host", broker.host)
pulumi.export("broker_port", broker.port)
pulumi.export("persistence", broker.persistence)
pulumi.export(STORAGE_SIZE_OUTPUT, deployed_storage_size(settings))  # judged by the next run
pulumi.export(ENGINE_OUTPUT, deployed_engine(settings))  # judged by the next run's upgrade guard
pulumi.export("visibility_timeout", settings.visibility_timeout)
pulumi.export("broker_client_secret", broker.client_secret_name)
pulumi.export("broker_url", broker.broker_url)  # secret: carries the celery user's password
if broker.sentinel_password is not None:  # secret: `check --stack` asks Sentinel with it
    pulumi.export("sentinel_password", broker.sentinel_password)
pulumi.export("result_backend_url", broker.result_backend_url)  # secret
pulumi.export("check_url", broker.check_url)  # secret: the read-only probe user
pulumi.export("pools", pools.summary)
pulumi.export("expect_workers", pools.expected_workers)
# The gate Job's memory thresholds, so `brokerctl check --stack` judges memory alike.
pulumi.export("memory_warn_ratio", settings.checks.memory_warn_ratio)
pulumi.export("memory_fail_ratio", settings.checks.memory_fail_ratio)
# Behind Sentinel: the master's name and the replication the gate Job expects (none standalone).
for name, value in sentinel_expectations(settings).items():
    pulumi.export(name, value)
