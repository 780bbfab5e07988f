"""Self-tests of the pod runner: hand-made manifests run as real local pods (root required).

Each test builds a small cluster: a redis-server StatefulSet from Debian's package (ConfigMap
config, claim for /data, uid 999, read-only root, emptyDir /tmp), shell and Python pods, Jobs.
Nothing is mocked; each behaviour is observed from inside the pods or from the test process.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import yaml
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.podrunner import (
    Backoff,
    LocalCluster,
    LocalImage,
    ManifestError,
    PodFailed,
    UnsupportedManifest,
    wait_until,
)
from tests.podrunner.environment import expand

NS = "podrunner-test"
REDIS_PASSWORD_PLACEHOLDER = "<redacted:broker-password>"
BROKER_TEST_PASSWORD = "s3cret-test"
VENV = Path(sys.prefix)
IMAGES = {
    "redis": LocalImage(entrypoint=("redis-server",), cmd=()),
    "debian": LocalImage(entrypoint=(), cmd=("sh",)),
    "python": LocalImage(
        entrypoint=("python",),
        binds={"/opt/venv": str(VENV)},
        env={"PATH": "/opt/venv/bin:/usr/local/bin:/usr/bin:/bin"},
    ),
}
FAST = Backoff(initial=0.2, cap=1.0)
# Probe periods and initial delays run 4x faster in probe tests (timeouts and grace do not).
QUICK_PROBES = 0.25


def redis_client(cluster: LocalCluster, password: str = BROKER_TEST_PASSWORD) -> redis.Redis:
    """Connect from the test process to the broker Service; no retries hide failures."""
    return redis.Redis(
        port=cluster.host_port("broker", "redis"),
        password=password,
        socket_timeout=2,
        retry=Retry(NoBackoff(), 0),
    )


def obj(kind: str, name: str, spec: dict | None = None, api: str = "v1", **extra: object) -> dict:
    """Build a Kubernetes object in the test namespace."""
    manifest = {"apiVersion": api, "kind": kind, "metadata": {"name": name, "namespace": NS}}
    if spec is not None:
        manifest["spec"] = spec
    return {**manifest, **extra}


def pod_template(containers: list[dict], labels: dict, **spec: object) -> dict:
    """Build a pod template with a short grace period (tests should not wait 30s to delete)."""
    return {
        "metadata": {"labels": labels},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": containers, **spec},
    }


def deployment(name: str, containers: list[dict], replicas: int = 1, **spec: object) -> dict:
    """Build a Deployment selecting app=name."""
    labels = {"app": name}
    return obj(
        "Deployment",
        name,
        {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": pod_template(containers, labels, **spec),
        },
        api="apps/v1",
    )


def job(name: str, command: list[str], **spec: object) -> dict:
    """Build a Job running one command, restartPolicy Never."""
    container = {"name": "main", "image": "debian:12", "command": command}
    template = pod_template([container], {"app": name}, restartPolicy="Never")
    return obj("Job", name, {"template": template, **spec}, api="batch/v1")


def sleeper(name: str = "main", **fields: object) -> dict:
    """Build a container that sleeps (PID 1 without a SIGTERM handler, like many real ones)."""
    return {"name": name, "image": "debian:12", "command": ["sleep", "infinity"], **fields}


def redis_manifests(replicas: int = 1) -> list[dict]:
    """Build a broker-like StatefulSet: redis-server as uid 999, read-only root, claim /data."""
    redis_conf = "port 6379\nbind 127.0.0.1\ndir /data\nappendonly yes\nappendfsync always\n"
    liveness = {
        "exec": {
            "command": [
                "sh",
                "-c",
                'redis-cli -a "$REDIS_PASSWORD" --no-auth-warning ping | grep -q PONG',
            ]
        },
        "periodSeconds": 1,
        "timeoutSeconds": 1,
        "failureThreshold": 2,
    }
    container = {
        "name": "redis",
        "image": "redis:7.2.4",
        "args": ["/etc/redis/redis.conf", "--requirepass", "$(REDIS_PASSWORD)"],
        "env": [
            {
                "name": "REDIS_PASSWORD",
                "valueFrom": {"secretKeyRef": {"name": "broker-auth", "key": "password"}},
            }
        ],
        "ports": [{"name": "redis", "containerPort": 6379}],
        "securityContext": {
            "runAsUser": 999,
            "runAsGroup": 999,
            "runAsNonRoot": True,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "config", "mountPath": "/etc/redis"},
            {"name": "data", "mountPath": "/data"},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
        "readinessProbe": {**liveness, "failureThreshold": 1},
        "livenessProbe": liveness,
    }
    template = pod_template(
        [container],
        {"app": "broker"},
        securityContext={"fsGroup": 999},
        volumes=[
            {"name": "config", "configMap": {"name": "broker-config"}},
            {"name": "tmp", "emptyDir": {}},
        ],
    )
    claim = {
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    return [
        obj("ConfigMap", "broker-config", data={"redis.conf": redis_conf}),
        obj(
            "Secret",
            "broker-auth",
            type="Opaque",
            stringData={
                "password": REDIS_PASSWORD_PLACEHOLDER,
                "url": f"redis://:{REDIS_PASSWORD_PLACEHOLDER}@broker:6379/0",
            },
        ),
        obj(
            "Service",
            "broker-headless",
            {
                "clusterIP": "None",
                "selector": {"app": "broker"},
                "ports": [{"name": "redis", "port": 6379}],
            },
        ),
        obj(
            "Service",
            "broker",
            {
                "selector": {"app": "broker"},
                "ports": [{"name": "redis", "port": 6379, "targetPort": "redis"}],
            },
        ),
        obj(
            "StatefulSet",
            "broker",
            {
                "serviceName": "broker-headless",
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "broker"}},
                "template": template,
                "volumeClaimTemplates": [claim],
            },
            api="apps/v1",
        ),
    ]


def write_manifest_dir(directory: Path, objects: list[dict]) -> Path:
    """One object per YAML file, as `brokerctl render --out DIR` writes them."""
    directory.mkdir(parents=True, exist_ok=True)
    for index, manifest in enumerate(objects):
        path = (
            directory
            / f"{index:02d}-{manifest['kind'].lower()}-{manifest['metadata']['name']}.yaml"
        )
        path.write_text(yaml.safe_dump(manifest))
    return directory


def redis_cluster(
    tmp_path: Path, password: str = BROKER_TEST_PASSWORD, **kwargs: object
) -> LocalCluster:
    """Build a cluster of the broker StatefulSet, loaded from a manifest directory."""
    return LocalCluster(
        write_manifest_dir(tmp_path / "manifests", redis_manifests()),
        images=IMAGES,
        secret_values={REDIS_PASSWORD_PLACEHOLDER: password},
        backoff=FAST,
        **kwargs,
    )  # type: ignore[arg-type]


# -- $(VAR) expansion: a pure function, checked against Kubernetes' documented cases ---------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$(A)-$(B)", "one-two"),
        ("$(MISSING)", "$(MISSING)"),
        ("$$(A)", "$(A)"),
        ("$$$(A)", "$one"),
        ("$$", "$"),
        ("a$b", "a$b"),
        ("$(A", "$(A"),
        ("tail$", "tail$"),
        ("$()", "$()"),
    ],
)
def test_expansion_follows_kubernetes_rules(text: str, expected: str) -> None:
    assert expand(text, {"A": "one", "B": "two"}) == expected


# -- refusals: nothing the runner cannot honour is silently ignored -------------------------
@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda s: s.update(hostNetwork=True), "spec.template.spec.hostNetwork"),
        (
            lambda s: s.update(shareProcessNamespace=True),
            "spec.template.spec.shareProcessNamespace",
        ),
        (
            lambda s: s.update(volumes=[{"name": "h", "hostPath": {"path": "/"}}]),
            "spec.template.spec.volumes[0].hostPath",
        ),
        (
            lambda s: s["containers"][0].update(
                lifecycle={"postStart": {"exec": {"command": ["true"]}}}
            ),
            "spec.template.spec.containers[0].lifecycle.postStart",
        ),
        (
            lambda s: s["containers"][0].update(livenessProbe={"grpc": {"port": 1}}),
            "spec.template.spec.containers[0].livenessProbe.grpc",
        ),
        (
            lambda s: s["containers"][0].update(frobnicate=1),
            "spec.template.spec.containers[0].frobnicate",
        ),
    ],
)
def test_unsupported_fields_are_errors_naming_object_and_field(change, field: str) -> None:
    manifest = deployment("web", [sleeper()])
    change(manifest["spec"]["template"]["spec"])
    with pytest.raises(UnsupportedManifest) as raised:
        LocalCluster([manifest], images=IMAGES)
    assert f"Deployment {NS}/web.{field}" in str(raised.value), str(raised.value)


def test_unknown_kind_is_an_error() -> None:
    with pytest.raises(UnsupportedManifest, match=r"networking\.k8s\.io/v1/Ingress is unknown"):
        LocalCluster([obj("Ingress", "web", {}, api="networking.k8s.io/v1")], images=IMAGES)


def test_objects_without_runtime_effect_are_listed_as_not_enforced() -> None:
    objects = [
        obj("Namespace", NS),
        obj("PodDisruptionBudget", "b", {"maxUnavailable": 1}, api="policy/v1"),
        obj("NetworkPolicy", "n", {"podSelector": {}}, api="networking.k8s.io/v1"),
        obj("HorizontalPodAutoscaler", "h", {}, api="autoscaling/v2"),
        obj("ScaledObject", "s", {"scaleTargetRef": {"name": "w"}}, api="keda.sh/v1alpha1"),
        obj("TriggerAuthentication", "t", {}, api="keda.sh/v1alpha1"),
        deployment("web", [sleeper(resources={"limits": {"memory": "64Mi"}})]),
    ]
    cluster = LocalCluster(objects, images=IMAGES)
    notes = "\n".join(cluster.not_enforced)
    for kind in (
        "Namespace",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "HorizontalPodAutoscaler",
        "ScaledObject",
        "TriggerAuthentication",
    ):
        assert re.search(rf"^{kind} \S+: not enforced: .+", notes, re.M), notes
    assert "containers[0].resources: not enforced: no cgroups" in notes, notes


def test_images_must_be_in_the_table_with_a_known_entrypoint() -> None:
    manifest = deployment("web", [{"name": "main", "image": "ghcr.io/acme/tools:1"}])
    with pytest.raises(ManifestError, match=r"containers\[0\]: no `command` and the image table"):
        LocalCluster([manifest], images={"ghcr.io/acme/*": LocalImage()})
    with pytest.raises(
        ManifestError, match=r"image 'ghcr\.io/acme/tools:1' is not in the image table"
    ):
        LocalCluster([manifest], images=IMAGES)


# -- networking and files -------------------------------------------------------------------
def test_service_names_resolve_in_pods_and_tests_reach_services(tmp_path: Path) -> None:
    with redis_cluster(tmp_path) as cluster:
        cluster.start()
        (broker,) = cluster.wait_ready("StatefulSet", "broker", timeout=20)
        names = [
            "broker",
            f"broker.{NS}",
            f"broker.{NS}.svc",
            f"broker.{NS}.svc.cluster.local",
            f"broker-0.broker-headless.{NS}.svc.cluster.local",
            "broker-0.broker-headless",
        ]
        for name in names:
            result = broker.exec(
                ["redis-cli", "-h", name, "-a", BROKER_TEST_PASSWORD, "--no-auth-warning", "ping"]
            )
            assert result.stdout.strip() == "PONG", f"{name}: {result}"
        assert broker.exec(["hostname"]).stdout.strip() == "broker-0"
        status = broker.exec(["grep", "-E", "^(NoNewPrivs|CapBnd|CapEff)", "/proc/self/status"])
        assert status.stdout.split() == [
            "CapEff:",
            "0000000000000000",
            "CapBnd:",
            "0000000000000000",
            "NoNewPrivs:",
            "1",
        ], "drop ALL and allowPrivilegeEscalation=false reach the exec'd probe process too"
        assert redis_client(cluster).ping()
        in_netns = cluster.run_in_netns(["getent", "hosts", f"broker.{NS}.svc.cluster.local"])
        assert in_netns.stdout.startswith("127.0.0.1"), in_netns
        short = cluster.run_in_netns(["getent", "hosts", "broker"])
        assert short.returncode != 0, "short names need the namespace (search domain) to resolve"


def test_volumes_modes_ownership_and_read_only_root(tmp_path: Path) -> None:
    secret = obj(
        "Secret",
        "creds",
        data={"token": base64.b64encode(b"abc").decode()},
        stringData={"extra": "x"},
    )
    config = obj("ConfigMap", "cfg", data={"app.conf": "a=1\n", "other": "o"})
    container = sleeper(
        securityContext={"runAsUser": 10001, "runAsGroup": 10001, "readOnlyRootFilesystem": True},
        volumeMounts=[
            {"name": "creds", "mountPath": "/etc/creds"},
            {"name": "cfg", "mountPath": "/etc/app/app.conf", "subPath": "app.conf"},
            {"name": "scratch", "mountPath": "/scratch"},
            {"name": "scratch", "mountPath": "/also-scratch", "readOnly": True},
        ],
    )
    volumes = [
        {
            "name": "creds",
            "secret": {
                "secretName": "creds",
                "defaultMode": 0o400,
                "items": [{"key": "token", "path": "nested/token"}],
            },
        },
        {"name": "cfg", "configMap": {"name": "cfg"}},
        {"name": "scratch", "emptyDir": {}},
    ]
    manifest = deployment("files", [container], volumes=volumes, securityContext={"fsGroup": 3000})
    with LocalCluster([secret, config, manifest], images=IMAGES) as cluster:
        cluster.start()
        (pod,) = cluster.wait_ready("Deployment", "files", timeout=10)

        def run(script: str) -> str:
            result = pod.exec(["sh", "-c", script])
            return f"{result.returncode}|{result.stdout.strip()}|{result.stderr.strip()}"

        assert run("stat -c '%a %u %g' /etc/creds/nested/token") == "0|440 0 3000|", (
            "fsGroup makes 0400 0440"
        )
        assert run("cat /etc/creds/nested/token") == "0|abc|"
        assert run("ls /etc/creds/nested") == "0|token|", "items select keys"
        assert run("cat /etc/app/app.conf; ls /etc/app") == "0|a=1\napp.conf|"
        assert run("stat -c '%a %g' /scratch") == "0|2777 3000|", (
            "emptyDir is 0777 + setgid fsGroup"
        )
        assert run("touch /scratch/f && ls /also-scratch") == "0|f|"
        assert run("touch /also-scratch/g").startswith("1|"), "readOnly mount"
        assert "Read-only file system" in run("touch /root-file; touch /tmp/x")
        assert run("id -u; id -G") == "0|10001\n10001 3000|"
        assert run("touch /etc/creds/new").startswith("1|"), "secret volumes are read-only"


def test_refresh_swaps_mounted_secrets_atomically_but_not_sub_paths_or_env(tmp_path: Path) -> None:
    secret = obj("Secret", "creds", stringData={"password": "first", "gone": "soon"})
    container = sleeper(
        env=[{"name": "PW", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}}],
        volumeMounts=[
            {"name": "creds", "mountPath": "/etc/creds"},
            {"name": "creds", "mountPath": "/etc/pinned", "subPath": "password"},
        ],
    )
    volumes = [{"name": "creds", "secret": {"secretName": "creds"}}]
    manifest = deployment("reader", [container], volumes=volumes)
    with LocalCluster([secret, manifest], images=IMAGES) as cluster:
        cluster.start()
        (pod,) = cluster.wait_ready("Deployment", "reader", timeout=10)
        assert pod.refresh() == [], "nothing changed, nothing rewritten"
        cluster.apply(obj("Secret", "creds", stringData={"password": "second", "new": "n"}))
        assert pod.refresh() == ["creds"]

        def run(script: str) -> str:
            return pod.exec(["sh", "-c", script]).stdout.strip()

        assert run("cat /etc/creds/password") == "second", "the mounted Secret follows the change"
        assert run("ls /etc/creds") == "new\npassword", "removed keys go, new keys come"
        assert run("readlink /etc/creds/password") == "..data/password", "kubelet's layout"
        assert run("cat /etc/pinned") == "first", "a subPath mount keeps what it mounted"
        assert run('printf %s "$PW"') == "first", "environment variables are set at start"


def test_environment_resolution_and_command_expansion(tmp_path: Path) -> None:
    objects = [
        obj("ConfigMap", "settings", data={"MODE": "fast", "LEVEL": "3"}),
        obj("Secret", "creds", stringData={"url": "redis://u:<pw>@broker:6379/0"}),
        obj("Service", "broker", {"selector": {"app": "x"}, "ports": [{"port": 6379}]}),
    ]
    env = [
        {"name": "A", "value": "alpha"},
        {"name": "B", "value": "$(A)-beta-$$(A)-$(NOPE)"},
        {"name": "URL", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "url"}}},
        {
            "name": "GONE",
            "valueFrom": {"secretKeyRef": {"name": "creds", "key": "x", "optional": True}},
        },
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {
            "name": "MEM",
            "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}},
        },
    ]
    container = {
        "name": "main",
        "image": "debian",
        "env": env,
        "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}],
        "resources": {"limits": {"memory": "64Mi"}},
        "command": [
            "sh",
            "-c",
            "printf '%s|' '$(B)' '$(CFG_MODE)' \"$$HOME\" > /tmp/argv; sleep infinity",
        ],
        "volumeMounts": [{"name": "t", "mountPath": "/tmp"}],
    }
    objects.append(deployment("envs", [container], volumes=[{"name": "t", "emptyDir": {}}]))
    with LocalCluster(objects, images=IMAGES, secret_values={"<pw>": "hunter2"}) as cluster:
        cluster.start()
        (pod,) = cluster.wait_ready("Deployment", "envs", timeout=10)
        env_seen = dict(
            line.split("=", 1) for line in pod.exec(["env"]).stdout.splitlines() if "=" in line
        )
        assert env_seen["B"] == "alpha-beta-$(A)-$(NOPE)"
        assert env_seen["URL"] == "redis://u:hunter2@broker:6379/0", (
            "placeholder substituted inside"
        )
        assert "GONE" not in env_seen, "optional missing key leaves the variable unset"
        assert env_seen["POD"] == pod.name
        assert env_seen["POD_NS"] == NS
        assert env_seen["POD_IP"] == "127.0.0.1"
        assert env_seen["MEM"] == "64"
        assert (env_seen["CFG_MODE"], env_seen["CFG_LEVEL"]) == ("fast", "3"), "envFrom prefix"
        assert env_seen["BROKER_SERVICE_HOST"] == "127.0.0.1", "Service links (enableServiceLinks)"
        assert env_seen["BROKER_PORT"] == "tcp://127.0.0.1:6379"
        assert env_seen["PATH"].startswith("/usr/local/sbin"), "image ENV (default PATH)"
        argv = pod.exec(["cat", "/tmp/argv"]).stdout.strip()
        assert argv == "alpha-beta-$(A)-$(NOPE)|fast|/root|", (
            "command expansion; $$ leaves $HOME to sh"
        )


def test_missing_secret_key_fails_the_pod_and_overrides_change_values(tmp_path: Path) -> None:
    with redis_cluster(tmp_path, secret_overrides={"broker-auth": {"password": None}}) as cluster:
        cluster.start()
        with pytest.raises(PodFailed, match="CreateContainerConfigError") as raised:
            cluster.wait_ready("StatefulSet", "broker", timeout=10)
        assert "key 'password' not found in Secret" in str(raised.value)
    with redis_cluster(
        tmp_path, secret_overrides={f"{NS}/broker-auth": {"password": "other"}}
    ) as cluster:
        cluster.start()
        cluster.wait_ready("StatefulSet", "broker", timeout=10)
        with pytest.raises(redis.AuthenticationError):
            redis_client(cluster).ping()


# -- probes, restarts, termination ----------------------------------------------------------
def test_readiness_and_liveness_probes_gate_and_restart(tmp_path: Path) -> None:
    ready_when_file = {"exec": {"command": ["test", "-f", "/work/ready"]}, "periodSeconds": 1}
    alive_when_no_file = {
        "exec": {"command": ["sh", "-c", "! test -f /work/die"]},
        "periodSeconds": 1,
        "failureThreshold": 2,
    }
    container = sleeper(
        readinessProbe=ready_when_file,
        livenessProbe=alive_when_no_file,
        volumeMounts=[{"name": "work", "mountPath": "/work"}],
    )
    manifest = deployment("probed", [container], volumes=[{"name": "work", "emptyDir": {}}])
    with LocalCluster([manifest], images=IMAGES, backoff=FAST, time_scale=QUICK_PROBES) as cluster:
        cluster.start()
        (pod,) = wait_until(lambda: cluster.pods(owner=("Deployment", "probed")), 5, "pod")
        wait_until(lambda: pod.container().state == "running", 5, "container running")
        time.sleep(1.0)
        assert not pod.ready, f"readiness probe fails until the file exists\n{pod.describe()}"
        pod.exec(["touch", "/work/ready"])
        cluster.wait_ready("Deployment", "probed", timeout=5)
        pod.exec(["touch", "/work/die"])
        wait_until(lambda: pod.restart_count >= 1, 10, "liveness restart", pod.describe)
        assert any("Liveness probe failed" in e for e in pod.events), pod.describe()
        # The emptyDir outlives the container restart, so the new run is killed again.
        wait_until(lambda: pod.restart_count >= 2, 10, "second liveness restart", pod.describe)


def test_startup_probe_gates_liveness(tmp_path: Path) -> None:
    container = sleeper(
        startupProbe={
            "exec": {"command": ["test", "-f", "/tmp/started"]},
            "periodSeconds": 1,
            "failureThreshold": 30,
        },
        livenessProbe={"exec": {"command": ["false"]}, "periodSeconds": 1, "failureThreshold": 1},
        volumeMounts=[{"name": "t", "mountPath": "/tmp"}],
    )
    manifest = deployment("slow", [container], volumes=[{"name": "t", "emptyDir": {}}])
    with LocalCluster([manifest], images=IMAGES, backoff=FAST, time_scale=QUICK_PROBES) as cluster:
        cluster.start()
        (pod,) = wait_until(lambda: cluster.pods(owner=("Deployment", "slow")), 5, "pod")
        time.sleep(1.0)
        assert pod.restart_count == 0, f"liveness must wait for startup\n{pod.describe()}"
        pod.exec(["touch", "/tmp/started"])
        wait_until(lambda: pod.restart_count >= 1, 10, "liveness after startup", pod.describe)


def test_sigstopped_redis_is_restarted_by_liveness_and_data_survives(tmp_path: Path) -> None:
    with redis_cluster(tmp_path) as cluster:
        cluster.start()
        (broker,) = cluster.wait_ready("StatefulSet", "broker", timeout=20)
        client = redis_client(cluster)
        client.set("task", "pdf-1")
        broker.kill(signal.SIGSTOP)
        wait_until(lambda: broker.restart_count >= 1, 15, "liveness restart", broker.describe)
        cluster.wait_ready("StatefulSet", "broker", timeout=10)
        assert client.get("task") == b"pdf-1", "AOF on the claim survives the restart"
        assert "exit code 137" in broker.describe() or broker.container().failed_runs >= 1


def test_claim_survives_pod_deletion_and_statefulset_recreates_pod(tmp_path: Path) -> None:
    with redis_cluster(tmp_path) as cluster:
        cluster.start(only=[("StatefulSet", "broker")])
        (first,) = cluster.wait_ready("StatefulSet", "broker", timeout=20)
        redis_client(cluster).set("queued", "yes")
        listing = first.exec(["stat", "-c", "%a %g", "/data"]).stdout.strip()
        assert listing == "2775 999", "fsGroup makes the fresh claim group-writable"
        first.delete()
        (second,) = cluster.wait_ready("StatefulSet", "broker", timeout=20)
        assert second is not first, "a new pod replaced the deleted one"
        assert second.name == "broker-0"
        assert redis_client(cluster).get("queued") == b"yes", "data on the claim outlives the pod"
        assert "Killing container redis: pod deleted" in "\n".join(first.events)


def test_delete_runs_pre_stop_then_sigterm_then_sigkill_after_grace(tmp_path: Path) -> None:
    trap = "trap 'echo got-term >> /shared/log; exit 0' TERM; while :; do sleep 0.1; done"
    graceful = {
        "name": "graceful",
        "image": "debian",
        "command": ["sh", "-c", trap],
        "lifecycle": {
            "preStop": {"exec": {"command": ["sh", "-c", "echo pre-stop >> /shared/log"]}}
        },
        "volumeMounts": [{"name": "shared", "mountPath": "/shared"}],
    }
    stubborn = sleeper("stubborn")
    claim = obj("PersistentVolumeClaim", "shared", {"accessModes": ["ReadWriteOnce"]})
    manifest = deployment(
        "term",
        [graceful, stubborn],
        terminationGracePeriodSeconds=2,
        volumes=[{"name": "shared", "persistentVolumeClaim": {"claimName": "shared"}}],
    )
    with LocalCluster([claim, manifest], images=IMAGES) as cluster:
        cluster.start()
        (pod,) = cluster.wait_ready("Deployment", "term", timeout=10)
        started = time.monotonic()
        pod.delete()
        took = time.monotonic() - started
        assert pod.container("graceful").exit_code == 0
        assert pod.container("stubborn").exit_code == 137, "sleep ignores SIGTERM as PID 1"
        # The pod's 2 s grace, not the 30 s default: bounds far apart, so load cannot blur them.
        assert 1.8 < took < 20, f"waited the 2s grace period for the stubborn container: {took}"
        (replacement,) = cluster.wait_ready("Deployment", "term", timeout=10)
        log = replacement.exec(["cat", "/shared/log"], container="graceful").stdout
        assert log.splitlines() == ["pre-stop", "got-term"]


def test_init_containers_run_in_order_before_app(tmp_path: Path) -> None:
    init = [
        {
            "name": f"init-{n}",
            "image": "debian",
            "command": ["sh", "-c", f"echo {n} >> /w/order"],
            "volumeMounts": [{"name": "w", "mountPath": "/w"}],
        }
        for n in (1, 2)
    ]
    app = sleeper(volumeMounts=[{"name": "w", "mountPath": "/w"}])
    manifest = deployment(
        "inits", [app], initContainers=init, volumes=[{"name": "w", "emptyDir": {}}]
    )
    with LocalCluster([manifest], images=IMAGES) as cluster:
        cluster.start()
        (pod,) = cluster.wait_ready("Deployment", "inits", timeout=10)
        assert pod.exec(["cat", "/w/order"]).stdout.split() == ["1", "2"]


def test_image_binds_let_a_non_root_pod_run_a_host_venv(tmp_path: Path) -> None:
    container = {
        "name": "app",
        "image": "python:3.11-slim",
        "args": [
            "-c",
            "import sys, yaml; print(sys.prefix, yaml.__name__, flush=True); "
            "import http.server as h; "
            "h.ThreadingHTTPServer(('', 8080), h.SimpleHTTPRequestHandler).serve_forever()",
        ],
        "workingDir": "/opt/venv",
        "ports": [{"name": "http", "containerPort": 8080}],
        "securityContext": {"runAsUser": 10001, "runAsNonRoot": True},
        "readinessProbe": {"httpGet": {"path": "/pyvenv.cfg", "port": "http"}, "periodSeconds": 1},
        "livenessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
    }
    with LocalCluster([deployment("venv", [container])], images=IMAGES) as cluster:
        cluster.start()
        (pod,) = cluster.wait_ready("Deployment", "venv", timeout=10)
        wait_until(lambda: "yaml" in pod.logs(), 10, "app output", pod.describe)
        assert pod.logs().split()[:2] == ["/opt/venv", "yaml"], pod.describe()


# -- Jobs -----------------------------------------------------------------------------------
def test_jobs_complete_fail_after_backoff_limit_and_hit_deadline(tmp_path: Path) -> None:
    objects = [
        job("ok", ["sh", "-c", "echo all good"]),
        job("bad", ["sh", "-c", "echo failing; exit 3"], backoffLimit=1),
        job("slow", ["sleep", "infinity"], activeDeadlineSeconds=1),
        job("retry", ["sh", "-c", "echo try; exit 3"], backoffLimit=1),
    ]
    objects[-1]["spec"]["template"]["spec"]["restartPolicy"] = "OnFailure"
    with LocalCluster(objects, images=IMAGES, backoff=FAST) as cluster:
        cluster.start()
        ok = cluster.run_job("ok", timeout=10)
        assert (ok.succeeded, ok.reason, ok.logs) == (True, "Complete", "all good\n"), ok
        bad = cluster.run_job("bad", timeout=10)
        assert (bad.succeeded, bad.reason) == (False, "BackoffLimitExceeded"), bad
        assert [a.exit_code for a in bad.attempts] == [3, 3], "backoffLimit 1: two attempts"
        assert bad.failed == 2
        slow = cluster.run_job("slow", timeout=10)
        assert (slow.succeeded, slow.reason) == (False, "DeadlineExceeded"), slow
        assert slow.seconds >= 1, f"ended before its 1 s activeDeadlineSeconds: {slow}"
        retry = cluster.run_job("retry", timeout=10)
        assert (retry.succeeded, retry.reason) == (False, "BackoffLimitExceeded"), retry
        assert len(retry.attempts) == 1, "OnFailure restarts the container in the same pod"
        assert retry.logs.count("try") >= 2, retry


# -- isolation and cleanup ------------------------------------------------------------------
def processes_in_netns(netns_inode: int) -> list[int]:
    """PIDs whose network namespace is the given one."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}/ns/net").st_ino == netns_inode:
                    found.append(int(entry))
            except OSError:
                continue
    return found


