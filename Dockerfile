# The harness's own image for the cluster target: probe pods (harness.measure.agent, started through
# pods/exec), the backend (harness.cluster.backend) and locust master/workers
# (harness/cluster/locustfile.py). Build and push it somewhere the test cluster's nodes can pull from:
#
#   docker build -t REGISTRY/kpbench:TAG .
#   docker push REGISTRY/kpbench:TAG
#   KPBENCH_IMAGE=REGISTRY/kpbench:TAG kpbench run --target cluster --kubeconfig F --yes
#
# Probe pods run with hostNetwork and privileged: iptables / nft / ipset / ipvsadm here read the
# node's state (iptables-legacy and iptables-nft both installed; pick with update-alternatives or
# call iptables-legacy-save / iptables-nft-save explicitly).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      iptables nftables ipset ipvsadm iproute2 conntrack procps kmod ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# the repository at /opt/kpbench (the locust file is used from there), installed as a package
WORKDIR /opt/kpbench
COPY pyproject.toml README.md ./
COPY harness ./harness
RUN pip install . && python -c "import harness.measure.agent, harness.cluster.backend"

# nothing runs by default: every manifest (harness/cluster/manifests.py) sets its own command
CMD ["python", "-c", "import harness; print('kpbench image', harness.__version__)"]
