"""Synthetic tasks generated from a seed, so that the quickstart and the tests need no data at all.

Each generator returns rows in the task's own field names. The rows of a split depend only on the
task version and the split, never on the run's seed: the run's seed then samples them like real data.
"""

from __future__ import annotations

import random
from collections.abc import Callable

SPLIT_SIZES = {"train": 2000, "validation": 300, "test": 300}
_SPLIT_SEEDS = {"train": 11, "validation": 22, "test": 33}

_TOPIC_WORDS = {
    0: ["football", "goal", "coach", "league", "match", "striker", "tennis", "stadium", "team", "referee"],
    1: ["pasta", "recipe", "soup", "bakery", "chef", "flavour", "dessert", "kitchen", "spice", "bread"],
    2: ["software", "laptop", "robot", "chip", "network", "algorithm", "server", "startup", "battery", "app"],
}
_SUBJECTS = ["My neighbour", "The article", "A friend", "The report", "Our teacher", "The podcast"]
_VERBS = ["talked about", "praised", "described", "criticised", "asked about", "wrote about"]


def classification_rows(split: str) -> list[dict]:
    rng = random.Random(_SPLIT_SEEDS[split])
    rows = []
    for _ in range(SPLIT_SIZES[split]):
        label = rng.randrange(3)
        first, second = rng.sample(_TOPIC_WORDS[label], 2)
        text = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} the {first} and the {second}."
        rows.append({"text": text, "label": label})
    return rows


_NAMES = ["Blue Fox", "Green Leaf", "The Mill", "Red Door", "Sun Cafe", "Old Bridge", "Harbour", "Moonlight"]
_FOODS = ["Italian", "French", "Indian", "Chinese", "Japanese", "English"]
_AREAS = ["city centre", "riverside", "old town", "harbour front"]
_PRICES = ["cheap", "moderate", "expensive"]


def data_to_text_rows(split: str) -> list[dict]:
    rng = random.Random(_SPLIT_SEEDS[split])
    rows = []
    for _ in range(SPLIT_SIZES[split]):
        name, food, area, price = (rng.choice(_NAMES), rng.choice(_FOODS), rng.choice(_AREAS),
                                   rng.choice(_PRICES))
        attributes = f"name[{name}], food[{food}], area[{area}], price[{price}]"
        text = f"{name} is a {price} {food} restaurant in the {area}."
        rows.append({"attributes": attributes, "text": text})
    return rows


GENERATORS: dict[str, Callable[[str], list[dict]]] = {
    "classification": classification_rows,
    "data_to_text": data_to_text_rows,
}
