"""Passwords generated once by the program itself and kept, as secrets, in Pulumi state.

Why not pulumi-random: every plugin a stack needs must be one its users can install and our
tests can run for real, and pulumi-random's provider cannot be built here. A Python dynamic
resource needs no plugin beyond the Python SDK's own dynamic provider host, so a user's
`pulumi up` needs the kubernetes plugin and nothing else.

The caveats of dynamic resources, and how this module meets them:
- The provider object is pickled into state and unpickled by a separate provider process, which
  imports this module by name: the class lives here (importable from the project folder, where
  Pulumi runs plugins), holds no state of its own, and captures nothing from the program.
- Editing this code changes the pickled provider, which by default would count as a change:
  `diff` compares only `length`, so a code change never regenerates a password.
- Create's outputs are plain values to the dynamic host: `result` is marked secret with
  `additional_secret_outputs`, so state, previews and stack outputs hold ciphertext only.
- `refresh` reads back what state holds (there is nothing outside state to compare with).
"""

from __future__ import annotations

import secrets
import string
from typing import Any

import pulumi
from pulumi import dynamic

# Letters and digits only: the value goes into redis:// URLs, ACL lines and shell-free env vars,
# where every other character would need escaping somewhere.
ALPHABET = string.ascii_letters + string.digits
TYPE_NAME = "GeneratedPassword"


def new_password(length: int) -> str:
    """Return a password of `length` characters from a cryptographic random source."""
    return "".join(secrets.choice(ALPHABET) for _ in range(length))


class _GeneratedPasswordProvider(dynamic.ResourceProvider):
    """Create a password once; keep it until the resource is replaced or deleted."""

    def create(self, props: dict[str, Any]) -> dynamic.CreateResult:
        """Generate the password; the id carries no part of it."""
        length = int(props["length"])
        return dynamic.CreateResult(
            id_=secrets.token_hex(8), outs={"length": length, "result": new_password(length)}
        )

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.DiffResult:
        """Only a new length makes a new password; a change to this code never does."""
        changed = int(olds.get("length", 0)) != int(news["length"])
        return dynamic.DiffResult(
            changes=changed, replaces=["length"] if changed else [], delete_before_replace=False
        )

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.UpdateResult:
        """Keep the stored password (diff never asks for an in-place update; be safe anyway)."""
        return dynamic.UpdateResult(outs={"length": int(news["length"]), "result": olds["result"]})


class GeneratedPassword(dynamic.Resource, module="celery-redis", name=TYPE_NAME):
    """A password generated on the first `pulumi up` and stable in state afterwards."""

    result: pulumi.Output[str]

    def __init__(
        self, name: str, length: int = 32, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        secret_outputs = pulumi.ResourceOptions(additional_secret_outputs=["result"])
        super().__init__(
            _GeneratedPasswordProvider(),
            name,
            {"length": length, "result": None},
            pulumi.ResourceOptions.merge(opts, secret_outputs),
        )
