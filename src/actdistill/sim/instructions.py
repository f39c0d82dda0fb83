"""Language instructions for the Meta-World tasks (MT10 and the rest of MT50).

The first string is the training instruction; the paraphrases are held out
for a later language-generalisation test and never used in training.
REWORDINGS are further phrasings written for training only (the router-consistency
view, distill.router_reword); none of them is a held-out paraphrase.
"""

from __future__ import annotations

from actdistill.errors import ConfigError

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


# The other 40 tasks of Meta-World MT50 (the MT10 ones above keep their strings, so MT10 data does not change).
INSTRUCTIONS.update({
    "assembly-v3": "put the ring onto the peg",
    "basketball-v3": "dunk the ball into the basket",
    "bin-picking-v3": "move the puck from one bin to the other",
    "box-close-v3": "put the lid on the box",
    "button-press-topdown-wall-v3": "press the button from the top behind the wall",
    "button-press-v3": "press the button",
    "button-press-wall-v3": "press the button behind the wall",
    "coffee-button-v3": "press the button on the coffee machine",
    "coffee-pull-v3": "pull the mug out of the coffee machine",
    "coffee-push-v3": "push the mug under the coffee machine",
    "dial-turn-v3": "turn the dial",
    "disassemble-v3": "take the ring off the peg",
    "door-close-v3": "close the door",
    "door-lock-v3": "lock the door",
    "door-unlock-v3": "unlock the door",
    "hand-insert-v3": "insert the gripper into the hole",
    "faucet-open-v3": "turn the faucet on",
    "faucet-close-v3": "turn the faucet off",
    "hammer-v3": "hammer the nail into the wall",
    "handle-press-side-v3": "press the handle down from the side",
    "handle-press-v3": "press the handle down",
    "handle-pull-side-v3": "pull the handle up from the side",
    "handle-pull-v3": "pull the handle up",
    "lever-pull-v3": "pull the lever",
    "pick-place-wall-v3": "pick up the puck and place it at the goal behind the wall",
    "pick-out-of-hole-v3": "pick the puck out of the hole",
    "plate-slide-v3": "slide the plate into the goal",
    "plate-slide-side-v3": "slide the plate sideways into the goal",
    "plate-slide-back-v3": "slide the plate back out of the goal",
    "plate-slide-back-side-v3": "slide the plate sideways back out of the goal",
    "peg-unplug-side-v3": "unplug the peg from the side",
    "soccer-v3": "kick the ball into the goal",
    "stick-push-v3": "grab the stick and push the box with it",
    "stick-pull-v3": "grab the stick and pull the box with it",
    "push-wall-v3": "push the puck to the goal behind the wall",
    "push-back-v3": "pull the puck back to the goal",
    "reach-wall-v3": "reach the goal behind the wall",
    "shelf-place-v3": "place the puck on the shelf",
    "sweep-into-v3": "sweep the puck into the hole",
    "sweep-v3": "sweep the puck off the table",
})

