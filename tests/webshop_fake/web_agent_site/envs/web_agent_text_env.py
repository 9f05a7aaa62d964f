"""Fake WebShop text env (see ../../README.md): the package's API surface over a three-product shop."""

import random
import re

PRODUCTS = {
    "B001": {"title": "Red cotton t-shirt", "price": "$12.00", "options": ["small", "large"]},
    "B002": {"title": "Blue cotton t-shirt", "price": "$14.00", "options": ["small", "large"]},
    "B003": {"title": "Steel water bottle", "price": "$20.00", "options": ["500ml", "1l"]},
}
NUM_GOALS = 1503  # WebShop's splits (test 0-499, dev 500-1499, train 1500+) all non-empty
SEP = " [SEP] "


def goal(i):
  asin = sorted(PRODUCTS)[i % 3]
  option = PRODUCTS[asin]["options"][(i // 3) % 2]
  words = PRODUCTS[asin]["title"].lower()
  price = random.choice([30, 40, 50])  # like the package: the price limit comes from the unseeded global random
  return {"asin": asin, "option": option, "goal_options": [option], "query": words.split()[-1],
          "instruction_text": f"i need a {words} in size {option}, price lower than {price}.00 dollars (goal {i})"}


class SimServer:
  def __init__(self):
    print(f"Loaded {NUM_GOALS} goals.")  # the real package prints this to stdout too
    self.goals = [goal(i) for i in range(NUM_GOALS)]
    self.user_sessions = {}


class WebAgentTextEnv:
  def __init__(self, observation_mode="html", file_path=None, server=None, **kwargs):
    assert observation_mode == "text", observation_mode
    self.server = server or SimServer()
    self.session_prefix = kwargs.get("session_prefix")
    self.reset()

  def reset(self, session=None, instruction_text=None):
    index = session if isinstance(session, int) else 0
    self.session = (self.session_prefix or "") + str(session)
    sessions = self.server.user_sessions
    if self.session not in sessions:
      sessions[self.session] = {"goal": self.server.goals[index]}
    self.state = sessions[self.session]
    self.state.update(page="start", keywords=None, asin=None, option=None)
    # As the package reads it from the page's heading: "Instruction: <the goal's text>".
    self.instruction_text = "Instruction: " + self.state["goal"]["instruction_text"]
    return self.observation, None

  def _clickables(self):
    page = self.state["page"]
    if page == "start":
      return ["search"]  # the search button: a clickable the package refuses to click
    if page == "results":
      return ["back to search", "next >"] + [a.lower() for a in self._results()]
    if page == "item":  # the package lists buttons first, then the options
      return ["back to search", "< prev", "description", "buy now"] + PRODUCTS[self.state["asin"]]["options"]
    if page == "description":
      return ["back to search", "< prev"]
    return []

  def _results(self):
    words = set(self.state["keywords"] or [])
    return [a for a, p in sorted(PRODUCTS.items()) if words & set(p["title"].lower().split())]

  def get_available_actions(self):
    return {"has_search_bar": self.state["page"] == "start", "clickables": self._clickables()}

  @property
  def observation(self):
    head = ["WebShop", "Instruction:", self.state["goal"]["instruction_text"]]
    page = self.state["page"]
    if page == "start":
      body = ["Search"]
    elif page == "results":
      body = ["Back to Search", f"Page 1 (Total results: {len(self._results())})", "Next >"]
      for a in self._results():
        body += [a, PRODUCTS[a]["title"], PRODUCTS[a]["price"]]
    elif page == "item":
      product = PRODUCTS[self.state["asin"]]
      body = ["Back to Search", "< Prev", "size"] + product["options"]
      body += [product["title"], "Price: " + product["price"], "Rating: N.A.", "Description", "Buy Now"]
    elif page == "description":
      body = ["Back to Search", "< Prev", "A fine " + PRODUCTS[self.state["asin"]]["title"].lower() + "."]
    else:
      body = ["Thank you for shopping with us!", "Your score (min 0.0, max 1.0)", str(self.state["reward"])]
    return SEP.join(head + body)

  def step(self, action):
    match = re.match(r"(.+)\[(.+)\]", action)
    name, arg = (match.group(1), match.group(2).lower()) if match else (action, None)
    reward, done = 0.0, False
    if name == "search" and arg and self.state["page"] == "start":
      self.state.update(page="results", keywords=arg.split())
    elif name == "click" and arg in self._clickables() and arg != "search":
      if arg == "next >":
        pass  # one page of results
      elif arg == "back to search":
        self.state.update(page="start", keywords=None, asin=None, option=None)
      elif arg == "< prev":
        self.state["page"] = "results" if self.state["page"] == "item" else "item"
      elif self.state["page"] == "results":
        self.state.update(page="item", asin=arg.upper(), option=None)
      elif arg == "description":
        self.state["page"] = "description"
      elif arg == "buy now":
        goal = self.state["goal"]
        reward = (0.5 if self.state["asin"] == goal["asin"] else 0.0) + (
            0.5 if self.state["asin"] == goal["asin"] and self.state["option"] == goal["option"] else 0.0)
        self.state.update(page="done", reward=reward)
        done = True
      else:
        self.state["option"] = arg
    return self.observation, reward, done, None
