"""`render` reads stack files exactly as the real Pulumi CLI does: the CLI is the oracle.

brokerctl/stackfile.py follows the CLI's YAML reading (yaml.v3, Go's number and JSON rules);
here the pinned CLI reads the same tricky stack file and both must hand the program the same
value for every key, so `render`, `settings` and `pulumi up` can never disagree.
"""

from __future__ import annotations

import json
from pathlib import Path

from brokerctl import mockrun
from tests.realengine.engine import RealStack

TRICKY = """\
config:
  celery-redis:as_text_yes: yes
  celery-redis:as_text_on: On
  celery-redis:bool_true: True
  celery-redis:exponent: 1e9
  celery-redis:hex: 0x1F
  celery-redis:octal: 012
  celery-redis:float: 1.50
  celery-redis:tilde: ~
  celery-redis:quoted: "512Mi"
  celery-redis:date: 2001-12-14
  celery-redis:object:
    flag: yes
    size: 1e3
    list: [0x10, no, "x", 1.0]
    nested: {b: 2, a: 1}
"""


def _same(ours: str, theirs: str) -> bool:
    """Compare two config strings; JSON texts compare by what they decode to."""
    if ours == theirs:
        return True
    try:
        return json.loads(ours) == json.loads(theirs)
    except json.JSONDecodeError:
        return False


def test_render_reads_a_stack_file_as_the_pulumi_cli_does(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "config").mkdir(parents=True)
    (project / "Pulumi.yaml").write_text(
        "name: celery-redis\nruntime: python\nstackConfigDir: config\n"
    )
    (project / "config" / "Pulumi.tricky.yaml").write_text(TRICKY)
    stack = RealStack(project, "tricky", tmp_path / "state", tmp_path / "no-kubeconfig")
    stack.pulumi("login", stack.env()["PULUMI_BACKEND_URL"])
    stack.pulumi("stack", "init", "tricky", "--secrets-provider", "passphrase")
    cli = json.loads(stack.pulumi("config", "--json", "--stack", "tricky").stdout)

    ours, _ = mockrun.read_stack_config("tricky", project / "config")
    ours = {k: v for k, v in ours.items() if k.startswith("celery-redis:")}
    assert set(ours) == set(cli), f"keys differ: ours {sorted(ours)}, the CLI's {sorted(cli)}"
    mismatches = {
        key: (ours[key], cli[key].get("value"))
        for key in cli
        if not _same(ours[key], str(cli[key].get("value")))
    }
    assert not mismatches, f"render and the CLI read these keys differently: {mismatches}"
