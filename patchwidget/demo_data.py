"""The small templated language the bundled demo model is trained on.

Three tasks with textbook circuits:

- indirect object identification (IOI):
  ``When Mary and John went to the store , John gave a drink to`` -> ``Mary``
- induction: a random word sequence, repeated, continues as before:
  ``apple river stone apple river`` -> ``stone``
- factual recall: ``The capital of France is`` -> ``Paris``

Generators here feed the training script (``scripts/train_demo_model.py``),
the held-out accuracy test, the examples and the benchmarks, so that they all
agree on one language. A fixed part of each task's combinations is held out of
training (see ``is_held_out_*``) to measure generalisation honestly.

Example:
    >>> pairs = ioi_pairs(2, seed=0)
    >>> pairs[0].clean.split()[-1], len(pairs)
    ('to', 2)
"""

from __future__ import annotations

import random
from dataclasses import dataclass

NAMES = (
    "Mary John Alice Bob Tom Sarah James Emma David Lisa Paul Anna "
    "Mark Kate Peter Julia Sam Laura Mike Rachel Dan Grace Ben Lucy"
).split()
PLACES = "store park school office garden station market beach".split()
OBJECTS = "drink book ring ball letter gift key flower".split()
VERBS = "gave handed passed sent".split()
COUNTRIES = {
    "France": "Paris",
    "Japan": "Tokyo",
    "Italy": "Rome",
    "Spain": "Madrid",
    "Germany": "Berlin",
    "Egypt": "Cairo",
    "Russia": "Moscow",
    "China": "Beijing",
    "India": "Delhi",
    "Kenya": "Nairobi",
    "Peru": "Lima",
    "Greece": "Athens",
    "Norway": "Oslo",
    "Cuba": "Havana",
    "Canada": "Ottawa",
    "Ireland": "Dublin",
    "Poland": "Warsaw",
    "Austria": "Vienna",
    "Portugal": "Lisbon",
    "Chile": "Santiago",
    "Sweden": "Stockholm",
    "Turkey": "Ankara",
    "Thailand": "Bangkok",
    "Cyprus": "Nicosia",
}
FACT_PREFIXES = (
    "The capital of",
    "As everyone knows , the capital of",
    "Of course , the capital of",
    "In fact , the capital of",
    "We all learned that the capital of",
    "It is true that the capital of",
)
FILLER_WORDS = (
    "apple river stone cloud window table orange forest silver candle "
    "mirror rocket pencil garden tiger violin marble lemon castle anchor "
    "bottle planet desert island jacket ladder magnet needle pepper rabbit "
    "saddle tunnel"
).split()
IOI_TEMPLATES = (
    "When {a} and {b} went to the {place} , {s} {verb} a {obj} to",
    "After {a} and {b} arrived at the {place} , {s} {verb} a {obj} to",
    "Then {a} and {b} had fun at the {place} , and {s} {verb} a {obj} to",
)
INDUCTION_WORDS = FILLER_WORDS + NAMES[:12] + OBJECTS
SPECIAL_TOKENS = ("<|endoftext|>", "<unk>")


@dataclass(frozen=True)
class PromptPair:
    """A clean and a corrupted prompt with the answer the clean one predicts."""

    clean: str
    corrupt: str
    answer: str
    wrong: str


def vocabulary() -> list[str]:
    """Every word of the language, special tokens first, in a fixed order."""
    words: list[str] = list(SPECIAL_TOKENS)
    texts = [*IOI_TEMPLATES, *FACT_PREFIXES, " ".join(COUNTRIES), " ".join(COUNTRIES.values())]
    texts += [" ".join(x) for x in (NAMES, PLACES, OBJECTS, VERBS, FILLER_WORDS)]
    texts += ["is"]
    for text in texts:
        for word in text.replace("{", " {").split():
            if not word.startswith("{") and word not in words:
                words.append(word)
    return words


# Held-out splits: fixed combinations never shown in training.
def is_held_out_ioi(a: str, b: str) -> bool:
    """Whether the IOI name pair (a, b) is one that training never saw."""
    return (NAMES.index(a) * 7 + NAMES.index(b) * 3) % 10 == 0


def is_held_out_fact(prefix: str, country: str) -> bool:
    """Whether the factual-recall prompt (prefix, country) is one that training never saw."""
    return (FACT_PREFIXES.index(prefix) + list(COUNTRIES).index(country)) % 5 == 0


