"""Multi-step arithmetic word problems with worked solutions (GSM8K-like in shape, tiny in size).

A problem is a short story: someone starts with a number of items, then two or three events
change it (buying, finding, giving away, buying or selling bags of several items). Every event
depends on the running total, so later numbers depend on earlier ones. The solution writes one
equation per line and ends with GSM8K's final-answer line:

    Question: Mia has 23 shells. She buys 4 bags with 6 shells in each bag. She gives 15 shells
    to Leo. How many shells does Mia have now?
    Answer:
    4*6=24
    23+24=47
    47-15=32
    #### 32

Operands have one or two digits (the running total may reach three), every result is in
[1, 999]. `make_problem(seed)` is a pure function of the seed (Python's `random.Random`, stable
across platforms and versions); training uses even seeds and evaluation odd ones, so the two
never share a seed (`train_seed`, `eval_seed`).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

NAMES = [("Tom", "He"), ("Ann", "She"), ("Sam", "He"), ("Mia", "She"), ("Ben", "He"), ("Lea", "She"),
         ("Max", "He"), ("Eva", "She"), ("Leo", "He"), ("Zoe", "She"), ("Raj", "He"), ("Ivy", "She")]
ITEMS = ["apple", "pencil", "marble", "sticker", "coin", "book", "card", "shell", "cookie", "stamp"]
CONTAINERS = ["bags", "boxes", "packs", "jars"]
MAX_VALUE = 999
PROMPT_PREFIX = "Question: "
ANSWER_MARK = "\nAnswer:\n"
FINAL_MARK = "#### "


@dataclass(frozen=True)
class Problem:
    seed: int
    question: str  # the story and the question
    solution: str  # equations, one per line, then "#### answer"
    answer: int

    @property
    def prompt(self) -> str:
        """What the model is given: ends with the answer marker and a newline."""
        return PROMPT_PREFIX + self.question + ANSWER_MARK

    @property
    def text(self) -> str:
        return self.prompt + self.solution


def format_prompt(question: str) -> str:
    """A user's question as the model's prompt: "Question: " prepended unless it starts the text,
    the answer marker appended unless the text has one (then it ends with a newline), e.g.
    "Tom has 5 coins. ..." -> "Question: Tom has 5 coins. ...\nAnswer:\n"."""
    prompt = question if question.startswith(PROMPT_PREFIX) else PROMPT_PREFIX + question
    if ANSWER_MARK.strip() not in prompt:
        return prompt.rstrip() + ANSWER_MARK
    return prompt if prompt.endswith("\n") else prompt + "\n"


def train_seed(index: int) -> int:
    """Seed of the index-th training problem (even)."""
    return 2 * index


def eval_seed(seed: int, index: int) -> int:
    """Seed of the index-th held-out problem of evaluation set `seed` (odd: disjoint from training)."""
    return 2 * (seed * 1_000_003 + index) + 1


def train_problems(start: int, count: int) -> list["Problem"]:
    return [make_problem(train_seed(i)) for i in range(start, start + count)]


def eval_problems(seed: int, count: int) -> list["Problem"]:
    return [make_problem(eval_seed(seed, i)) for i in range(count)]


def make_problem(seed: int, *, min_events: int = 2, max_events: int = 3) -> Problem:
    rng = random.Random(seed)
    name, pron = rng.choice(NAMES)
    friend = rng.choice([n for n, _ in NAMES if n != name])
    item = rng.choice(ITEMS)
    items = item + "s"
    v = rng.randint(5, 60)
    sentences = [f"{name} has {v} {items}."]
    lines: list[str] = []
    events = rng.randint(min_events, max_events)
    for _ in range(events):
        while True:  # draw events until one keeps the total in [1, MAX_VALUE]
            kind = rng.choice(["buy", "find", "give", "lose", "bags_in", "bags_out"])
            if kind in ("buy", "find"):
                b = rng.randint(2, 49)
                if v + b > MAX_VALUE:
                    continue
                s = f"{pron} buys {b} more {items}." if kind == "buy" else f"{pron} finds {b} {items}."
                sentences.append(s)
                lines.append(f"{v}+{b}={v + b}")
                v += b
            elif kind in ("give", "lose"):
                if v < 3:
                    continue
                b = rng.randint(2, min(49, v - 1))
                s = f"{pron} gives {b} {items} to {friend}." if kind == "give" else f"{pron} loses {b} {items}."
                sentences.append(s)
                lines.append(f"{v}-{b}={v - b}")
                v -= b
            else:
                b, c = rng.randint(2, 9), rng.randint(2, 9)
                p = b * c
                box = rng.choice(CONTAINERS)
                if kind == "bags_in":
                    if v + p > MAX_VALUE:
                        continue
                    sentences.append(f"{pron} buys {b} {box} with {c} {items} in each.")
                    lines += [f"{b}*{c}={p}", f"{v}+{p}={v + p}"]
                    v += p
                else:
                    if p >= v:
                        continue
                    sentences.append(f"{pron} sells {b} {box} with {c} {items} in each.")
                    lines += [f"{b}*{c}={p}", f"{v}-{p}={v - p}"]
                    v -= p
            break
    question = " ".join(sentences) + f" How many {items} does {name} have now?"
    solution = "\n".join(lines + [f"{FINAL_MARK}{v}"])
    return Problem(seed=seed, question=question, solution=solution, answer=v)


_EQ = re.compile(r"^(\d+)([+\-*])(\d+)=(\d+)$")
_FINAL = re.compile(r"####\s*(-?\d+)")


def extract_answer(text: str) -> int | None:
    """The number on the first final-answer line of a generated solution, or None."""
    m = _FINAL.search(text)
    return int(m.group(1)) if m else None


def check_solution(solution: str) -> int:
    """Recompute every equation of a solution; returns the final answer. Raises ValueError on an
    arithmetic error, a malformed line, or a final answer other than the last result."""
    lines = solution.split("\n")
    last = None
    for line in lines[:-1]:
        m = _EQ.match(line)
        if not m:
            raise ValueError(f"malformed equation {line!r}")
        a, op, b, r = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
        want = a + b if op == "+" else a - b if op == "-" else a * b
        if want != r:
            raise ValueError(f"{line!r}: {a}{op}{b} is {want}")
        last = r
    final = extract_answer(lines[-1])
    if final is None or not lines[-1].startswith(FINAL_MARK):
        raise ValueError(f"no final answer line in {solution!r}")
    if final != last:
        raise ValueError(f"final answer {final} is not the last result {last}")
    return final