def test_parallel_clusters_do_not_collide_and_cleanup_leaves_nothing(tmp_path: Path) -> None:
    first, second = redis_cluster(tmp_path / "a"), redis_cluster(tmp_path / "b", password="other")
    with first, second:
        first.start()
        second.start()
        (pod_a,) = first.wait_ready("StatefulSet", "broker", timeout=20)
        (pod_b,) = second.wait_ready("StatefulSet", "broker", timeout=20)
        assert redis_client(second, password="other").ping()
        netns_inode = os.stat(first.netns.path).st_ino
        # Held open to the end: a freed namespace's inode number is handed to the next one,
        # which another xdist worker's cluster may create (its pods would be counted here).
        netns_held = os.open(first.netns.path, os.O_RDONLY | os.O_CLOEXEC)
        names = [first.netns.name, second.netns.name]
        state_dirs = [str(first.state_dir), str(second.state_dir)]
        pids = [pod_a.container().current.process.pid, pod_b.container().current.process.pid]
        assert processes_in_netns(netns_inode), "pods run inside the cluster's namespace"
    listed = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=True
    ).stdout
    assert not any(name in listed for name in names), listed
    mounts = Path("/proc/mounts").read_text()
    assert not any(
        name in mounts or state in mounts for name, state in zip(names, state_dirs, strict=True)
    )
    assert not any(Path(d).exists() for d in state_dirs), "state directories removed"
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids), "container processes gone"
    try:
        assert processes_in_netns(netns_inode) == [], "no process left in the cluster namespace"
    finally:
        os.close(netns_held)
