"""What the local cluster's stand-in for the config reloader does to the Prometheus Operator's
generated configuration: the reloader's ``$(VAR)`` substitution and discovery through a
kubeconfig, nothing else."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "hack"))

from localcluster.cluster import ClusterError
from localcluster.monitoring import managed_config

GENERATED = """
global:
  scrape_interval: 2s
  external_labels:
    prometheus: monitoring/acceltrain
    prometheus_replica: $(POD_NAME)
scrape_configs:
- job_name: podMonitor/acceltrain-system/acceltrain-trainers/0
  honor_labels: false
  kubernetes_sd_configs:
  - role: pod
  relabel_configs:
  - source_labels: [__tmp_hash]
    regex: $(SHARD);|.+;.+
    action: keep
"""


def test_the_pod_environment_is_filled_in_and_discovery_reads_the_kubeconfig() -> None:
    config = managed_config(GENERATED, Path("/state/pki/prometheus.kubeconfig"))
    assert config["global"]["external_labels"]["prometheus_replica"] == "prometheus-acceltrain-0"
    scrape = config["scrape_configs"][0]
    assert scrape["relabel_configs"][0]["regex"] == "0;|.+;.+"
    assert scrape["kubernetes_sd_configs"] == [
        {"role": "pod", "kubeconfig_file": "/state/pki/prometheus.kubeconfig"}
    ]
    # Everything else is the operator's, untouched.
    assert scrape["honor_labels"] is False
    assert scrape["job_name"] == "podMonitor/acceltrain-system/acceltrain-trainers/0"


def test_a_variable_the_pod_would_not_have_is_an_error_not_an_empty_string() -> None:
    with pytest.raises(ClusterError, match=r"\$\(NODE_NAME\)"):
        managed_config(GENERATED.replace("$(SHARD)", "$(NODE_NAME)"), Path("/k"))
