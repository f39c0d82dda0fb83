"""Measuring what a policy costs: FLOPs per action query and latency (benchmark issue groundwork)."""
