"""Simulated benchmarks behind one small interface (STYLE.md item 7).

Simulator packages are imported lazily, so `import actdistill` works without them.
"""

from actdistill.sim import metaworld_env  # noqa: F401 - registers the Meta-World suites (metaworld itself loads lazily)
from actdistill.sim.base import SUITES, Suite, get_suite, placement_seeds
from actdistill.sim.instructions import INSTRUCTIONS, PARAPHRASES, instruction_for

__all__ = ["INSTRUCTIONS", "PARAPHRASES", "SUITES", "Suite", "get_suite", "instruction_for", "placement_seeds"]
