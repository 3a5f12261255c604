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
# The one IOI pair the README, the command line (`patchwidget run`) and `patchwidget doctor` start from.
IOI_EXAMPLE = dict(
    clean="When Mary and John went to the store , John gave a drink to",
    corrupt="When Mary and John went to the store , Mary gave a drink to",
    answer="Mary",
    wrong="John",
)
# Induction: sequence lengths and offsets (prefix lengths) of training and of the held-out check.
# The two sets share no length and no offset, so no held-out sequence can occur in training.
TRAIN_LENGTHS = (2, 3, 4, 6, 7, 8, 10, 11, 12)
HELD_OUT_LENGTHS = (5, 9)
TRAIN_OFFSETS = (0, 1, 2, 3, 5, 6, 8, 9, 10)
HELD_OUT_OFFSETS = (4, 7)
# In training a sequence is repeated several times (up to TRAIN_MAX_WORDS words in all): short
# sequences repeated many times make a previous-token head useful early, which starts induction.
TRAIN_MAX_COPIES, TRAIN_MAX_WORDS = 6, 36
TASK_MIX = (0.25, 0.25)  # shares of IOI and factual recall in training; induction has the rest
SPECIAL_TOKENS = ("<|endoftext|>", "<unk>")


@dataclass(frozen=True)
class PromptPair:
    """A clean and a corrupted prompt with the answer the clean one predicts."""

    clean: str
    corrupt: str
    answer: str
    wrong: str


def as_prompts(pairs: list[PromptPair]) -> dict[str, list[str]]:
    """The pairs as the keyword arguments every entry point takes: ``clean``, ``corrupt``, ``answer``, ``wrong``.

    Example:
        >>> kw = as_prompts(ioi_pairs(2))
        >>> sorted(kw), len(kw["clean"])
        (['answer', 'clean', 'corrupt', 'wrong'], 2)
    """
    return dict(
        clean=[p.clean for p in pairs],
        corrupt=[p.corrupt for p in pairs],
        answer=[p.answer for p in pairs],
        wrong=[p.wrong for p in pairs],
    )


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


def repeated_sequence(rng: random.Random, length: int, offset: int, copies: int = 2) -> tuple[list[str], int]:
    """Random words: ``offset`` words of prefix, then ``length`` words, then the same words again.

    Every word is different from every other except for the repeats, so the only way to predict the
    second copy is to find each word's earlier occurrence and copy the word that followed it there.
    Returns the words (the sequence ``copies`` times) and the position where the second copy starts
    (``offset + length``).

    Example:
        >>> words, start = repeated_sequence(random.Random(0), 3, 2)
        >>> words[2:5] == words[5:8], start
        (True, 5)
    """
    picked = rng.sample(INDUCTION_WORDS, offset + length)
    prefix, seq = picked[:offset], picked[offset:]
    return prefix + seq * copies, offset + length


def induction_shape(rng: random.Random, held_out: bool) -> tuple[int, int]:
    """A (length, offset) of a repeated sequence: from the training ranges, or from the held-out ones."""
    if held_out:
        return rng.choice(HELD_OUT_LENGTHS), rng.choice(HELD_OUT_OFFSETS)
    return rng.choice(TRAIN_LENGTHS), rng.choice(TRAIN_OFFSETS)


def induction_sentence(rng: random.Random, held_out: bool = True) -> tuple[str, str]:
    """A repeated sequence cut somewhere in its second copy, and the word that comes next there."""
    length, offset = induction_shape(rng, held_out)
    words, start = repeated_sequence(rng, length, offset)
    cut = start + rng.randint(1, length - 1)
    return " ".join(words[:cut]), words[cut]


def fact_sentence(rng: random.Random, held_out: bool | None) -> tuple[str, str, str]:
    """A capital-city prompt, its answer and the country."""
    while True:
        prefix, country = rng.choice(FACT_PREFIXES), rng.choice(list(COUNTRIES))
        if held_out is None or is_held_out_fact(prefix, country) == held_out:
            break
    return f"{prefix} {country} is", COUNTRIES[country], country