PARAPHRASES.update({
    "assembly-v3": ("slide the ring down over the peg", "fit the nut onto the post"),
    "basketball-v3": ("score the ball in the hoop", "put the ball through the hoop"),
    "bin-picking-v3": ("transfer the puck to the other bin", "lift the disc out of its bin into the next one"),
    "box-close-v3": ("close the box with its cover", "cover the box with the lid"),
    "button-press-topdown-wall-v3": ("push down on the button beyond the wall", "press down the button past the wall"),
    "button-press-v3": ("push the button in", "hit the button"),
    "button-press-wall-v3": ("reach past the wall and push the button", "hit the button past the wall"),
    "coffee-button-v3": ("start the coffee machine with its button", "push the coffee machine's button"),
    "coffee-pull-v3": ("take the cup away from the coffee machine", "drag the mug back from the machine"),
    "coffee-push-v3": ("slide the cup into the coffee machine", "move the mug into the machine"),
    "dial-turn-v3": ("rotate the knob", "twist the dial around"),
    "disassemble-v3": ("lift the nut off the post", "remove the ring from the peg"),
    "door-close-v3": ("swing the door shut", "push the door closed"),
    "door-lock-v3": ("turn the lock to lock the door", "rotate the door lock shut"),
    "door-unlock-v3": ("turn the lock to unlock the door", "rotate the door lock open"),
    "hand-insert-v3": ("put the hand into the hole", "push the gripper down into the opening"),
    "faucet-open-v3": ("open the tap", "rotate the faucet handle open"),
    "faucet-close-v3": ("close the tap", "rotate the faucet handle shut"),
    "hammer-v3": ("drive the nail in with the hammer", "use the hammer on the nail"),
    "handle-press-side-v3": ("push the side handle down", "press the handle sideways down"),
    "handle-press-v3": ("push the handle down", "press down on the handle"),
    "handle-pull-side-v3": ("lift the side handle up", "raise the handle from the side"),
    "handle-pull-v3": ("lift the handle up", "raise the handle"),
    "lever-pull-v3": ("swing the lever over", "move the lever to its end"),
    "pick-place-wall-v3": ("lift the puck over the wall onto the target", "carry the disc past the wall to the goal"),
    "pick-out-of-hole-v3": ("lift the puck from the hole", "take the disc out of the hole"),
    "plate-slide-v3": ("push the plate into the goal", "slide the plate in"),
    "plate-slide-side-v3": ("push the plate in from the side", "slide the plate in sideways"),
    "plate-slide-back-v3": ("pull the plate out of the goal", "slide the plate back out"),
    "plate-slide-back-side-v3": ("pull the plate out sideways", "slide the plate back out from the side"),
    "peg-unplug-side-v3": ("pull the peg out sideways", "remove the peg from its socket"),
    "soccer-v3": ("score a goal with the ball", "push the ball into the net"),
    "stick-push-v3": ("use the stick to push the box", "pick up the stick and shove the box with it"),
    "stick-pull-v3": ("use the stick to pull the box", "pick up the stick and drag the box with it"),
    "push-wall-v3": ("slide the puck past the wall to the goal", "shove the disc around the wall to the target"),
    "push-back-v3": ("drag the puck back to the target", "bring the disc back to the goal"),
    "reach-wall-v3": ("move the gripper past the wall to the target", "go to the goal beyond the wall"),
    "shelf-place-v3": ("put the puck onto the shelf", "lift the disc onto the shelf"),
    "sweep-into-v3": ("push the puck into the hole", "brush the disc into the hole"),
    "sweep-v3": ("push the puck off the table", "brush the disc off the edge"),
})

# Training-only rewordings of the MT10 instructions (distill.router_reword): different strings from the instruction
# and from both held-out paraphrases, so that a test under the paraphrases stays a test on unseen wording.
REWORDINGS: dict[str, tuple[str, ...]] = {
    "reach-v3": ("move the hand to the red goal", "bring the gripper to the red marker", "touch the red goal point"),
    "push-v3": ("nudge the puck until it reaches the goal", "move the puck to the goal by pushing it",
                "push the hockey puck onto the goal spot"),
    "pick-place-v3": ("grab the puck and drop it at the goal", "pick the puck up and carry it to the goal",
                      "take the puck and set it on the goal spot"),
    "door-open-v3": ("get the door open", "open the cabinet door", "rotate the door until it is open"),
    "drawer-open-v3": ("open the drawer all the way", "draw the drawer toward you", "get the drawer open"),
    "drawer-close-v3": ("close the drawer all the way", "get the drawer closed", "shut the open drawer"),
    "button-press-topdown-v3": ("press the button from above", "hit the button on top", "push the top button"),
    "peg-insert-side-v3": ("push the peg into the side hole", "fit the peg into the hole from the side",
                           "place the peg into the hole on the side"),
    "window-open-v3": ("slide the window to open it", "move the window open", "get the window open"),
    "window-close-v3": ("get the window closed", "slide the window shut", "move the window closed"),
}


def rewordings_for(tasks: tuple[str, ...] | list[str]) -> list[tuple[str, ...]]:
    """The training rewordings of each task, in order; one sentence naming the tasks that have none."""
    missing = [t for t in tasks if t not in REWORDINGS]
    if missing:
        raise ConfigError(f"distill.router_reword needs training rewordings of every task, and "
                         f"{', '.join(missing)} {'has' if len(missing) == 1 else 'have'} none "
                         "(sim/instructions.py REWORDINGS); set distill.router_reword=0.")
    return [REWORDINGS[t] for t in tasks]
