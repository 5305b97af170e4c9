"""A real local Kubernetes cluster without Docker, for the integration tests and ``make demo``.

It runs etcd, kube-apiserver, kube-controller-manager and kube-scheduler as local processes on
loopback with generated certificates and RBAC; kwok with fake GPU nodes (``nvidia.com/gpu``) for
scheduling and scale tests; a real node (:mod:`localcluster.realnode`: containerd, a kubelet and
CoreDNS) that runs its pods in containers from the images of ``make node-images``; the process
node agent (:mod:`localcluster.nodeagent`) that runs the pods bound to its node as host
processes; and Prometheus discovering pods through the API server. All binaries are built from
Go modules by ``make tools`` into ``.tools/bin``.

Python API (``PYTHONPATH=hack``)::

    from localcluster import Cluster
    cluster = Cluster(state_dir, gpu_nodes=4, gpus_per_node=8, process_node=True, prometheus=True,
                      real_node=True, images=["ghcr.io/acceltrain/trainer-cpu:0.1.0"])
    cluster.start()                     # returns when every component is ready
    cluster.kubeconfig, cluster.api_url, cluster.prometheus_url
    cluster.kubectl("get", "nodes")     # the pinned kubectl, against this cluster
    cluster.component_logs()            # {"kube-apiserver": Path(...), ...}
    cluster.stop()                      # SIGTERM, SIGKILL, and a check that nothing is left

Command line: ``PYTHONPATH=hack python -m localcluster up|down|status`` (``make cluster-up``).
This is test infrastructure, not part of the product.
"""

from .cluster import Cluster, ClusterError, KubectlError, free_port, operator_argv
from .tools import MissingToolError, pinned_versions

__all__ = [
    "Cluster",
    "ClusterError",
    "KubectlError",
    "MissingToolError",
    "free_port",
    "operator_argv",
    "pinned_versions",
]
