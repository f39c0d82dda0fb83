"""Language instructions for the MT10 tasks.

The first string is the training instruction; the paraphrases are held out
for a later language-generalisation test and never used in training.
"""

from __future__ import annotations

from actdistill.config import ConfigError

INSTRUCTIONS: dict[str, str] = {
    "reach-v3": "reach the red goal",
    "push-v3": "push the puck to the goal",
    "pick-place-v3": "pick up the puck and place it at the goal",
    "door-open-v3": "open the door",
    "drawer-open-v3": "open the drawer",
    "drawer-close-v3": "close the drawer",
    "button-press-topdown-v3": "press the button from the top",
    "peg-insert-side-v3": "insert the peg into the hole from the side",
    "window-open-v3": "slide the window open",
    "window-close-v3": "slide the window closed",
}

PARAPHRASES: dict[str, tuple[str, ...]] = {
    "reach-v3": ("move the gripper to the target", "go to the goal position"),
    "push-v3": ("slide the puck over to the target", "shove the disc to the goal"),
    "pick-place-v3": ("grasp the puck and put it on the target", "lift the disc and move it to the goal"),
    "door-open-v3": ("swing the door open", "pull the door open"),
    "drawer-open-v3": ("pull the drawer out", "slide the drawer open"),
    "drawer-close-v3": ("push the drawer shut", "slide the drawer in"),
    "button-press-topdown-v3": ("push the button down", "press down on the button"),
    "peg-insert-side-v3": ("put the peg in the hole sideways", "slide the peg into the slot"),
    "window-open-v3": ("open the window", "push the window to the open position"),
    "window-close-v3": ("close the window", "shut the window"),
}


def instruction_for(task: str, paraphrase: int = -1) -> str:
    """The instruction of `task`; `paraphrase >= 0` picks a held-out paraphrase."""
    if task not in INSTRUCTIONS:
        raise ConfigError(f"Unknown task '{task}'; known tasks: {', '.join(INSTRUCTIONS)}.")
    return INSTRUCTIONS[task] if paraphrase < 0 else PARAPHRASES[task][paraphrase]
