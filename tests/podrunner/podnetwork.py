"""The per-pod network mode: each pod its own network namespace and address on a private bridge.

Layout (everything inside namespaces the harness creates; the host's namespace gets nothing):

    hub namespace (the cluster's NetworkNamespace)      pod namespaces
      bridge `podbr0`, gateway 10.244.0.1/24   <-veth->   eth0 10.244.0.N/24, lo, default via .1
      port `pod<seq>` per pod                   <-veth->   ...

Why the bridge lives in a namespace of its own and not in the host's root namespace: a bridge,
veth ends or routes there would be visible to (and could collide with) the host's network and
every other harness running in parallel. In a private hub each harness is its own routing
domain: two harnesses may use the same subnet, and nothing is left on the host if the test
process dies (deleting the hub namespace destroys the bridge and every veth pair with it). The
test process reaches pods from inside the hub instead of through a veth into the host: a thread
joins the hub's namespace for each forwarded connection (`LocalCluster.host_port`/`pod_port`),
and `run_in_netns` runs a client process there.

A partition sets the pod's bridge port to the `disabled` state: the bridge drops every frame
from and to that port, while the pod's eth0 keeps its carrier, as when a switch or the network
between nodes fails (a link going down would tell the pod's kernel, which a real partition does
not). Open TCP connections hang and retransmit rather than being reset; healing sets the port
back to `forwarding` and they carry on.
"""

from __future__ import annotations

import ipaddress
import itertools
import subprocess
import threading
from dataclasses import dataclass

from .errors import PodRunnerError
from .runtime import NetworkNamespace, run_quietly

DEFAULT_SUBNET = "10.244.0.0/24"
BRIDGE = "podbr0"
POD_INTERFACE = "eth0"
# The kernel's bridge port states (`bridge link set ... state N`).
PORT_DISABLED = 0
PORT_FORWARDING = 3


def ip(netns: NetworkNamespace, *args: str) -> None:
    """Run one `ip` command inside a namespace; PodRunnerError with its stderr when it fails."""
    run_quietly(["ip", "-n", netns.name, *args])


@dataclass
class PodInterface:
    """One pod's network: its namespace, its address, and its port on the hub's bridge."""

    netns: NetworkNamespace
    address: str
    bridge_port: str
    partitioned: bool = False


