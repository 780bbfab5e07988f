"""The provider the real-engine tests build is the one the Python SDK pin asks the engine for.

The kubernetes Python SDK tells the engine which provider plugin version to load; if
requirements.txt and scripts/toolchain.sh disagree, the tests would run a provider no user gets.
"""

import re
from pathlib import Path

from tests.realengine.toolchain import pinned

ROOT = Path(__file__).resolve().parents[2]


def test_the_sdk_pin_and_the_built_provider_are_the_same_release() -> None:
    requirements = (ROOT / "requirements.txt").read_text()
    match = re.search(r"^pulumi-kubernetes==(\S+)$", requirements, re.MULTILINE)
    assert match, "requirements.txt does not pin pulumi-kubernetes"
    assert match.group(1) == pinned("PROVIDER_VERSION"), (
        f"requirements.txt pins pulumi-kubernetes {match.group(1)}, scripts/toolchain.sh "
        f"builds provider {pinned('PROVIDER_VERSION')}"
    )


def test_no_plugin_but_kubernetes_is_needed() -> None:
    requirements = (ROOT / "requirements.txt").read_text()
    providers = re.findall(r"^(pulumi-[a-z0-9-]+)==", requirements, re.MULTILINE)
    assert providers == ["pulumi-kubernetes"], f"provider SDKs in requirements.txt: {providers}"
