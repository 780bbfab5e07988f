"""`broker.topology: sentinel`: what the model accepts, and every refusal naming key and value."""

from __future__ import annotations

from typing import Any

from tests.unit.test_settings_cross_field import problems_of, settings_of, stack_config


def sentinel_broker(**sentinel: Any) -> dict[str, Any]:
    return {"topology": "sentinel", "sentinel": sentinel}


def test_a_lasting_sentinel_stack_gets_three_pods_a_majority_quorum_and_the_loss_bound() -> None:
    settings = settings_of(stack_config(broker={"topology": "sentinel"}))
    sentinel = settings.broker.sentinel
    assert (sentinel.replicas, sentinel.effective_quorum) == (3, 2)
    assert sentinel.min_replicas_to_write == 1, "the loss bound must be on by default"
    assert sentinel.spread == "required"
    assert (
        settings_of(
            stack_config(broker=sentinel_broker(replicas=5))
        ).broker.sentinel.effective_quorum
        == 3
    )


def test_a_quorum_beyond_the_sentinels_is_refused() -> None:
    (problem,) = problems_of(stack_config(broker=sentinel_broker(quorum=4)))
    assert "broker.sentinel.quorum" in problem, problem
    assert "4" in problem, problem
    assert "allowed: 1 to 3" in problem, problem


def test_a_loss_bound_no_replica_set_can_meet_is_refused() -> None:
    (problem,) = problems_of(stack_config(broker=sentinel_broker(min_replicas_to_write=3)))
    assert "broker.sentinel.min_replicas_to_write" in problem, problem
    assert "allowed: 0 to 2" in problem, problem


def test_fewer_than_three_pods_is_refused() -> None:
    (problem,) = problems_of(stack_config(broker=sentinel_broker(replicas=2)))
    assert "broker.sentinel.replicas" in problem, problem
    assert "3" in problem, problem


def test_preferred_spread_is_refused_on_a_lasting_stack_and_allowed_on_a_throwaway_one() -> None:
    (problem,) = problems_of(stack_config(broker=sentinel_broker(spread="preferred")))
    assert "broker.sentinel.spread" in problem, problem
    assert "preferred" in problem, problem
    assert "ephemeral" in problem, problem
    ephemeral = stack_config(
        broker={**sentinel_broker(spread="preferred"), "persistence": "aof"},
        ephemeral=True,
    )
    assert settings_of(ephemeral).broker.sentinel.spread == "preferred"


def test_sentinel_port_sharing_the_redis_or_exporter_port_is_refused() -> None:
    (problem,) = problems_of(stack_config(broker=sentinel_broker(port=6379)))
    assert "broker.sentinel.port" in problem, problem
    assert "broker.port" in problem, problem
    clash = stack_config(broker=sentinel_broker(port=9121), metrics={"exporter_enabled": True})
    (problem,) = problems_of(clash)
    assert "metrics.exporter_port" in problem, problem


def test_a_standalone_stack_ignores_sentinel_settings_it_does_not_use() -> None:
    """A standalone stack may keep a sentinel section (prepared for a move): no rule fires."""
    settings = settings_of(stack_config(broker={"sentinel": {"spread": "preferred"}}))
    assert settings.broker.topology == "standalone"
