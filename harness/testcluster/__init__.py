"""The offline multi-node test cluster that `kpbench cluster up` builds on this machine: control
plane processes on the host, per node a network namespace with its own containerd and kubelet.
Distinct from harness/cluster (the cluster target's in-cluster code) and harness/targets/local*
(the process-based local target)."""
