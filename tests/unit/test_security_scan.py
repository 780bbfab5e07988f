"""checkov over every stack's rendered manifests: zero failed checks beyond the listed skips."""

from __future__ import annotations

import pytest

from scripts.checkov_report import CHECKOV, VARIANTS, render, scan, skipped_checks

STACKS = ("dev", "staging", "prod", *VARIANTS)


def test_every_skip_has_a_reason():
    skips = skipped_checks()
    assert skips, "the skip list is empty or unreadable"
    for check_id, reason in skips.items():
        assert check_id.startswith("CKV"), f"{check_id} is not a checkov check id"
        assert len(reason.split()) >= 8, f"{check_id}: the reason is too thin to judge: {reason!r}"


@pytest.mark.parametrize("stack", STACKS)
def test_checkov_finds_no_failed_check(stack, tmp_path):
    assert CHECKOV.exists(), (
        f"{CHECKOV} missing: run `make test` (scripts/bootstrap.sh --test) first"
    )
    render(stack, tmp_path / stack)
    failed = scan(tmp_path / stack)
    listing = "\n".join(f"{c['check_id']} {c['resource']}: {c['check_name']}" for c in failed)
    assert not failed, f"{stack}: checkov failed checks:\n{listing}"


def test_checkov_would_catch_a_privileged_container(tmp_path):
    assert CHECKOV.exists(), f"{CHECKOV} missing"
    render("dev", tmp_path / "dev")
    target = next((tmp_path / "dev").glob("deployment-*.yaml"))
    text = target.read_text().replace("privileged: false", "privileged: true")
    assert "privileged: true" in text, "no container to make privileged"
    target.write_text(text)
    failed = {c["check_id"] for c in scan(tmp_path / "dev")}
    assert "CKV_K8S_16" in failed, f"checkov did not flag a privileged container: {failed}"
