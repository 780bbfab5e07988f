"""Failover figures of the Sentinel topology: real Redis, Sentinel and Celery as local pods.

    .venv/bin/python bench/failover.py [--runs 10] [--scenario NAME ...] [--json FILE]

Scenarios (each on its own stack, faults repeated on it; tests/ha/sentinel_stack.py makes them):
- unplanned: the master's node is lost (its pod cut off from every other pod, everything in
  it killed -9) under a steady producer (20 tasks/s) and two workers; shipped defaults.
- chart: the same with the most used chart's Sentinel timings (down-after 60 s,
  failover-timeout 180 s), on the same rendering otherwise.
- planned: the master's pod is deleted (preStop handover, then SIGTERM).
- partition: the master's pod is cut off, its processes running; a client on its side of the
  cut writes every ~0.1 s until the master refuses (NOREPLICAS).
- elections: the unplanned fault on the broker alone (no workers, no producer), to see many
  elections quickly: how long Sentinels take to promote and how often an election splits.
- early: a new stack each run, its master's node lost as soon as both replicas are in sync,
  before every Sentinel has read them from the master's INFO (every 10 s): the failover tail.
`--down-after-ms` and `--failover-timeout-ms` replace the shipped timings (not the chart's).
After each fault the lost node comes back (or the deleted pod is recreated), its Redis rejoins
as a replica and every Sentinel knows every replica again before the next run.

Per run: seconds from the fault to the first task published after it that a worker ran
(`resumed`), to Sentinel's +switch-master (`promoted`), the elections it took, acknowledged
publishes that no worker ran (`lost`), tasks run twice, the span of failed publishes and the
longest time without an acknowledged publish. Printed as median and worst with every value
sorted, the machine's load average beside them. Needs root, like the tests.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.ha.sentinel_stack import (
    Outcome,
    Publish,
    SentinelStack,
    parse_publishes,
    render,
    running_stack,
    scratch_dir,
    stack_file,
    standin_images,
)
from tests.podrunner import Pod, WaitTimeout, wait_until

CHART = {"down_after_ms": 60000, "failover_timeout_ms": 180000}
"""The most used chart's Sentinel defaults (Bitnami redis: downAfterMilliseconds 60000,
failoverTimeout 180000)."""

STACK_NUMBERS = itertools.count()
"""Each scenario renders its own stack folder."""
SCENARIOS = ("unplanned", "chart", "planned", "partition", "elections", "early")
STEADY_SECONDS = 3.0
"""Steady production before each fault, after the stack settled."""
EARLY_TIMEOUT = 120.0
"""Bound on one first-deploy failover: room for five retries 2 x 10 s apart."""
RESUME_TIMEOUT = 420.0
"""Bound on one run's failover and resumed consumption (chart timings: up to 2 x 180 s retry)."""


@dataclass
class Run:
    """One fault and what followed it."""

    fault_at: float
    window: tuple[float, float] = (0.0, 0.0)
    events: list[tuple[float, str]] = field(default_factory=list)
    refused_after: float | None = None
    accepted_while_cut: int = 0
    rejoined_after: float | None = None


@dataclass
class Figures:
    """One scenario's figures over its runs."""

    scenario: str
    timings: dict[str, int]
    runs: int
    resumed: list[float]
    promoted: list[float]
    elections: list[int]
    lost: list[int]
    lost_span: list[tuple[float, float] | None]
    executed_twice: list[int]
    failed_but_ran: list[int]
    failure_window: list[float]
    outage: list[float]
    pending_redelivery: int
    refused_after: list[float]
    accepted_while_cut: list[int]
    rejoined_after: list[float]
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    seconds: float
    timelines: list[list[tuple[float, str]]]


def settle(stack: SentinelStack) -> Pod:
    """Wait until every Sentinel knows the master, both replicas and both other Sentinels."""
    return stack.wait_sentinels_agree(timeout=120)


def wait_resumed(stack: SentinelStack, producer: Pod, fault_at: float) -> None:
    """Wait until a task published after the fault ran (or RESUME_TIMEOUT passed)."""

    def resumed() -> bool:
        ran = stack.executions()
        return any(p.label in ran for p in parse_publishes(producer.logs()) if p.started > fault_at)

    wait_until(resumed, RESUME_TIMEOUT, "consumption to resume", interval=0.5)


def lose_node_run(stack: SentinelStack, producer: Pod | None) -> Run:
    """Lose the master's node; bring it back once consumption resumed (or, alone, promoted)."""
    master = settle(stack)
    time.sleep(STEADY_SECONDS)
    run = Run(fault_at=stack.lose_node(master))
    new = stack.wait_master(other_than=master.name, timeout=RESUME_TIMEOUT)
    if producer is not None:
        wait_resumed(stack, producer, run.fault_at)
    run.events = stack.sentinel_log()
    healed = time.time()
    stack.reconnect(master.name)
    stack.wait_replica_of(master.name, new, timeout=120)
    run.rejoined_after = time.time() - healed
    return run


