"""Writes the tiny hand-made ALFWorld games under json_2.1.1/valid_seen (run with the alfworld package installed).

Each game is what ALFWorld's generator emits: game.tw-pddl = JSON {pddl_domain, grammar, pddl_problem, solvable}
with the package's own alfred.pddl / alfred.twl2 and the grammar's "task" rule set to the goal text, plus a
traj_data.json carrying the task type and the annotated goal.
"""

import json
import os
import sys

import alfworld

APPLE = "Apple_bar__minus_01_dot_00_bar__plus_00_dot_90_bar__plus_00_dot_30"
COUNTER = "CounterTop_bar__minus_01_dot_00_bar__plus_00_dot_90_bar__plus_00_dot_30"
FRIDGE = "Fridge_bar__plus_02_dot_00_bar__plus_00_dot_00_bar__plus_01_dot_00"
LOCS = {COUNTER: "loc_bar__minus_4_bar_1_bar_3_bar_45", FRIDGE: "loc_bar_8_bar_4_bar_1_bar_60"}
UNKNOWN_TASK = "Your task is to: UNKNOWN GOAL."
START = "loc_bar_0_bar_0_bar_0_bar_30"

# (dir name, receptacle the apple starts in, goal receptacle type, goal text)
GAMES = (
    ("pick_and_place_simple-Apple-None-Fridge-1/trial_T00000000_000001", COUNTER, "FridgeType",
     "put an apple in fridge."),
    ("pick_and_place_simple-Apple-None-CounterTop-1/trial_T00000000_000002", FRIDGE, "CounterTopType",
     "put an apple in countertop."),
)


def problem(start_receptacle: str, goal_type: str) -> str:
  facts = [f"(atLocation agent1 {START})", f"(openable {FRIDGE})", f"(objectType {APPLE} AppleType)",
           f"(pickupable {APPLE})", f"(coolable {APPLE})", f"(inReceptacle {APPLE} {start_receptacle})",
           f"(objectAtLocation {APPLE} {LOCS[start_receptacle]})", "(canContain FridgeType AppleType)",
           "(canContain CounterTopType AppleType)", f"(receptacleType {COUNTER} CounterTopType)",
           f"(receptacleType {FRIDGE} FridgeType)"]
  facts += [f"(receptacleAtLocation {r} {loc})" for r, loc in LOCS.items()]
  objects = ["agent1 - agent", "AppleType - otype", "CounterTopType - rtype", "FridgeType - rtype",
             f"{APPLE} - object", f"{COUNTER} - receptacle", f"{FRIDGE} - receptacle", f"{START} - location"]
  objects += [f"{loc} - location" for loc in LOCS.values()]
  goal = (f"(exists (?r - receptacle) (exists (?o - object) (and (objectType ?o AppleType) "
          f"(receptacleType ?r {goal_type}) (inReceptacle ?o ?r))))")
  return ("(define (problem plan_tiny)\n(:domain alfred)\n(:objects\n" + "\n".join(objects) + "\n)\n(:init\n"
          + "\n".join(facts) + "\n)\n(:goal\n" + goal + "\n)\n)\n")


def main(root: str) -> None:
  data = os.path.join(os.path.dirname(alfworld.__file__), "data")
  with open(os.path.join(data, "alfred.pddl")) as f:
    domain = f.read()
  with open(os.path.join(data, "alfred.twl2")) as f:
    grammar = f.read()
  if UNKNOWN_TASK not in grammar:
    raise ValueError(f"alfred.twl2 in {data} has no {UNKNOWN_TASK!r} rule to replace")
  for name, start, goal_type, goal_text in GAMES:
    folder = os.path.join(root, "json_2.1.1", "valid_seen", name)
    os.makedirs(folder, exist_ok=True)
    game = {"pddl_domain": domain, "grammar": grammar.replace(UNKNOWN_TASK, f"Your task is to: {goal_text}"),
            "pddl_problem": problem(start, goal_type),
            "solvable": True}
    with open(os.path.join(folder, "game.tw-pddl"), "w") as f:
      json.dump(game, f)
    traj = {"task_type": "pick_and_place_simple", "turk_annotations": {"anns": [{"task_desc": goal_text}]}}
    with open(os.path.join(folder, "traj_data.json"), "w") as f:
      json.dump(traj, f)


if __name__ == "__main__":
  main(sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__)))
