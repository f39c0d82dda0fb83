"""Language instructions for the Meta-World tasks (MT10 and the rest of MT50).

The first string is the training instruction; the paraphrases are held out
for a later language-generalisation test and never used in training.
REWORDINGS are further phrasings written for training only (teacher.instruction_reword, and the
router-consistency view, distill.router_reword); none of them is a held-out paraphrase.
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

# Training-only rewordings of the other 40 MT50 tasks (teacher.instruction_reword, distill.router_reword), under the
# same rule: never the instruction or a held-out paraphrase of any task.
REWORDINGS.update({
    "assembly-v3": ("lower the ring around the peg", "place the ring around the peg", "thread the ring onto the peg"),
    "basketball-v3": ("carry the ball to the hoop and drop it in", "lift the ball and sink it in the basket",
                      "get the ball into the basket"),
    "bin-picking-v3": ("carry the puck over to the second bin", "pick the puck up and drop it in the other bin",
                       "move the disc between the bins"),
    "box-close-v3": ("lift the lid and set it on the box", "place the cover on top of the box", "shut the box lid"),
    "button-press-topdown-wall-v3": ("reach over the wall and press the button down",
                                     "push the button from above, behind the wall", "press the walled top button"),
    "button-press-v3": ("press in the button", "push the button forward", "poke the button"),
    "button-press-wall-v3": ("push the button on the far side of the wall", "press the button that sits behind the wall",
                             "reach around the wall to press the button"),
    "coffee-button-v3": ("hit the coffee machine button", "press the coffee maker's button",
                         "push the button to brew coffee"),
    "coffee-pull-v3": ("pull the cup out from the coffee maker", "draw the mug away from the coffee maker",
                       "slide the mug out of the machine"),
    "coffee-push-v3": ("slide the mug under the coffee maker", "push the cup beneath the spout",
                       "move the cup under the coffee machine"),
    "dial-turn-v3": ("spin the dial", "turn the knob around", "rotate the dial"),
    "disassemble-v3": ("pull the ring up off the peg", "lift the ring away from the peg", "take the nut off the peg"),
    "door-close-v3": ("shut the door", "push the door shut", "close the open door"),
    "door-lock-v3": ("secure the door with its lock", "twist the lock so the door is locked", "set the door lock"),
    "door-unlock-v3": ("turn the door lock to unlocked", "twist the lock so the door is unlocked",
                       "release the door lock"),
    "hand-insert-v3": ("lower the gripper into the hole", "put the gripper down in the hole",
                       "insert the hand into the opening"),
    "faucet-open-v3": ("turn the tap on", "twist the faucet open", "open the faucet"),
    "faucet-close-v3": ("turn the tap off", "twist the faucet shut", "close the faucet"),
    "hammer-v3": ("pick up the hammer and hit the nail", "knock the nail in with the hammer", "hammer in the nail"),
    "handle-press-side-v3": ("press down the side handle", "force the side handle downward",
                             "lower the handle from the side"),
    "handle-press-v3": ("force the handle downward", "press the handle to the bottom", "lower the handle"),
    "handle-pull-side-v3": ("pull up the side handle", "bring the side handle upward", "lift the handle from the side"),
    "handle-pull-v3": ("pull up the handle", "bring the handle upward", "raise the handle all the way"),
    "lever-pull-v3": ("pull the lever over", "draw the lever toward you", "swing the lever"),
    "pick-place-wall-v3": ("lift the puck over the wall and set it on the goal", "carry the puck over the wall to the goal",
                           "pick up the puck and put it on the far side of the wall"),
    "pick-out-of-hole-v3": ("pull the puck up out of the hole", "retrieve the puck from inside the hole",
                            "grab the puck in the hole and lift it out"),
    "plate-slide-v3": ("push the plate into the net", "slide the plate to the goal", "shove the plate into the goal"),
    "plate-slide-side-v3": ("push the plate sideways into the goal", "slide the plate into the goal from the side",
                            "shove the plate in from the side"),
    "plate-slide-back-v3": ("draw the plate away from the goal", "slide the plate out of the goal", "draw the plate back"),
    "plate-slide-back-side-v3": ("draw the plate away from the goal to the side", "slide the plate out of the goal sideways",
                                 "draw the plate back from the side"),
    "peg-unplug-side-v3": ("extract the peg sideways", "unplug the peg sideways", "take the peg out of its socket"),
    "soccer-v3": ("push the ball into the goal", "kick the ball into the net", "get the ball into the goal"),
    "stick-push-v3": ("push the box with the stick", "take the stick and push the box", "shove the box using the stick"),
    "stick-pull-v3": ("pull the box with the stick", "take the stick and pull the box", "drag the box using the stick"),
    "push-wall-v3": ("push the puck around the wall to the goal", "get the puck to the goal on the other side of the wall",
                     "shove the puck to the target behind the wall"),
    "push-back-v3": ("pull the puck to the goal", "drag the puck back to the goal", "bring the puck back to the target"),
    "reach-wall-v3": ("reach past the wall to the goal", "move the hand to the goal behind the wall",
                      "go to the target behind the wall"),
    "shelf-place-v3": ("move the puck up to the shelf", "raise the puck and leave it on the shelf",
                       "place the disc on the shelf"),
    "sweep-into-v3": ("sweep the puck into the goal hole", "push the puck into the opening",
                      "brush the puck into the hole"),
    "sweep-v3": ("sweep the puck off the edge", "clear the puck off the table", "brush the puck off the table"),
})


def rewordings_for(tasks: tuple[str, ...] | list[str], option: str = "distill.router_reword") -> list[tuple[str, ...]]:
    """The training rewordings of each task, in order; one sentence naming the tasks that have none and the
    setting (`option`) that asked for them."""
    missing = [t for t in tasks if t not in REWORDINGS]
    if missing:
        raise ConfigError(f"{option} needs training rewordings of every task, and "
                         f"{', '.join(missing)} {'has' if len(missing) == 1 else 'have'} none "
                         f"(sim/instructions.py REWORDINGS); set {option}=0.")
    return [REWORDINGS[t] for t in tasks]
