"""The pure parts of the local cluster's real node: its configuration files and its kept roots."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "hack"))

from localcluster import realnode
from localcluster.pki import CertPair


def _settings(tmp_path: Path) -> realnode.RealNodeSettings:
    return realnode.RealNodeSettings(
        name="acceltrain-node-0",
        directory=tmp_path / "node",
        prefix="acn1a2b",
        cidr="10.77.5.0/24",
        gateway="10.77.5.1",
        api_port=6443,
        kubernetes_service_ip="10.96.0.1",
        kubelet_port=10350,
        kubelet_healthz_port=10351,
        dns_ready_port=10352,
        containerd_root=tmp_path / "roots" / "slot-0" / "root",
    )


def test_containerd_writes_only_below_the_node_its_kept_root_and_its_socket_directory(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path)
    config = realnode.containerd_config(settings, realnode.CNI_BIN_DIR)
    paths = re.findall(r'"(/[^"]+)"', config)
    allowed = (settings.directory, settings.containerd_root, settings.short_dir)
    writable = [p for p in paths if not p.startswith(str(realnode.CNI_BIN_DIR))]
    assert writable
    for path in writable:
        assert any(Path(path).is_relative_to(base) for base in allowed), path
    # The runtime would otherwise set a negative oom_score_adj, which root may not here.
    assert "restrict_oom_score_adj = true" in config


def test_pods_resolve_through_the_bridge_address_and_the_host_keeps_its_firewall(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path)
    serving = CertPair(tmp_path / "kubelet.crt", tmp_path / "kubelet.key")
    config = realnode.kubelet_config(settings, ca_file=tmp_path / "ca.crt", serving=serving)
    assert config["clusterDNS"] == ["10.77.5.1"]
    assert config["makeIPTablesUtilChains"] is False
    assert config["cgroupRoot"] == "/acn1a2b"
    assert config["authentication"]["anonymous"]["enabled"] is False
    assert config["containerRuntimeEndpoint"] == f"unix://{settings.containerd_socket}"
    # A Unix socket path has at most 107 bytes, however long the state directory is.
    assert len(str(settings.containerd_socket)) < 100


def test_the_cni_network_is_the_nodes_bridge_with_pods_routed_through_its_gateway(
    tmp_path: Path,
) -> None:
    bridge = realnode.cni_config(_settings(tmp_path))["plugins"][0]
    assert (bridge["bridge"], bridge["isDefaultGateway"], bridge["ipMasq"]) == (
        "acn1a2bbr",
        True,
        False,
    )
    assert bridge["ipam"]["ranges"] == [[{"subnet": "10.77.5.0/24", "gateway": "10.77.5.1"}]]


def test_two_clusters_get_different_roots_and_a_released_root_is_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACCELTRAIN_NODE_CACHE", str(tmp_path / "roots"))
    first = realnode.claim_root(tmp_path / "a")
    second = realnode.claim_root(tmp_path / "b")
    assert first != second
    assert realnode.claim_root(tmp_path / "a") == first
    realnode.release_root(first, tmp_path / "a")
    assert realnode.claim_root(tmp_path / "c") == first


def test_a_claim_whose_cluster_never_started_containerd_expires(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACCELTRAIN_NODE_CACHE", str(tmp_path / "roots"))
    first = realnode.claim_root(tmp_path / "crashed")
    monkeypatch.setattr(realnode, "CLAIM_GRACE_SECONDS", 0.0)
    assert realnode.claim_root(tmp_path / "next") == first


def test_cluster_ports_are_free_and_outside_the_range_outgoing_connections_use() -> None:
    from localcluster.cluster import EPHEMERAL_RANGE, free_port

    low, high = map(int, EPHEMERAL_RANGE.read_text().split())
    ports = {free_port() for _ in range(20)}
    assert all(not low <= port <= high for port in ports), ports
    assert len(ports) > 1, "parallel clusters must not all get the same port"
