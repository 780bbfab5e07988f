"""TLS and credential rotation in the rendered broker, without a server.

redis.conf serves TLS only; every client library the project uses reads the client URL as
"verify against our CA"; client pods get only the CA; the Certificate covers every name a
client uses; the start script and the reloader share one ACL writer; a configured previous
password reaches the users Secret and nothing else.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from kombu.utils.url import parse_url

from brokerctl import mockrun, render
from components import broker, redis_config
from components.settings import PROJECT, StackSettings
from components.stack_config import SettingsError, parse_stack_config
from tests.support.crd_schema import validate_custom_resources

ISSUER = {"enabled": True, "cert_manager_issuer": "internal-ca"}
PREVIOUS = "canary-Previous-5d1e0c7a"


def make_settings(tls: dict[str, Any] | None = None, **broker_settings: Any) -> StackSettings:
    """Return settings with TLS and broker overrides (ephemeral, so any persistence is allowed)."""
    return StackSettings.model_validate(
        {
            "ephemeral": True,
            "tls": tls or {},
            "broker": broker_settings,
            "workers": {
                "pools": [
                    {"name": "default", "image": "registry.example.com/transcritor-pdf:1.0.0"}
                ]
            },
        }
    )


def directives(conf: str) -> dict[str, str]:
    """Each directive of a redis.conf and its (last) value; comments dropped."""
    return {
        line.partition(" ")[0]: line.partition(" ")[2]
        for line in conf.splitlines()
        if line.strip() and not line.startswith("#")
    }


def tls_url(db: int = 0) -> str:
    return broker.client_url(make_settings(ISSUER), "celery", "p@ss/word", "broker.ns.svc", db)


def test_tls_redis_conf_closes_the_plain_port_and_serves_the_secrets_files():
    conf = directives(redis_config.redis_conf(make_settings(ISSUER, port=6380)))
    assert conf["port"] == "0", "the plain port must be closed"
    assert conf["tls-port"] == "6380"
    for directive, key in (
        ("tls-cert-file", "tls.crt"),
        ("tls-key-file", "tls.key"),
        ("tls-ca-cert-file", "ca.crt"),
    ):
        assert conf[directive] == f"{redis_config.TLS_DIR}/{key}", f"{directive}: {conf}"
    assert conf["tls-auth-clients"] == "no", "clients authenticate with ACL passwords"


def test_plain_redis_conf_has_no_tls_directive():
    conf = directives(redis_config.redis_conf(make_settings()))
    assert conf["port"] == "6379"
    assert not [name for name in conf if name.startswith("tls-")], conf


def test_kombu_reads_the_client_url_as_verify_against_our_ca():
    ssl_options = parse_url(tls_url())["ssl"]
    assert ssl_options == {
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
        "ssl_ca_certs": broker.CLIENT_CA_FILE,
    }, f"kombu would not verify the broker: {ssl_options}"


def test_celery_result_backend_reads_the_client_url_as_verify_against_our_ca():
    backend = Celery("t", backend=tls_url(db=1), set_as_current=False).backend
    params = backend.connparams
    assert params["connection_class"] is redis.SSLConnection, params
    assert params["ssl_cert_reqs"] == ssl.CERT_REQUIRED, params
    assert params["ssl_ca_certs"] == broker.CLIENT_CA_FILE, params
    assert params["db"] == 1
    assert params["password"] == "p@ss/word", "the percent-encoded password must round-trip"


def test_redis_py_reads_the_client_url_as_verify_against_our_ca():
    pool = redis.ConnectionPool.from_url(tls_url())
    connection = pool.make_connection()
    assert isinstance(connection, redis.SSLConnection)
    assert connection.cert_reqs == ssl.CERT_REQUIRED
    assert connection.ca_certs == broker.CLIENT_CA_FILE
    assert connection.check_hostname, "the broker's name must be checked against its certificate"


def test_client_urls_stay_plain_without_tls():
    url = broker.client_url(make_settings(), "celery", "pw", "broker.ns.svc", 0)
    assert url == "redis://celery:pw@broker.ns.svc:6379/0"


def test_client_pods_get_only_the_ca_and_only_with_tls():
    assert broker.client_ca_volumes(make_settings()) == []
    assert broker.client_ca_mounts(make_settings()) == []
    settings = make_settings({"enabled": True, "secret_name": "my-broker-tls"})
    (volume,) = broker.client_ca_volumes(settings)
    (mount,) = broker.client_ca_mounts(settings)
    assert volume.secret.secret_name == "my-broker-tls"
    assert [(item.key, item.path) for item in volume.secret.items] == [("ca.crt", "ca.crt")], (
        "client pods must never receive tls.key"
    )
    assert mount.name == volume.name
    assert mount.read_only
    assert f"{mount.mount_path}/ca.crt" == broker.CLIENT_CA_FILE


@pytest.fixture(scope="module")
def prod_objects() -> list[dict[str, Any]]:
    """Render prod with a configured previous password (a rotation in progress)."""
    config, secret_keys = mockrun.read_stack_config("prod")
    config[f"{PROJECT}:broker_password_previous"] = PREVIOUS
    secret_keys.append(f"{PROJECT}:broker_password_previous")
    run = mockrun.run_program("prod", config, secret_keys)
    return [render.manifest(r) for r in run.resources if render.is_kubernetes_object(r.type)]


def one(objects: list[dict[str, Any]], kind: str, name_suffix: str) -> dict[str, Any]:
    (found,) = [
        o for o in objects if o["kind"] == kind and o["metadata"]["name"].endswith(name_suffix)
    ]
    return found


def test_prod_certificate_covers_every_service_and_pod_name(prod_objects, tmp_path: Path):
    certificate = one(prod_objects, "Certificate", "-broker-tls")
    spec = certificate["spec"]
    names = set(spec["dnsNames"])
    for host in (
        "celery-broker",
        "celery-broker-headless",
        "celery-broker-0.celery-broker-headless",
    ):
        for suffix in (
            "",
            ".transcritor-prod",
            ".transcritor-prod.svc",
            ".transcritor-prod.svc.cluster.local",
        ):
            assert f"{host}{suffix}" in names, f"{host}{suffix} missing from {sorted(names)}"
    assert spec["usages"] == ["server auth", "digital signature"]
    assert spec["duration"] == "2160h"
    assert spec["issuerRef"] == {
        "name": "internal-ca",
        "kind": "ClusterIssuer",
        "group": "cert-manager.io",
    }
    statefulset = one(prod_objects, "StatefulSet", "-broker")
    volumes = {v["name"]: v for v in statefulset["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == spec["secretName"]
    assert validate_custom_resources([certificate], tmp_path) == []


def test_previous_password_reaches_only_the_users_secret(prod_objects):
    users = one(prod_objects, "Secret", "-broker-users")
    assert users["stringData"][redis_config.CELERY_PREVIOUS_PASSWORD_FILE] == PREVIOUS
    carriers = [o["metadata"]["name"] for o in prod_objects if PREVIOUS in str(o)]
    assert carriers == [users["metadata"]["name"]], f"the old password reached {carriers}"


def test_previous_password_must_be_a_secret():
    config = {f"{PROJECT}:broker_password_previous": "in-plain-text"}
    with pytest.raises(SettingsError, match="broker_password_previous: stored in plain text"):
        parse_stack_config(config, [], "config/Pulumi.test.yaml")


def test_reloader_sidecar_is_hardened_probed_and_shares_the_acl_writer(prod_objects):
    pod = one(prod_objects, "StatefulSet", "-broker")["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    reloader = containers["reloader"]
    assert reloader["image"] == containers["redis"]["image"]
    assert reloader["securityContext"]["allowPrivilegeEscalation"] is False
    assert reloader["resources"]["limits"]["memory"]
    assert reloader["livenessProbe"], "every container needs a liveness probe"
    assert reloader["readinessProbe"], "every container needs a readiness probe"
    # The prod stack's queues: their lists are the KEDA and exporter users' keys.
    writer = redis_config.acl_functions(tls=True, queues=("celery", "short"))
    for name, script in (
        ("redis", containers["redis"]["command"][2]),
        ("reloader", reloader["command"][2]),
    ):
        assert script.count(writer) == 1, f"{name} does not run the shared ACL writer"
        assert script.count("write_acl_file() {") == 1, f"{name} defines the ACL writer twice"
    rules = redis_config.acl_user_rules()["reloader"]
    assert rules.endswith("-@all +acl|setuser +config|set +script|kill +ping"), rules
    assert "~" not in rules, "the reloader needs no key"


def test_client_revision_follows_the_urls_and_hides_the_password():
    first = broker.client_revision("key", "rediss://celery:old@h/0", "rediss://celery:old@h/1")
    again = broker.client_revision("key", "rediss://celery:old@h/0", "rediss://celery:old@h/1")
    rotated = broker.client_revision("key", "rediss://celery:new@h/0", "rediss://celery:new@h/1")
    assert first == again, "the revision must be stable, or every update rolls the workers"
    assert first != rotated, "a new password must roll the workers"
    assert (
        broker.client_revision("other-key", "rediss://celery:old@h/0", "rediss://celery:old@h/1")
        != first
    )