def planned_run(stack: SentinelStack, producer: Pod) -> Run:
    """Delete the master's pod; the StatefulSet brings it back as a replica."""
    master = settle(stack)
    time.sleep(STEADY_SECONDS)
    run = Run(fault_at=time.time())
    master.delete(timeout=120)
    new = stack.wait_master(other_than=master.name, timeout=RESUME_TIMEOUT)
    wait_resumed(stack, producer, run.fault_at)
    run.events = stack.sentinel_log()
    stack.wait_replica_of(master.name, new, timeout=120)
    run.rejoined_after = time.time() - run.fault_at
    return run


def partition_run(stack: SentinelStack, producer: Pod) -> Run:
    """Cut the master off, processes running; a client beside it writes until refused."""
    master = settle(stack)
    time.sleep(STEADY_SECONDS)
    run = Run(fault_at=stack.cut_off(master))
    while time.time() - run.fault_at < 30:
        reply = stack.redis(master, "RPUSH", "bench-partition-probe", "x", user="celery")
        if not reply.isdigit():
            run.refused_after = time.time() - run.fault_at
            break
        run.accepted_while_cut += 1
    new = stack.wait_master(other_than=master.name, timeout=RESUME_TIMEOUT)
    wait_resumed(stack, producer, run.fault_at)
    run.events = stack.sentinel_log()
    healed = time.time()
    stack.reconnect(master.name)
    stack.wait_replica_of(master.name, new, timeout=120)
    run.rejoined_after = time.time() - healed
    return run


RUNNERS = {
    "unplanned": lose_node_run,
    "chart": lose_node_run,
    "planned": planned_run,
    "partition": partition_run,
    "elections": lose_node_run,
}


def measure_early(runs: int, work: Path, timings: dict[str, int]) -> Figures:
    """Boot a new stack per run; lose the master's node once both replicas are in sync."""
    images = standin_images(work)
    manifests = render(stack_file(**timings), work, f"bench-{next(STACK_NUMBERS)}")
    load_before = os.getloadavg()
    started = time.monotonic()
    outcomes = []
    for index in range(runs):
        with running_stack(manifests, images) as stack:
            stack.start_broker()
            master = stack.wait_master(timeout=60)
            for pod in stack.broker_pods():
                if pod is not master:
                    stack.wait_replica_of(pod.name, master)
            fault_at = stack.lose_node(master)
            with suppress(WaitTimeout):  # no promotion at all is a result too (inf)
                stack.wait_master(other_than=master.name, timeout=EARLY_TIMEOUT)
            outcomes.append(Outcome(fault_at, [], {}, stack.sentinel_log()))
        print(f"  early run {index + 1}/{runs} done", file=sys.stderr, flush=True)
    return Figures(
        scenario="early",
        timings=timings,
        runs=runs,
        resumed=[],
        promoted=[o.promoted_after() or float("inf") for o in outcomes],
        elections=[o.elections() for o in outcomes],
        lost=[],
        lost_span=[],
        executed_twice=[],
        failed_but_ran=[],
        failure_window=[],
        outage=[],
        pending_redelivery=0,
        refused_after=[],
        accepted_while_cut=[],
        rejoined_after=[],
        load_before=load_before,
        load_after=os.getloadavg(),
        seconds=time.monotonic() - started,
        timelines=[election_lines(o) for o in outcomes],
    )


def measure(scenario: str, runs: int, work: Path, timings: dict[str, int]) -> Figures:
    """Boot one stack for the scenario and make `runs` faults on it."""
    if scenario == "early":
        return measure_early(runs, work, timings)
    timings = CHART if scenario == "chart" else timings
    images = standin_images(work)
    manifests = render(stack_file(**timings), work, f"bench-{next(STACK_NUMBERS)}")
    load_before = os.getloadavg()
    started = time.monotonic()
    with running_stack(manifests, images) as stack:
        stack.start_broker()
        settle(stack)
        producer = None
        if scenario != "elections":
            stack.start_workers()
            producer = stack.start_producer(seconds=24 * 3600)
            stack.wait_acknowledged(producer, 20)
        done: list[Run] = []
        for index in range(runs):
            done.append(RUNNERS[scenario](stack, producer))
            print(f"  {scenario} run {index + 1}/{runs} done", file=sys.stderr, flush=True)
        publishes: list[Publish] = []
        executions: dict[str, list[float]] = {}
        pending = 0
        if producer is not None:
            publishes = stack.stop_producer(producer)
            stack.wait_drained({p.label for p in publishes if p.acknowledged}, timeout=120)
            executions = stack.executions()
            pending = stack.pending_redelivery(stack.wait_master(timeout=60))
    edges = [run.fault_at - STEADY_SECONDS for run in done[1:]] + [float("inf")]
    outcomes = [
        Outcome(
            fault_at=run.fault_at,
            publishes=in_window(publishes, run.fault_at - STEADY_SECONDS, end),
            executions=executions,
            sentinel_log=run.events,
        )
        for run, end in zip(done, edges, strict=True)
    ]
    return Figures(
        scenario=scenario,
        timings=timings,
        runs=len(done),
        resumed=[o.recovered_after() or float("inf") for o in outcomes] if publishes else [],
        promoted=[o.promoted_after() or float("inf") for o in outcomes],
        elections=[o.elections() for o in outcomes],
        lost=[len(o.lost) for o in outcomes],
        lost_span=[o.lost_span() for o in outcomes],
        executed_twice=[len(o.executed_twice) for o in outcomes],
        failed_but_ran=[len(o.failed_but_ran) for o in outcomes],
        failure_window=[o.failure_window() for o in outcomes],
        outage=[o.publish_outage() for o in outcomes] if publishes else [],
        pending_redelivery=pending,
        refused_after=[r.refused_after for r in done if r.refused_after is not None],
        accepted_while_cut=[r.accepted_while_cut for r in done],
        rejoined_after=[r.rejoined_after for r in done if r.rejoined_after is not None],
        load_before=load_before,
        load_after=os.getloadavg(),
        seconds=time.monotonic() - started,
        timelines=[election_lines(o) for o in outcomes],
    )