class BridgeNetwork:
    """A bridge in the hub namespace; each attached pod gets a namespace, a veth and an address.

    Addresses are handed out in turn through the subnet (skipping those in use), so a pod that is
    recreated gets a new address, as it would from a CNI plugin, and stale /etc/hosts entries are
    caught by tests instead of silently still pointing at the right place.
    """

    def __init__(self, hub: NetworkNamespace, subnet: str = DEFAULT_SUBNET) -> None:
        try:
            network = ipaddress.IPv4Network(subnet)
        except ValueError as exc:
            msg = f"pod network subnet {subnet!r}: {exc} (expected an IPv4 CIDR like 10.244.0.0/24)"
            raise PodRunnerError(msg) from exc
        hosts = [str(address) for address in network.hosts()]
        if len(hosts) < 3:
            msg = (
                f"pod network subnet {subnet!r} is too small: it needs a gateway and pod addresses"
            )
            raise PodRunnerError(msg)
        self.hub = hub
        self.prefix = network.prefixlen
        self.gateway = hosts[0]
        self.pool = hosts[1:]
        self.pool_set = set(self.pool)
        self.cursors: dict[str | None, int] = {}
        self.sequence = itertools.count()
        self.interfaces: list[PodInterface] = []
        self.lock = threading.Lock()
        # No spanning tree and no forwarding delay: a port forwards as soon as it is up.
        ip(hub, "link", "add", BRIDGE, "type", "bridge", "stp_state", "0", "forward_delay", "0")
        ip(hub, "addr", "add", f"{self.gateway}/{self.prefix}", "dev", BRIDGE)
        ip(hub, "link", "set", BRIDGE, "up")

    def allocate(self, within: str | None = None) -> tuple[int, str]:
        """Return a fresh sequence number and the next free address after the last one given.

        within (a CIDR inside the subnet) limits the choice to that range: a node's pod CIDR
        when several nodes share the bridge (tests/realengine/pod_network.py).
        """
        pool = self.pool if within is None else self.range_of(within)
        with self.lock:
            in_use = {interface.address for interface in self.interfaces}
            cursor = self.cursors.get(within, 0)
            for step in range(len(pool)):
                address = pool[(cursor + step) % len(pool)]
                if address not in in_use:
                    self.cursors[within] = (cursor + step + 1) % len(pool)
                    return next(self.sequence), address
        where = f"{within} of the pod network" if within else "the pod network"
        msg = f"{where}: all {len(pool)} addresses are in use (choose a larger subnet)"
        raise PodRunnerError(msg)

    def range_of(self, within: str) -> list[str]:
        """Pod addresses of a CIDR inside the subnet (never the gateway); an error otherwise."""
        try:
            network = ipaddress.IPv4Network(within)
        except ValueError as exc:
            msg = f"pod address range {within!r}: {exc}"
            raise PodRunnerError(msg) from exc
        pool = [str(address) for address in network.hosts() if str(address) in self.pool_set]
        if not pool:
            msg = f"pod address range {within!r} holds no address of the bridge's subnet"
            raise PodRunnerError(msg)
        return pool

    def attach(self, within: str | None = None) -> PodInterface:
        """Create a pod's namespace, wire it to the bridge and give it an address.

        within: see allocate (a node's range of the shared subnet).
        """
        sequence, address = self.allocate(within)
        interface = PodInterface(
            NetworkNamespace(f"{self.hub.name}-pod{sequence}"), address, f"pod{sequence}"
        )
        with self.lock:
            self.interfaces.append(interface)
        try:
            self.wire(interface)
        except PodRunnerError:
            self.detach(interface)
            raise
        return interface

    def wire(self, interface: PodInterface) -> None:
        """Connect the pod's eth0 to the bridge by a veth pair; give it its address and route."""
        port, pod = interface.bridge_port, interface.netns.name
        ip(
            self.hub,
            "link",
            "add",
            port,
            "type",
            "veth",
            "peer",
            "name",
            POD_INTERFACE,
            "netns",
            pod,
        )
        ip(self.hub, "link", "set", port, "master", BRIDGE, "up")
        commands = (
            f"addr add {interface.address}/{self.prefix} dev {POD_INTERFACE}\n"
            f"link set {POD_INTERFACE} up\n"
            f"route add default via {self.gateway}\n"
        )
        result = subprocess.run(
            ["ip", "-n", pod, "-batch", "-"],
            input=commands,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if result.returncode != 0:
            msg = f"configuring {POD_INTERFACE} in {pod} failed: {result.stderr.strip()}"
            raise PodRunnerError(msg)

    def set_partitioned(self, interface: PodInterface, partitioned: bool) -> None:
        """Disable (partition) or re-enable (heal) the pod's bridge port."""
        state = PORT_DISABLED if partitioned else PORT_FORWARDING
        run_quietly(
            [
                "bridge",
                "-n",
                self.hub.name,
                "link",
                "set",
                "dev",
                interface.bridge_port,
                "state",
                str(state),
            ]
        )
        interface.partitioned = partitioned

    def detach(self, interface: PodInterface) -> None:
        """Delete the pod's namespace (its veth pair goes with it) and free its address."""
        interface.netns.delete()
        with self.lock:
            if interface in self.interfaces:
                self.interfaces.remove(interface)

    def close(self) -> None:
        """Detach every pod; the bridge itself goes with the hub namespace."""
        with self.lock:
            interfaces = list(self.interfaces)
        for interface in interfaces:
            self.detach(interface)
