"""Simulated benchmarks behind one small interface (STYLE.md item 7).

Simulator packages are imported lazily, so `import actdistill` works without them.
"""

from actdistill.sim import metaworld_env  # noqa: F401 - registers the Meta-World suites (metaworld itself loads lazily)
from actdistill.sim.base import (DEFAULT_SUITE, SUITES, Suite, get_suite, instruction_for, placement_kind, placement_seeds,
                                 register_suite, suite_for)

__all__ = ["DEFAULT_SUITE", "SUITES", "Suite", "get_suite", "instruction_for", "placement_kind", "placement_seeds",
           "register_suite", "suite_for"]
