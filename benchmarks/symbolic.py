"""Fine-tune-CoT's symbolic tasks (Ho et al. 2023), generated from a seed, and a controlled teacher's rationales.

Tasks:
- `last_letter`: concatenate the last letters of 4 names ('Take the last letters of the words in "Walter
  Mary Ann Bob" and concatenate them.' -> "ryny"). Names come from a fixed pool of common first names, as
  in the paper; held-out questions are new combinations of them.
- `coin_flip`: a coin starts heads up, 4 people flip it or not; is it still heads up? (yes/no).
- `shuffled_objects`: 3 people, 3 swaps of balls, then "At the end, X has the" with lettered options; the
  gold is a bare letter (BIG-bench's tracking_shuffled_objects, three objects).

The controlled teacher writes a step-by-step rationale for each (question, sample) and is right a set share
of the time. A wrong rationale makes one wrong step and carries it into the answer (a misread last letter,
a flip taken for no flip, a swap of the wrong pair), so its answer is consistent with its steps.
Every draw is seeded by the question and the sample index: the same question and sample always get the
same answer, whatever else the run asks.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any

TASKS = ("last_letter", "coin_flip", "shuffled_objects")

NAMES = tuple(
    ["Aaron", "Abby", "Adam", "Alan", "Albert", "Alex", "Alice", "Amanda", "Amber", "Amy", "Andre", "Andrea", "Angela", "Anna", "Anthony", "Arthur", "Ashley", "Barbara", "Ben", "Beth", "Betty", "Bill", "Bobby", "Brandon", "Brenda", "Brian", "Bruce", "Carl", "Carlos", "Carmen", "Carol", "Cathy", "Chris", "Cindy", "Claire", "Craig", "Dan", "Dana", "David", "Dennis", "Diana", "Diego", "Donna", "Doris", "Dylan", "Edgar", "Edith", "Elena", "Elijah", "Ellen", "Emily", "Eric", "Erin", "Ethan", "Eva", "Frank", "Fred", "Gary", "Gina", "Grace", "Greg", "Hannah", "Harold", "Helen", "Henry", "Holly", "Hugo", "Ian", "Irene", "Isaac", "Ivan", "Jack", "Jacob", "Jamal", "Jane", "Jason", "Jean", "Jeff", "Jenny", "Jesse", "Joan", "Joel", "John", "Jose", "Joyce", "Juan", "Judy", "Julia", "Karen", "Kate", "Keith", "Kelly", "Kevin", "Kim", "Kyle", "Larry", "Laura", "Leo", "Lily", "Linda", "Lisa", "Logan", "Louis", "Lucas", "Luis", "Lynn", "Maria", "Mark", "Martha", "Mary", "Max", "Megan", "Mike", "Molly", "Nancy", "Nina", "Noah", "Olga", "Oscar", "Pablo", "Pam", "Paul", "Peggy", "Peter", "Phil", "Rachel", "Ralph", "Raul", "Ray", "Rita", "Robin", "Rosa", "Ruby", "Ruth", "Ryan", "Sam", "Sara", "Scott", "Sean", "Seth", "Sofia", "Steve", "Sue", "Tara", "Ted", "Tina", "Todd", "Tom", "Tony", "Tyler", "Uma", "Victor", "Vivian", "Wade", "Walter", "Wendy", "Willie", "Yusuf", "Zoe"])
PLAYERS = ("Alice", "Bob", "Claire", "Dave", "Eve", "Fred", "Gertrude", "Helen")
COLOURS = ("red", "blue", "green", "yellow", "orange", "purple", "pink", "white", "black", "brown")


@dataclass
class Item:
    question: str
    gold: str
    facts: dict[str, Any] = field(default_factory=dict)


def _rng(*parts: object) -> random.Random:
    return random.Random(int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:12], 16))


def last_letter(rng: random.Random, words: int = 4) -> Item:
    names = rng.sample(NAMES, words)
    question = f'Take the last letters of the words in "{" ".join(names)}" and concatenate them.'
    return Item(question, "".join(n[-1] for n in names).lower(), {"names": names})


def coin_flip(rng: random.Random, people: int = 4) -> Item:
    names = rng.sample(NAMES, people)
    flips = [rng.random() < 0.5 for _ in names]
    steps = " ".join(f"{n} {'flips' if f else 'does not flip'} the coin." for n, f in zip(names, flips, strict=True))
    question = f"A coin is heads up. {steps} Is the coin still heads up?"
    return Item(question, "no" if sum(flips) % 2 else "yes", {"names": names, "flips": flips})


def shuffled_objects(rng: random.Random, people: int = 3, swaps: int = 3) -> Item:
    names = list(PLAYERS[:people]) if rng.random() < 0.5 else rng.sample(PLAYERS, people)
    colours = rng.sample(COLOURS, people)
    pairs = [tuple(rng.sample(range(people), 2)) for _ in range(swaps)]
    asked = rng.randrange(people)
    holding = ", ".join(f"{n} has a {c} ball" for n, c in zip(names, colours, strict=True))
    order = ["First", "Then", "Finally"] if swaps == 3 else ["Then"] * swaps
    moves = " ".join(f"{order[i]}, {names[a]} and {names[b]} swap balls." for i, (a, b) in enumerate(pairs))
    options = "\n".join(f"({'ABCDE'[i]}) {c} ball" for i, c in enumerate(colours))
    question = (f"{', '.join(names[:-1])}, and {names[-1]} are playing a game. At the start of the game, they are "
                f"each holding a ball: {holding}. As the game progresses, pairs of players trade balls. {moves} "
                f"At the end of the game, {names[asked]} has the\nOptions:\n{options}")
    final = _swap_all(colours, pairs)
    return Item(question, "ABCDE"[colours.index(final[asked])],
                {"names": names, "colours": colours, "pairs": pairs, "asked": asked})


def _swap_all(state: list[str], pairs: list[tuple[int, int]]) -> list[str]:
    state = list(state)
    for a, b in pairs:
        state[a], state[b] = state[b], state[a]
    return state


GENERATORS = {"last_letter": last_letter, "coin_flip": coin_flip, "shuffled_objects": shuffled_objects}


def items(task: str, n: int, seed: int, avoid: set[str] | None = None) -> list[Item]:
    """`n` distinct questions of `task` from `seed`, none of them in `avoid` (the other split's questions)."""
    rng, out, seen = random.Random(f"{task}:{seed}"), [], set(avoid or ())
    while len(out) < n:
        item = GENERATORS[task](rng)
        if item.question not in seen:
            seen.add(item.question)
            out.append(item)
    return out


# -- the controlled teacher ---------------------------------------------------------------------------------


def teacher_answer(task: str, item: Item, sample: int, accuracy: float) -> str:
    """The teacher's rationale for one sample: right with probability `accuracy`, else one wrong step carried
    into the answer."""
    draw = _rng(task, item.question, sample)
    right = draw.random() < accuracy
    return {"last_letter": _last_letter_rationale, "coin_flip": _coin_rationale,
            "shuffled_objects": _shuffled_rationale}[task](item, right, draw)


def _last_letter_rationale(item: Item, right: bool, draw: random.Random) -> str:
    names = item.facts["names"]
    letters = [n[-1].lower() for n in names]
    if not right:  # a misread letter: the one before the last, or the first
        k = draw.randrange(len(names))
        wrong = [c.lower() for c in (names[k][-2], names[k][0], names[k][1]) if c.lower() != letters[k]]
        letters[k] = wrong[0] if wrong else chr((ord(letters[k]) - 96) % 26 + 97)
    # A real teacher sampled at temperature 0.7 words its samples differently: the duplicate check would
    # otherwise drop every repeat, and diverse reasoning (k=4) would add nothing.
    form = draw.choice(['"{n}" is spelled {s}, so its last letter is "{c}".', 'The word "{n}" is {s}; it ends in "{c}".',
                        '"{n}": {s}. The last letter is "{c}".'])
    lines = [form.format(n=n, s="-".join(n), c=c) for n, c in zip(names, letters, strict=True)]
    answer = "".join(letters)
    lines.append(draw.choice(["Putting the letters together: {j} = \"{a}\".", "Concatenating them: {j} = \"{a}\"."])
                 .format(j=" + ".join(letters), a=answer))
    return "\n".join(lines) + f"\nThe answer is {answer}."


def _coin_rationale(item: Item, right: bool, draw: random.Random) -> str:
    flips = list(item.facts["flips"])
    if not right:  # one step misread: a flip taken for no flip, or the other way round
        k = draw.randrange(len(flips))
        flips[k] = not flips[k]
    side, lines = "heads", [draw.choice(["The coin starts heads up.", "At first the coin is heads up."])]
    flipped, kept = draw.choice([("{n} flips the coin, so it is now {s} up.", "{n} does not flip the coin, so it is still {s} up."),
                                 ("After {n} flips it, the coin is {s} up.", "{n} leaves it alone: still {s} up.")])
    for name, flip in zip(item.facts["names"], flips, strict=True):
        if flip:
            side = "tails" if side == "heads" else "heads"
        lines.append((flipped if flip else kept).format(n=name, s=side))
    answer = "yes" if side == "heads" else "no"
    lines.append(f"The coin ends {side} up, so it is {'still' if answer == 'yes' else 'not'} heads up.")
    return "\n".join(lines) + f"\nThe answer is {answer}."


def _shuffled_rationale(item: Item, right: bool, draw: random.Random) -> str:
    names, colours, asked = item.facts["names"], item.facts["colours"], item.facts["asked"]
    pairs = list(item.facts["pairs"])
    if not right:  # one swap made between the wrong pair, carried to the end; retried until the answer changes
        for _ in range(20):
            k = draw.randrange(len(pairs))
            candidate = list(pairs)
            candidate[k] = tuple(draw.sample(range(len(names)), 2))
            if _swap_all(colours, candidate)[asked] != _swap_all(colours, pairs)[asked]:
                pairs = candidate
                break
    state = list(colours)

    def line() -> str:
        return ", ".join(f"{n} has {c}" for n, c in zip(names, state, strict=True))

    # One line per swap, echoing the question's order word; it names what each of the pair gets (one look-up
    # in the line before) and then the whole state, so no step needs more than a copy.
    order = ["First", "Then", "Finally"] if len(pairs) == 3 else ["Then"] * len(pairs)
    start, now = draw.choice([("At the start: {s}.", "Now {s}."), ("Start: {s}.", "So {s}.")])
    lines = [start.format(s=line())]
    for step, (a, b) in zip(order, pairs, strict=True):
        lines.append(f"{step}, {names[a]} and {names[b]} swap: {names[a]} gets {state[b]} and {names[b]} gets {state[a]}.")
        state[a], state[b] = state[b], state[a]
        lines[-1] += " " + now.format(s=line())
    letter = "ABCDE"[colours.index(state[asked])]
    lines.append(f"At the end, {names[asked]} has the {state[asked]} ball, which is option ({letter}).")
    return "\n".join(lines) + f"\nThe answer is {letter}."