def training_example(rng: random.Random) -> tuple[str, int]:
    """One training text and the first position whose next-token prediction is trained on.

    IOI and factual recall: a task prompt followed by its answer, every position trained (0).
    Induction: a random prefix, a random sequence and its repeat; only the second copy is
    trained (from its first word on, each position predicts the next word), since nothing
    before it is predictable.
    """
    task = rng.random()
    if task < TASK_MIX[0]:
        prompt, answer, _ = ioi_sentence(rng, held_out=False)
        return f"{prompt} {answer}", 0
    if task < TASK_MIX[0] + TASK_MIX[1]:
        prompt, answer, _ = fact_sentence(rng, held_out=False)
        return f"{prompt} {answer}", 0
    length, offset = induction_shape(rng, held_out=False)
    copies = min(TRAIN_MAX_COPIES, (TRAIN_MAX_WORDS - offset) // length)
    words, start = repeated_sequence(rng, length, offset, copies)
    return " ".join(words), start


def held_out_examples(task: str, n: int, seed: int = 1234) -> list[tuple[str, str]]:
    """(prompt, answer) pairs of a task that training never saw.

    For induction, a repeated sequence of a held-out length and offset, cut at a random
    position of its second copy.

    Example:
        >>> held_out_examples("fact", 1)[0][1] in COUNTRIES.values()
        True
    """
    rng = random.Random(seed)
    if task == "ioi":
        return [ioi_sentence(rng, held_out=True)[:2] for _ in range(n)]
    if task == "induction":
        return [induction_sentence(rng, held_out=True) for _ in range(n)]
    if task == "fact":
        return [fact_sentence(rng, held_out=True)[:2] for _ in range(n)]
    raise ValueError(f"unknown task {task!r}; expected 'ioi', 'induction' or 'fact'")


def held_out_repeats(n: int, seed: int = 1234) -> list[tuple[list[str], int]]:
    """Repeated sequences of held-out lengths and offsets: (words, where the second copy starts).

    Next-token accuracy over a whole second copy is measured on these.

    Example:
        >>> words, start = held_out_repeats(1)[0]
        >>> len(words) - start in HELD_OUT_LENGTHS, 2 * start - len(words) in HELD_OUT_OFFSETS
        (True, True)
    """
    rng = random.Random(seed)
    return [repeated_sequence(rng, *induction_shape(rng, held_out=True)) for _ in range(n)]


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


def induction_pairs(
    n: int, seed: int = 0, length: int = HELD_OUT_LENGTHS[0], offset: int = HELD_OUT_OFFSETS[0], kind: str = "key"
) -> list[PromptPair]:
    """Repeated-sequence pairs: ``offset`` random words, a sequence, then the sequence again minus its last word.

    The clean prompt's answer is the sequence's last word: the word that followed the last word's
    earlier occurrence. The corrupted prompt changes the first copy, so that copying gives another word:

    - ``kind="key"``: the two words before the answer are swapped in the first copy, so the last
      word's earlier occurrence is followed by a different word of the sequence (what a previous-token
      head writes there, the keys an induction head looks for, changes);
    - ``kind="value"``: the answer itself is replaced by an unused word in the first copy (what an
      induction head copies changes).

    The default length and offset are held-out ones (never used in training).

    Example:
        >>> p = induction_pairs(1, length=4, offset=0)[0]
        >>> len(p.clean.split()), p.answer == p.clean.split()[3], p.wrong in p.corrupt.split()
        (7, True, True)
    """
    if kind not in ("key", "value"):
        raise ValueError(f"unknown kind {kind!r}; expected 'key' or 'value'")
    if length < 3:
        raise ValueError("induction pairs need a sequence of at least 3 words")
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        picked = rng.sample(INDUCTION_WORDS, offset + length + 1)
        prefix, seq, unused = picked[:offset], picked[offset:-1], picked[-1]
        if kind == "key":
            first, wrong = [*seq[:-3], seq[-2], seq[-3], seq[-1]], seq[-3]
        else:
            first, wrong = [*seq[:-1], unused], unused
        clean = " ".join(prefix + seq + seq[:-1])
        corrupt = " ".join(prefix + first + seq[:-1])
        pairs.append(PromptPair(clean, corrupt, answer=seq[-1], wrong=wrong))
    return pairs
