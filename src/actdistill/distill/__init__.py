"""Self-derived routed student and dual-stream distillation (paper Sec. 3.3-3.4; docs/design.md)."""
