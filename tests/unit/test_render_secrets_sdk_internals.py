"""The Pulumi SDK behaviour render relies on beyond the SDK's public API, pinned by tests.

Two places lean on it, each one small function: components.stack_config.explicit_runtime_config
(lists the keys `set_all_config` set; the SDK offers no public listing) and
brokerctl.mockrun.forget_mock_root_stack (drops the root stack `set_mocks` registers, through
`set_root_resource(None)`, which the SDK types for a Resource). If an SDK upgrade changes either,
these tests fail before a render silently loses its config or its stack outputs.
"""

from __future__ import annotations

import asyncio

import pulumi
import pytest
from pulumi.runtime import mocks as pulumi_mocks

from brokerctl import mockrun
from components.stack_config import explicit_runtime_config


class _NoMocks(pulumi_mocks.Mocks):
    def new_resource(self, args: pulumi_mocks.MockResourceArgs) -> tuple[str, dict]:
        return f"{args.name}-id", dict(args.inputs)

    def call(self, args: pulumi_mocks.MockCallArgs) -> tuple[dict, list | None]:
        return {}, None


@pytest.fixture
def event_loop_for_mocks():
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield loop
    loop.close()
    asyncio.set_event_loop(None)


def test_explicit_config_lists_what_set_all_config_set():
    try:
        pulumi.runtime.set_all_config({"celery-redis:a": "1", "celery-redis:b": "x"}, ["x:b"])
        assert explicit_runtime_config() == {"celery-redis:a": "1", "celery-redis:b": "x"}
        assert pulumi.runtime.is_config_secret("x:b")
        assert not pulumi.runtime.is_config_secret("celery-redis:a")
    finally:
        pulumi.runtime.set_all_config({}, [])
    assert explicit_runtime_config() == {}, "an empty explicit config must read as none"


def test_set_mocks_registers_a_root_stack_that_forgetting_removes(event_loop_for_mocks):
    pulumi.runtime.set_mocks(_NoMocks(), project="p", stack="s", preview=False)
    assert pulumi.runtime.settings.get_root_resource() is not None, (
        "set_mocks no longer registers a root stack: forget_mock_root_stack may be unneeded"
    )
    with pytest.raises(Exception, match="Only one root Pulumi Stack"):
        event_loop_for_mocks.run_until_complete(pulumi.runtime.run_in_stack(lambda: None))

    run = mockrun.ProgramRun()
    recording = mockrun._RecordingMocks(run)
    monitor = mockrun._RecordingMonitor(recording)
    pulumi.runtime.set_mocks(recording, project="p", stack="s", preview=False, monitor=monitor)
    mockrun.forget_mock_root_stack()
    assert pulumi.runtime.settings.get_root_resource() is None

    def program() -> None:
        pulumi.export("answer", 42)

    event_loop_for_mocks.run_until_complete(pulumi.runtime.run_in_stack(program))
    assert run.outputs == {"answer": 42}, "the program's exports are not the stack's outputs"
