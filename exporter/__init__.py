"""training-exporter: Prometheus metrics from training logs, GPUs and the host."""

__version__ = "0.1.0"
