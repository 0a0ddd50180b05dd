"""The test deployments' servers start on ports of their own (`bench/deployments.py`): no
two nodes are handed one port, and a node whose port was taken before it listened
starts again on new ones."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from bench.deployments import DATA_NODE, Node, PortTaken, fresh_port


def test_no_port_is_handed_out_twice() -> None:
    ports = [fresh_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)


def test_a_node_whose_ports_were_taken_starts_on_new_ones(tmp_path: Path) -> None:
    node = Node(tmp_path, "taken", ["--save", "", "--cluster-enabled", "yes"])
    node.bus_port = fresh_port()
    squatters = []
    for port in (node.port, node.bus_port):
        squatter = socket.socket()  # bound, not listening: a connection to it is refused
        squatter.bind(("127.0.0.1", port))
        squatters.append(squatter)
    taken = (node.port, node.bus_port)
    try:
        with pytest.raises(PortTaken):
            node.start()
        node.start_on_fresh_ports()
        assert node.running
        assert node.port not in taken and node.bus_port not in taken
        assert node.client().ping()
    finally:
        node.stop()
        for squatter in squatters:
            squatter.close()


def test_a_node_that_fails_for_another_reason_is_not_retried(tmp_path: Path) -> None:
    node = Node(tmp_path, "bad", [*DATA_NODE, "--no-such-option", "yes"])
    with pytest.raises(RuntimeError) as failed:
        node.start_on_fresh_ports()
    assert not isinstance(failed.value, PortTaken)
