"""actdistill: action-guided self-derived distillation of VLA policies (arXiv 2511.18082)."""

__version__ = "0.1.0"