def ioi_sentence(rng: random.Random, held_out: bool | None) -> tuple[str, str, str]:
    """One IOI prompt, its answer (the indirect object) and the subject."""
    while True:
        a, b = rng.sample(NAMES, 2)
        if held_out is None or is_held_out_ioi(a, b) == held_out:
            break
    s, io = (a, b) if rng.random() < 0.5 else (b, a)
    template = rng.choice(IOI_TEMPLATES)
    prompt = template.format(a=a, b=b, s=s, place=rng.choice(PLACES), verb=rng.choice(VERBS), obj=rng.choice(OBJECTS))
    return prompt, io, s


def induction_sentence(rng: random.Random, length: int | None = None) -> tuple[str, str]:
    """A random sequence repeated once, cut before its last word, and that word."""
    n = length or rng.randint(4, 10)
    seq = rng.sample(INDUCTION_WORDS, n)
    return " ".join(seq + seq[:-1]), seq[-1]


def fact_sentence(rng: random.Random, held_out: bool | None) -> tuple[str, str, str]:
    """A capital-city prompt, its answer and the country."""
    while True:
        prefix, country = rng.choice(FACT_PREFIXES), rng.choice(list(COUNTRIES))
        if held_out is None or is_held_out_fact(prefix, country) == held_out:
            break
    return f"{prefix} {country} is", COUNTRIES[country], country


def training_text(rng: random.Random) -> str:
    """One training sequence: a task prompt followed by its answer."""
    task = rng.random()
    if task < 0.35:
        prompt, answer, _ = ioi_sentence(rng, held_out=False)
    elif task < 0.65:
        prompt, answer = induction_sentence(rng)
    else:
        prompt, answer, _ = fact_sentence(rng, held_out=False)
    return f"{prompt} {answer}"


def held_out_examples(task: str, n: int, seed: int = 1234) -> list[tuple[str, str]]:
    """(prompt, answer) pairs of a task that training never saw.

    Example:
        >>> held_out_examples("fact", 1)[0][1] in COUNTRIES.values()
        True
    """
    rng = random.Random(seed)
    if task == "ioi":
        return [ioi_sentence(rng, held_out=True)[:2] for _ in range(n)]
    if task == "induction":
        return [induction_sentence(rng) for _ in range(n)]
    if task == "fact":
        return [fact_sentence(rng, held_out=True)[:2] for _ in range(n)]
    raise ValueError(f"unknown task {task!r}; expected 'ioi', 'induction' or 'fact'")


def ioi_pairs(n: int, seed: int = 0, template: int = 0) -> list[PromptPair]:
    """IOI prompt pairs whose corrupted prompt swaps the second subject.

    Clean ``When Mary and John ... , John gave a drink to`` predicts ``Mary``;
    the corrupted prompt names ``Mary`` as the second subject instead, so it
    predicts ``John``. The two prompts differ at exactly one token.

    Example:
        >>> p = ioi_pairs(1)[0]
        >>> p.answer != p.wrong
        True
    """
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        a, b = rng.sample(NAMES, 2)
        place, verb, obj = rng.choice(PLACES), rng.choice(VERBS), rng.choice(OBJECTS)
        fill = dict(a=a, b=b, place=place, verb=verb, obj=obj)
        clean = IOI_TEMPLATES[template].format(s=b, **fill)
        corrupt = IOI_TEMPLATES[template].format(s=a, **fill)
        pairs.append(PromptPair(clean, corrupt, answer=a, wrong=b))
    return pairs


def fact_pairs(n: int, seed: int = 0) -> list[PromptPair]:
    """``The capital of X is`` pairs whose corrupted prompt swaps the country."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        c1, c2 = rng.sample(list(COUNTRIES), 2)
        pairs.append(
            PromptPair(f"The capital of {c1} is", f"The capital of {c2} is", answer=COUNTRIES[c1], wrong=COUNTRIES[c2])
        )
    return pairs


def induction_pairs(n: int, seed: int = 0, length: int = 6) -> list[PromptPair]:
    """Repeated-sequence pairs whose corrupted prompt changes the first copy.

    The clean prompt repeats a sequence, so its last word is predictable; the
    corrupted prompt replaces the first copy's last word, so induction points
    to a different word.
    """
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        seq = rng.sample(INDUCTION_WORDS, length + 1)
        first, alt = seq[:length], seq[length]
        clean = " ".join(first + first[:-1])
        corrupt = " ".join(first[:-1] + [alt] + first[:-1])
        pairs.append(PromptPair(clean, corrupt, answer=first[-1], wrong=alt))
    return pairs
