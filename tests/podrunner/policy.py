"""What the pod runner honours, accepts without enforcing (with the reason), and refuses.

Every field of every object the runner runs is checked against these tables before anything
starts. A field in no table is refused with an error naming the object and the field path, so a
manifest can never rely on behaviour the runner silently skips. Fields and kinds that have no
runtime effect on one node are accepted and reported, each with its reason, through
`LocalCluster.not_enforced`; what a Service honours depends on the network mode (shared or
per-pod, see NETWORK_MODES).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .errors import UnsupportedManifest

NO_SCHEDULER = "one node and no scheduler: placement rules have nothing to choose from"
NO_API_SERVER = "no API server: pods get no token and RBAC is not evaluated"
NO_CGROUPS = "no cgroups: requests and limits are not enforced (resourceFieldRef reads them)"
SHARED_NETWORK = (
    "every Service name resolves to 127.0.0.1 in the cluster's one network namespace: "
    "no load balancing, session affinity or readiness gating of traffic"
)
POD_NETWORK = (
    "Service names resolve through /etc/hosts to the addresses of their pods: no virtual IP, "
    "proxy, load balancing or session affinity"
)
NO_NETWORK_POLICY_ENGINE = "no network policy engine: traffic between pod addresses is not filtered"
NO_LSM = "no seccomp/SELinux/AppArmor profile is applied (ordinary services never notice)"
NO_REGISTRY = "images are local executables from the image table"
NO_ROLLOUT = "pods are created from the one template given; no rolling update or history"
STORAGE = "a claim is a host directory kept for the cluster's lifetime; size/class not enforced"

KINDS_NOT_ENFORCED: dict[tuple[str, str], str] = {
    ("", "Namespace"): "namespaces only scope names here; no quotas or admission",
    ("", "ServiceAccount"): NO_API_SERVER,
    ("rbac.authorization.k8s.io", "Role"): NO_API_SERVER,
    ("rbac.authorization.k8s.io", "RoleBinding"): NO_API_SERVER,
    ("rbac.authorization.k8s.io", "ClusterRole"): NO_API_SERVER,
    ("rbac.authorization.k8s.io", "ClusterRoleBinding"): NO_API_SERVER,
    ("policy", "PodDisruptionBudget"): "nothing here evicts pods voluntarily (no node drains)",
    ("networking.k8s.io", "NetworkPolicy"): "all pods share one network namespace; no filtering",
    ("autoscaling", "HorizontalPodAutoscaler"): "no metrics server; replicas stay as declared",
    ("keda.sh", "ScaledObject"): "no KEDA operator; replicas stay as declared",
    ("keda.sh", "ScaledJob"): "no KEDA operator; no jobs are scaled",
    ("keda.sh", "TriggerAuthentication"): "no KEDA operator; triggers are never polled",
    ("keda.sh", "ClusterTriggerAuthentication"): "no KEDA operator; triggers are never polled",
    ("monitoring.coreos.com", "ServiceMonitor"): "no Prometheus operator scrapes anything",
    ("monitoring.coreos.com", "PodMonitor"): "no Prometheus operator scrapes anything",
    ("monitoring.coreos.com", "PrometheusRule"): "no Prometheus operator evaluates rules",
    ("", "ResourceQuota"): "no admission control",
    ("", "LimitRange"): "no admission control",
    ("scheduling.k8s.io", "PriorityClass"): NO_SCHEDULER,
}
KINDS_RUN = {
    ("", "ConfigMap"),
    ("", "Secret"),
    ("", "Service"),
    ("", "PersistentVolumeClaim"),
    ("", "Pod"),
    ("apps", "Deployment"),
    ("apps", "StatefulSet"),
    ("batch", "Job"),
}


@dataclass(frozen=True)
class Fields:
    """The policy for one kind of mapping: which keys are honoured, accepted, or value-limited.

    honoured: keys the runner implements (checked further by `children`).
    not_enforced: key -> why accepting it without effect is harmless here.
    only: key -> the values the runner implements; any other value is refused.
    children: key -> how to check the value (a Fields for a mapping or list of mappings).
    """

    honoured: frozenset[str] = frozenset()
    not_enforced: Mapping[str, str] = field(default_factory=dict)
    only: Mapping[str, tuple[object, ...]] = field(default_factory=dict)
    children: Mapping[str, Fields | Callable[[str, object, list[str]], None]] = field(
        default_factory=dict
    )


def fields(
    *honoured: str,
    not_enforced: Mapping[str, str] | None = None,
    only: Mapping[str, tuple[object, ...]] | None = None,
    children: Mapping[str, object] | None = None,
) -> Fields:
    """Build a Fields policy; children are honoured too."""
    return Fields(
        honoured=frozenset(honoured) | frozenset(children or {}),
        not_enforced=not_enforced or {},
        only=only or {},
        children=children or {},  # type: ignore[arg-type]
    )


def check(where: str, value: object, policy: Fields, notes: list[str]) -> None:
    """Check a mapping (or list of mappings) against policy; record not-enforced fields in notes."""
    if isinstance(value, list):
        for index, item in enumerate(value):
            check(f"{where}[{index}]", item, policy, notes)
        return
    if not isinstance(value, Mapping):
        msg = f"{where}: expected a mapping, got {value!r}"
        raise UnsupportedManifest(msg)
    for key, item in value.items():
        here = f"{where}.{key}"
        if key in policy.only:
            if item not in policy.only[key]:
                allowed = ", ".join(repr(v) for v in policy.only[key]) or "none"
                msg = f"{here}={item!r} is not supported by the pod runner (supported: {allowed})"
                raise UnsupportedManifest(msg)
        elif key in policy.not_enforced:
            notes.append(f"{here}: not enforced: {policy.not_enforced[key]}")
        elif key not in policy.honoured:
            msg = f"{here}: field not supported by the pod runner"
            raise UnsupportedManifest(msg)
        child = policy.children.get(key)
        if isinstance(child, Fields):
            check(here, item, child, notes)
        elif child is not None:
            child(here, item, notes)


def one_of(**variants: Fields) -> Callable[[str, object, list[str]], None]:
    """Check a mapping that holds exactly one of several variants (volume types, handlers)."""

    def check_variant(where: str, value: object, notes: list[str]) -> None:
        items = value if isinstance(value, list) else [value]
        for index, item in enumerate(items):
            here = f"{where}[{index}]" if isinstance(value, list) else where
            chosen = [key for key in item if key in variants]
            unknown = [key for key in item if key not in variants and key != "name"]
            if unknown:
                allowed = ", ".join(variants)
                msg = f"{here}.{unknown[0]}: not supported by the pod runner (supported: {allowed})"
                raise UnsupportedManifest(msg)
            if len(chosen) != 1:
                msg = f"{here}: expected exactly one of {', '.join(variants)}"
                raise UnsupportedManifest(msg)
            check(f"{here}.{chosen[0]}", item[chosen[0]], variants[chosen[0]], notes)

    return check_variant


METADATA = fields(
    "name",
    "namespace",
    "labels",
    "annotations",
    not_enforced={
        key: "written by the API server; nothing here reads it"
        for key in (
            "uid",
            "resourceVersion",
            "generation",
            "creationTimestamp",
            "managedFields",
            "ownerReferences",
            "finalizers",
        )
    },
)
KEY_TO_PATH = fields("key", "path", "mode")
CONFIG_MAP_SOURCE = fields(
    "name", "items", "defaultMode", "optional", children={"items": KEY_TO_PATH}
)
SECRET_SOURCE = fields(
    "secretName", "name", "items", "defaultMode", "optional", children={"items": KEY_TO_PATH}
)
DOWNWARD_API_ITEM = fields(
    "path",
    "mode",
    children={
        "fieldRef": fields("apiVersion", "fieldPath"),
        "resourceFieldRef": fields("containerName", "resource", "divisor"),
    },
)
DOWNWARD_API = fields(children={"items": DOWNWARD_API_ITEM})
VOLUME = one_of(
    configMap=CONFIG_MAP_SOURCE,
    secret=SECRET_SOURCE,
    emptyDir=fields(
        not_enforced={
            "medium": "a host directory either way; contents behave the same",
            "sizeLimit": "no eviction for exceeding it",
        }
    ),
    persistentVolumeClaim=fields("claimName", "readOnly"),
    projected=fields(
        "defaultMode",
        children={
            "sources": one_of(
                configMap=CONFIG_MAP_SOURCE,
                secret=SECRET_SOURCE,
                downwardAPI=DOWNWARD_API,
                # Issued by an API server: only the node agent of the real-engine tests has one.
                serviceAccountToken=fields("audience", "expirationSeconds", "path"),
            )
        },
    ),
    downwardAPI=fields("defaultMode", children={"items": DOWNWARD_API_ITEM}),
)
PROBE_PORT = fields("port", "host")
HTTP_GET = fields("path", "port", "host", "httpHeaders", only={"scheme": ("HTTP", "HTTPS")})
EXEC = fields("command")
PROBE = fields(
    "initialDelaySeconds",
    "periodSeconds",
    "timeoutSeconds",
    "successThreshold",
    "failureThreshold",
    "terminationGracePeriodSeconds",
    children={"exec": EXEC, "tcpSocket": PROBE_PORT, "httpGet": HTTP_GET},
)
LIFECYCLE = fields(children={"preStop": one_of(exec=EXEC, sleep=fields("seconds"))})
CAPABILITIES = fields("add", "drop")
LSM_FIELDS = {"seccompProfile": NO_LSM, "seLinuxOptions": NO_LSM, "appArmorProfile": NO_LSM}
CONTAINER_SECURITY = fields(
    "runAsUser",
    "runAsGroup",
    "runAsNonRoot",
    "readOnlyRootFilesystem",
    "allowPrivilegeEscalation",
    not_enforced=LSM_FIELDS,
    only={"privileged": (False,), "procMount": ("Default",)},
    children={"capabilities": CAPABILITIES},
)
POD_SECURITY = fields(
    "runAsUser",
    "runAsGroup",
    "runAsNonRoot",
    "fsGroup",
    "supplementalGroups",
    not_enforced={
        **LSM_FIELDS,
        "fsGroupChangePolicy": "ownership is applied to fresh volumes, where both policies agree",
    },
    only={"supplementalGroupsPolicy": ("Merge",)},
)
CONTAINER = fields(
    "name",
    "image",
    "command",
    "args",
    "workingDir",
    not_enforced={
        "resources": NO_CGROUPS,
        "imagePullPolicy": NO_REGISTRY,
        "terminationMessagePath": "termination messages are not collected; read pod.logs()",
        "terminationMessagePolicy": "termination messages are not collected; read pod.logs()",
        "resizePolicy": NO_CGROUPS,
    },
    only={"stdin": (False,), "stdinOnce": (False,), "tty": (False,)},
    children={
        "env": fields(
            "name",
            "value",
            children={
                "valueFrom": fields(
                    "secretKeyRef", "configMapKeyRef", "fieldRef", "resourceFieldRef"
                )
            },
        ),
        "envFrom": fields(
            "prefix",
            children={
                "configMapRef": fields("name", "optional"),
                "secretRef": fields("name", "optional"),
            },
        ),
        "ports": fields("name", "containerPort", "protocol"),
        "volumeMounts": fields(
            "name", "mountPath", "subPath", "readOnly", only={"mountPropagation": ("None",)}
        ),
        "securityContext": CONTAINER_SECURITY,
        "livenessProbe": PROBE,
        "readinessProbe": PROBE,
        "startupProbe": PROBE,
        "lifecycle": LIFECYCLE,
    },
)
POD_SPEC = fields(
    "restartPolicy",
    "terminationGracePeriodSeconds",
    "hostname",
    "subdomain",
    "enableServiceLinks",
    not_enforced={
        "serviceAccountName": NO_API_SERVER,
        "serviceAccount": NO_API_SERVER,
        "automountServiceAccountToken": NO_API_SERVER,
        "nodeSelector": NO_SCHEDULER,
        "affinity": NO_SCHEDULER,
        "tolerations": NO_SCHEDULER,
        "topologySpreadConstraints": NO_SCHEDULER,
        "priorityClassName": NO_SCHEDULER,
        "priority": NO_SCHEDULER,
        "schedulerName": NO_SCHEDULER,
        "nodeName": NO_SCHEDULER,
        "preemptionPolicy": NO_SCHEDULER,
        "imagePullSecrets": NO_REGISTRY,
        "overhead": NO_CGROUPS,
        "os": "the node is Linux",
    },
    only={
        "hostNetwork": (False,),
        "hostPID": (False,),
        "hostIPC": (False,),
        "shareProcessNamespace": (False,),
        "dnsPolicy": ("ClusterFirst",),
        "setHostnameAsFQDN": (False,),
        "hostUsers": (True,),
    },
    children={
        "containers": CONTAINER,
        "initContainers": CONTAINER,
        "volumes": VOLUME,
        "securityContext": POD_SECURITY,
        "hostAliases": fields("ip", "hostnames"),
    },
)
POD_TEMPLATE = fields(children={"metadata": METADATA, "spec": POD_SPEC})
SELECTOR = fields("matchLabels", only={"matchExpressions": ()})
PVC_SPEC = fields(
    not_enforced={
        "accessModes": STORAGE,
        "resources": STORAGE,
        "storageClassName": STORAGE,
        "volumeName": STORAGE,
    },
    only={"volumeMode": ("Filesystem",)},
)
WORKLOAD_HISTORY = {"revisionHistoryLimit": NO_ROLLOUT, "minReadySeconds": NO_ROLLOUT}


def service_policy(reason: str, *honoured: str) -> Fields:
    """Build the Service policy of a network mode: what it honours, why the rest has no effect."""
    accepted = (
        "publishNotReadyAddresses",
        "sessionAffinity",
        "sessionAffinityConfig",
        "ipFamilies",
        "ipFamilyPolicy",
        "internalTrafficPolicy",
        "clusterIPs",
        "trafficDistribution",
    )
    return fields(
        "selector",
        "clusterIP",
        *honoured,
        not_enforced={key: reason for key in accepted if key not in honoured},
        only={"type": ("ClusterIP",)},
        children={
            "ports": fields(
                "name",
                "port",
                "targetPort",
                only={"protocol": ("TCP",)},
                not_enforced={"appProtocol": reason},
            )
        },
    )


SPEC_BY_KIND: dict[str, Fields] = {
    "Deployment": fields(
        "replicas",
        not_enforced={
            **WORKLOAD_HISTORY,
            "strategy": NO_ROLLOUT,
            "progressDeadlineSeconds": NO_ROLLOUT,
        },
        only={"paused": (False,)},
        children={"selector": SELECTOR, "template": POD_TEMPLATE},
    ),
    "StatefulSet": fields(
        "replicas",
        "serviceName",
        not_enforced={
            **WORKLOAD_HISTORY,
            "updateStrategy": NO_ROLLOUT,
            "persistentVolumeClaimRetentionPolicy": STORAGE,
        },
        only={"podManagementPolicy": ("OrderedReady", "Parallel")},
        children={
            "selector": SELECTOR,
            "template": POD_TEMPLATE,
            "volumeClaimTemplates": fields(children={"metadata": METADATA, "spec": PVC_SPEC}),
        },
    ),
    "Job": fields(
        "backoffLimit",
        "activeDeadlineSeconds",
        not_enforced={
            "ttlSecondsAfterFinished": "finished Jobs stay until the cluster closes",
            "manualSelector": "Job pods are labelled and found by the runner itself",
            "selector": "Job pods are labelled and found by the runner itself",
        },
        only={
            "completions": (1,),
            "parallelism": (1,),
            "completionMode": ("NonIndexed",),
            "suspend": (False,),
        },
        children={"template": POD_TEMPLATE},
    ),
    "Service": service_policy(SHARED_NETWORK),
    "PersistentVolumeClaim": PVC_SPEC,
    "Pod": POD_SPEC,
}
# The per-pod network mode (podnetwork.py) gives each pod its own address, so which pods a
# Service's name resolves to follows readiness and publishNotReadyAddresses (network.dns_records).
POD_NETWORK_SPEC_BY_KIND: dict[str, Fields] = {
    **SPEC_BY_KIND,
    "Service": service_policy(POD_NETWORK, "publishNotReadyAddresses"),
}
NETWORK_MODES = {"shared": SPEC_BY_KIND, "per-pod": POD_NETWORK_SPEC_BY_KIND}
TOP_LEVEL = fields(
    "apiVersion",
    "kind",
    "spec",
    "data",
    "stringData",
    "binaryData",
    "type",
    "immutable",
    not_enforced={"status": "status is written by controllers; the runner keeps its own"},
    children={"metadata": METADATA},
)


def api_group(api_version: str) -> str:
    """Return the API group of an apiVersion (`apps/v1` -> `apps`, `v1` -> ``)."""
    return api_version.rpartition("/")[0]


def check_object(obj: dict, where: str, notes: list[str], network: str = "shared") -> None:
    """Refuse an object (or any field of it) the runner cannot honour; note accepted no-ops.

    network is the cluster's network mode ("shared" or "per-pod"): what a Service honours and
    why a NetworkPolicy has no effect depend on it.
    """
    key = (api_group(obj.get("apiVersion", "")), obj.get("kind", ""))
    if key in KINDS_NOT_ENFORCED:
        reason = KINDS_NOT_ENFORCED[key]
        if key == ("networking.k8s.io", "NetworkPolicy") and network == "per-pod":
            reason = NO_NETWORK_POLICY_ENGINE
        notes.append(f"{where}: not enforced: {reason}")
        return
    if key not in KINDS_RUN:
        msg = (
            f"{where}: kind {obj.get('apiVersion')}/{obj.get('kind')} is unknown to the pod runner"
        )
        raise UnsupportedManifest(msg)
    check(where, obj, TOP_LEVEL, notes)
    if "spec" in obj:
        check(f"{where}.spec", obj["spec"], NETWORK_MODES[network][key[1]], notes)
