"""kpbench: a benchmark harness for the Kubernetes Service dataplane."""

__version__ = "0.1.0"