def in_window(publishes: list[Publish], start: float, end: float) -> list[Publish]:
    """Return the publishes started within [start, end)."""
    return [p for p in publishes if start <= p.started < end]


ELECTION_EVENTS = (
    "+sdown master",
    "+odown",
    "+new-epoch",
    "+try-failover",
    "+vote-for-leader",
    "+elected-leader",
    "-failover-abort",
    "failover-abort",
    "Next failover delay",
    "+promoted-slave",
    "+switch-master",
)


def election_lines(outcome: Outcome) -> list[tuple[float, str]]:
    """Return the Sentinel events that explain one failover's timing (s from the fault)."""
    return [
        (round(at, 2), text[:150])
        for at, text in outcome.sentinel_timeline()
        if at >= 0 and any(marker in text for marker in ELECTION_EVENTS)
    ]


def spread(values: list[float]) -> str:
    """`median / worst (sorted values)` of a list of seconds."""
    if not values:
        return "-"
    finite = sorted(values)
    median = statistics.median(finite)
    return f"{median:.1f} / {max(finite):.1f}  [{', '.join(f'{v:.1f}' for v in finite)}]"


def report(figures: Figures) -> str:
    """Return the scenario's figures as text."""
    lines = [
        f"== {figures.scenario}: {figures.runs} runs, timings "
        f"{figures.timings or 'shipped defaults'}, {figures.seconds:.0f} s, "
        f"load {figures.load_before[0]:.2f} -> {figures.load_after[0]:.2f} "
        f"(1-min average, {os.cpu_count()} CPUs)",
        f"  resumed (s, median / worst [all]):  {spread(figures.resumed)}"
        if figures.resumed
        else "  (broker alone: no producer, no workers)",
        f"  promoted (s):                        {spread(figures.promoted)}",
        f"  elections per failover:              {sorted(figures.elections)}",
        f"  lost acknowledged tasks per run:     {figures.lost} (total {sum(figures.lost)})",
        f"  lost ones acknowledged at (s from the fault): "
        f"{[f'{a:.2f}..{b:.2f}' for a, b in filter(None, figures.lost_span)]}",
        f"  executed twice per run:              {figures.executed_twice}",
        f"  failed publishes that ran anyway:    {figures.failed_but_ran}",
        f"  failed-publish window (s):           {spread(figures.failure_window)}",
        f"  longest gap between acks (s):        {spread(figures.outage)}",
        f"  left for redelivery at the end:      {figures.pending_redelivery}",
        f"  lost node back as replica after (s): {spread(figures.rejoined_after)}",
    ]
    if figures.refused_after:
        lines += [
            f"  cut-off master refused writes (s):   {spread(figures.refused_after)}",
            f"  writes it accepted meanwhile:        {figures.accepted_while_cut}",
        ]
    typical = statistics.median(figures.promoted)
    for promoted, timeline in zip(figures.promoted, figures.timelines, strict=True):
        if promoted > typical + 3:
            lines.append(f"  slow run (promoted after {promoted:.1f} s), Sentinel events:")
            lines += [f"    {at:7.2f} {text}" for at, text in timeline]
    return "\n".join(lines)


def main() -> None:
    """Run the chosen scenarios and print their figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="faults per scenario (default 10)")
    parser.add_argument(
        "--scenario",
        action="append",
        choices=SCENARIOS,
        help="repeat to pick several; default: all",
    )
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    parser.add_argument("--down-after-ms", type=int, help="instead of the shipped default")
    parser.add_argument("--failover-timeout-ms", type=int, help="instead of the shipped default")
    args = parser.parse_args()
    timings = {
        key: value
        for key, value in {
            "down_after_ms": args.down_after_ms,
            "failover_timeout_ms": args.failover_timeout_ms,
        }.items()
        if value is not None
    }
    if os.geteuid() != 0:
        msg = "bench/failover.py needs root (network, mount and PID namespaces)"
        raise SystemExit(msg)
    results = []
    with scratch_dir() as work:
        for scenario in args.scenario or SCENARIOS:
            figures = measure(scenario, args.runs, work, timings)
            print(report(figures), flush=True)
            results.append(asdict(figures))
            if args.json:
                args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
