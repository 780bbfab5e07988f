"""One builder for every pod this project runs, so hardening cannot differ between workloads.

Every container is non-root, cannot escalate privileges, drops all capabilities, runs under
the RuntimeDefault seccomp profile with a read-only root filesystem, and has requests and a
memory limit. Pods mount no service-account token: only the scale-in controller talks to the
Kubernetes API (components/scale_in.py), and only its pod is given its own ServiceAccount's.
Worker pods, which parse untrusted files, never carry one.
"""

from __future__ import annotations

from collections.abc import Sequence

import pulumi
import pulumi_kubernetes as k8s

from components.settings import Placement, Resources

TMP_VOLUME = "tmp"
TMP_MOUNT = "/tmp"  # noqa: S108 - a private emptyDir, not the host's /tmp


def resource_requirements(resources: Resources) -> k8s.core.v1.ResourceRequirementsArgs:
    """Build requests and limits from settings.

    No CPU limit unless asked (throttling hurts Redis).
    """
    limits = {"memory": resources.memory_limit}
    if resources.cpu_limit is not None:
        limits["cpu"] = resources.cpu_limit
    return k8s.core.v1.ResourceRequirementsArgs(
        requests={"cpu": resources.cpu_request, "memory": resources.memory_request},
        limits=limits,
    )


def container_security() -> k8s.core.v1.SecurityContextArgs:
    """Return the container-level hardening every container gets."""
    return k8s.core.v1.SecurityContextArgs(
        allow_privilege_escalation=False,
        privileged=False,
        read_only_root_filesystem=True,
        run_as_non_root=True,
        capabilities=k8s.core.v1.CapabilitiesArgs(drop=["ALL"]),
        seccomp_profile=k8s.core.v1.SeccompProfileArgs(type="RuntimeDefault"),
    )


def hardened_container(
    *,
    name: str,
    image: str,
    command: Sequence[str],
    resources: Resources,
    args: Sequence[str] | None = None,
    env: Sequence[k8s.core.v1.EnvVarArgs] | None = None,
    volume_mounts: Sequence[k8s.core.v1.VolumeMountArgs] = (),
    ports: Sequence[k8s.core.v1.ContainerPortArgs] | None = None,
    startup_probe: k8s.core.v1.ProbeArgs | None = None,
    liveness_probe: k8s.core.v1.ProbeArgs | None = None,
    readiness_probe: k8s.core.v1.ProbeArgs | None = None,
    lifecycle: k8s.core.v1.LifecycleArgs | None = None,
    working_dir: str | None = None,
) -> k8s.core.v1.ContainerArgs:
    """Build a container with the project's hardening and a writable /tmp.

    The root is read-only.
    """
    tmp = k8s.core.v1.VolumeMountArgs(name=TMP_VOLUME, mount_path=TMP_MOUNT)
    return k8s.core.v1.ContainerArgs(
        name=name,
        image=image,
        image_pull_policy="Always",  # tags can move; a restart must not run a stale cached image
        command=list(command),
        args=list(args) if args else None,
        env=list(env) if env else None,
        ports=list(ports) if ports else None,
        volume_mounts=[tmp, *volume_mounts],
        resources=resource_requirements(resources),
        security_context=container_security(),
        startup_probe=startup_probe,
        liveness_probe=liveness_probe,
        readiness_probe=readiness_probe,
        lifecycle=lifecycle,
        working_dir=working_dir,
        termination_message_policy="FallbackToLogsOnError",
    )


def exec_probe(command: list[str], period: int, failures: int) -> k8s.core.v1.ProbeArgs:
    """Return an exec probe with a bounded run time: every probe of the stack is one of these."""
    return k8s.core.v1.ProbeArgs(
        exec_=k8s.core.v1.ExecActionArgs(command=command),
        period_seconds=period,
        failure_threshold=failures,
        timeout_seconds=5,
    )


def hardened_pod_spec(
    *,
    containers: Sequence[k8s.core.v1.ContainerArgs],
    run_as_user: int,
    placement: Placement,
    grace_period_seconds: int,
    volumes: Sequence[k8s.core.v1.VolumeArgs] = (),
    restart_policy: str | None = None,
    topology_spread: Sequence[k8s.core.v1.TopologySpreadConstraintArgs] | None = None,
    affinity: k8s.core.v1.AffinityArgs | None = None,
    service_account: pulumi.Input[str] | None = None,
) -> k8s.core.v1.PodSpecArgs:
    """Build a pod spec.

    Non-root identity, placement, and the private /tmp emptyDir. No API token unless
    `service_account` names the pod's own ServiceAccount (a pod that calls the API server).
    """
    tmp = k8s.core.v1.VolumeArgs(
        name=TMP_VOLUME, empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs(size_limit="256Mi")
    )
    tolerations = [
        k8s.core.v1.TolerationArgs(key=t.key, operator=t.operator, value=t.value, effect=t.effect)
        for t in placement.tolerations
    ]
    return k8s.core.v1.PodSpecArgs(
        service_account_name=service_account,
        automount_service_account_token=service_account is not None,
        enable_service_links=False,
        security_context=k8s.core.v1.PodSecurityContextArgs(
            run_as_non_root=True,
            run_as_user=run_as_user,
            run_as_group=run_as_user,
            fs_group=run_as_user,
            seccomp_profile=k8s.core.v1.SeccompProfileArgs(type="RuntimeDefault"),
        ),
        termination_grace_period_seconds=grace_period_seconds,
        node_selector=dict(placement.node_selector) or None,
        tolerations=tolerations or None,
        topology_spread_constraints=list(topology_spread) if topology_spread else None,
        affinity=affinity,
        restart_policy=restart_policy,
        containers=list(containers),
        volumes=[tmp, *volumes],
    )


def namespace_peer(namespace: str) -> k8s.meta.v1.LabelSelectorArgs:
    """Select one namespace by the name label the API server sets on every namespace."""
    return k8s.meta.v1.LabelSelectorArgs(match_labels={"kubernetes.io/metadata.name": namespace})


def one_per_node(match_labels: dict[str, str], *, required: bool) -> k8s.core.v1.AffinityArgs:
    """Keep pods of one workload on different nodes: always (`required`), or when possible.

    Required anti-affinity leaves a pod pending rather than put it beside another: for
    replicas of the broker, two on one node would be lost together.
    """
    term = k8s.core.v1.PodAffinityTermArgs(
        label_selector=k8s.meta.v1.LabelSelectorArgs(match_labels=match_labels),
        topology_key="kubernetes.io/hostname",
    )
    if required:
        anti = k8s.core.v1.PodAntiAffinityArgs(
            required_during_scheduling_ignored_during_execution=[term]
        )
    else:
        anti = k8s.core.v1.PodAntiAffinityArgs(
            preferred_during_scheduling_ignored_during_execution=[
                k8s.core.v1.WeightedPodAffinityTermArgs(weight=100, pod_affinity_term=term)
            ]
        )
    return k8s.core.v1.AffinityArgs(pod_anti_affinity=anti)


def spread_across_nodes_and_zones(
    match_labels: dict[str, str],
) -> list[k8s.core.v1.TopologySpreadConstraintArgs]:
    """Spread a workload's pods over nodes and zones, without blocking scheduling when it cannot."""
    return [
        k8s.core.v1.TopologySpreadConstraintArgs(
            max_skew=1,
            topology_key=key,
            when_unsatisfiable="ScheduleAnyway",
            label_selector=k8s.meta.v1.LabelSelectorArgs(match_labels=match_labels),
        )
        for key in ("kubernetes.io/hostname", "topology.kubernetes.io/zone")
    ]
