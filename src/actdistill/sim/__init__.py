"""Simulated benchmarks behind one small interface (STYLE.md item 7).

Simulator packages are imported lazily, so `import actdistill` works without them.
"""

from actdistill.sim.instructions import INSTRUCTIONS, PARAPHRASES, instruction_for

__all__ = ["INSTRUCTIONS", "PARAPHRASES", "instruction_for"]
