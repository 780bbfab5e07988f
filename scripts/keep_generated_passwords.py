"""Keep the passwords pulumi-random generated, before upgrading to program-generated ones.

Earlier versions of this project generated `broker_password` and `probe_password` with
pulumi-random. The program now generates them itself (components/generated_secret.py), under
other resource types, so an upgrade would otherwise make new passwords. This moves each value
pulumi-random made into the stack's secret config, where it takes precedence, and drops the
pulumi-random resources from the state (they exist nowhere but in the state, so nothing else is
deleted, and the pulumi-random plugin is no longer needed):

    .venv/bin/python scripts/keep_generated_passwords.py --stack prod

Run it in the project folder with the same Pulumi backend and passphrase as `pulumi up`, then
run `pulumi up`. Values travel through stdin and the state, never through a command line or
the terminal. Exit 0 when done (or nothing to do), 1 when a pulumi command failed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Iterable, Mapping
from typing import Any

RANDOM_PASSWORD = "random:index/randomPassword:RandomPassword"  # noqa: S105 (a type token)
RANDOM_PROVIDER = "pulumi:providers:random"
CONFIG_KEYS = {
    "broker-celery-password": "broker_password",
    "broker-probe-password": "probe_password",
}
"""pulumi-random resource name -> the config key that now holds the same password."""


class PulumiFailed(RuntimeError):
    """A pulumi command exited non-zero; the message is its stderr (it holds no secret)."""


def pulumi(args: list[str], stdin: str | None = None, timeout: float = 300) -> str:
    """Run the Pulumi CLI on PATH (bounded), return stdout; raise PulumiFailed on failure."""
    result = subprocess.run(
        ["pulumi", *args, "--non-interactive"],
        input=stdin, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        msg = f"pulumi {args[0]} {args[1] if len(args) > 1 else ''} failed: {result.stderr.strip()}"
        raise PulumiFailed(msg)
    return result.stdout


def random_resources(state: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Return the pulumi-random resources (passwords and providers) of an exported state."""
    resources = state.get("deployment", {}).get("resources") or []
    return [r for r in resources if r.get("type") in (RANDOM_PASSWORD, RANDOM_PROVIDER)]


def name_of(resource: Mapping[str, Any]) -> str:
    """Return a resource's logical name: the last part of its URN."""
    return str(resource["urn"]).rsplit("::", 1)[-1]


def passwords_to_keep(
    resources: Iterable[Mapping[str, Any]], configured: Iterable[str]
) -> dict[str, str]:
    """Return {config key: value} for each generated password whose key is not configured yet.

    A key the user already set keeps its value: the program uses it, not the generated one.
    """
    configured = set(configured)
    kept: dict[str, str] = {}
    for resource in resources:
        key = CONFIG_KEYS.get(name_of(resource))
        if resource.get("type") != RANDOM_PASSWORD or key is None or key in configured:
            continue
        value = resource.get("outputs", {}).get("result")
        if isinstance(value, dict):  # a secret: {sig, "plaintext": JSON} with --show-secrets
            if "plaintext" not in value:
                msg = f"{name_of(resource)}: the export holds ciphertext; is the passphrase set?"
                raise PulumiFailed(msg)
            value = json.loads(value["plaintext"])
        if isinstance(value, str) and value:
            kept[key] = value
    return kept


def main(argv: list[str]) -> int:
    """Move pulumi-random passwords into secret config, then drop pulumi-random from the state."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stack", required=True, help="the stack to upgrade (dev, staging, prod)")
    args = parser.parse_args(argv)
    stack = ["--stack", args.stack]
    try:
        state = json.loads(pulumi(["stack", "export", "--show-secrets", *stack]))
        resources = random_resources(state)
        if not resources:
            print(f"stack {args.stack}: no pulumi-random resource; nothing to do")
            return 0
        configured = json.loads(pulumi(["config", *stack, "--json"])).keys()
        configured = [key.partition(":")[2] for key in configured]
        for key, value in passwords_to_keep(resources, configured).items():
            pulumi(["config", "set", "--secret", key, *stack], stdin=value)
            print(f"stack {args.stack}: kept the generated {key} in secret config")
        passwords = [r for r in resources if r["type"] == RANDOM_PASSWORD]
        providers = [r for r in resources if r["type"] == RANDOM_PROVIDER]
        for resource in [*passwords, *providers]:  # a provider goes after what it manages
            pulumi(["state", "delete", resource["urn"], "--yes", *stack])
            print(f"stack {args.stack}: dropped {name_of(resource)} from the state")
    except PulumiFailed as error:
        print(f"keep_generated_passwords: {error}", file=sys.stderr)
        return 1
    print(f"stack {args.stack}: done; run `pulumi up --stack {args.stack}`")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
