"""Prompt templates with named slots, and the token positions each piece of a filled prompt covers.

A ``Template`` is a string with ``{NAME}`` slots; ``fill`` makes a ``Prompt``;
``Prompt.spans(tokenizer)`` finds, through the tokenizer's character offsets
(never by guessing from token text), which token positions each piece covers.
The pieces are the *columns* of a grid by span: each slot by its name, each
literal piece between slots by its text, and the last token, where the answer
is read. Prompts of one template share their columns whatever the slot values,
so prompts whose names have different token counts line up by span;
``align`` pairs a span's positions in two prompts from the span's last token.

Example:
    >>> from transformers import AutoTokenizer
    >>> from patchwidget import DEMO_MODEL_DIR
    >>> tokenizer = AutoTokenizer.from_pretrained(DEMO_MODEL_DIR)
    >>> t = Template("When {IO} and {S1} went to the {PLACE} , {S2} gave a drink to")
    >>> p = t.fill(IO="Mary", S1="John", PLACE="store", S2="John")
    >>> [(s.label, s.positions) for s in p.spans(tokenizer)][:4]
    [('When', (0,)), ('IO', (1,)), ('and', (2,)), ('S1', (3,))]
    >>> align((3, 4, 5), (7, 8))
    ((4, 5), (7, 8))
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ..errors import PromptError, SettingsError

LAST_TOKEN = "last token"  # the label of the column that holds only the last position
SPAN_POSITIONS = ("all", "last")  # the modes of ``align``

_SLOT = re.compile(r"\{([^{}]*)\}")


def token_strings(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """Each token id decoded on its own, as a user would read it."""
    return [tokenizer.decode([int(i)]) for i in ids]


class Span(NamedTuple):
    """One column of a prompt: its label and the token positions it covers, in order."""

    label: str
    positions: tuple[int, ...]


class _Piece(NamedTuple):
    slot: str | None  # the slot's name, or None for literal text
    text: str  # the literal text (for a slot, "{NAME}")


@dataclass(frozen=True)
class Template:
    """A prompt with named slots, written ``{NAME}`` with NAME a Python identifier.

    Two templates are equal when their texts are. Slots must be separated by
    some text (a space will do), because only then can a tokenizer be expected
    to put a token boundary between them.

    Example:
        >>> t = Template("When {IO} and {S1} went to the {PLACE} , {S2} gave a drink to")
        >>> t.slots
        ('IO', 'S1', 'PLACE', 'S2')
        >>> str(t.fill(IO="Mary", S1="John", PLACE="store", S2="John"))
        'When Mary and John went to the store , John gave a drink to'
    """

    text: str
    slots: tuple[str, ...] = field(init=False, compare=False)
    _pieces: tuple[_Piece, ...] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise PromptError(f"a template is a string with {{NAME}} slots, got {self.text!r}")
        pieces = _parse(self.text)
        slots = tuple(p.slot for p in pieces if p.slot is not None)
        if not slots:
            raise PromptError(
                f"template {self.text!r} has no slots: mark the words that change with {{NAME}}, "
                "e.g. 'When {IO} and {S} went to the store'"
            )
        seen: set[str] = set()
        for name in slots:
            if name in seen:
                raise PromptError(
                    f"template {self.text!r} uses slot {{{name}}} twice: give each occurrence its own name, "
                    f"e.g. {{{name}1}} and {{{name}2}}, and fill both with the same value"
                )
            seen.add(name)
        for before, after in zip(pieces, pieces[1:]):
            if before.slot is not None and after.slot is not None:
                raise PromptError(
                    f"template {self.text!r} has slots {{{before.slot}}} and {{{after.slot}}} directly adjacent: "
                    "with nothing between them no token boundary can be guaranteed; put a space between them"
                )
        # Frozen dataclass: derived attributes are set once, here.
        object.__setattr__(self, "slots", slots)
        object.__setattr__(self, "_pieces", tuple(pieces))

    def fill(self, **values: str) -> Prompt:
        """The prompt with each slot replaced by its value.

        Example:
            >>> Template("{A} met {B}").fill(A="Mary", B="John").values
            (('A', 'Mary'), ('B', 'John'))
        """
        unknown = [name for name in values if name not in self.slots]
        if unknown:
            raise PromptError(
                f"unknown slot {', '.join(map(repr, unknown))} for template {self.text!r}; "
                f"its slots are {', '.join(self.slots)}"
            )
        missing = [name for name in self.slots if name not in values]
        if missing:
            raise PromptError(
                f"slot {', '.join(missing)} of template {self.text!r} is missing; "
                f"fill needs every slot: {', '.join(self.slots)}"
            )
        for name in self.slots:
            _check_value(self, name, values[name])
        ordered = tuple((name, values[name]) for name in self.slots)
        return Prompt(self, ordered, self._render(dict(ordered)))

    def _render(self, values: dict[str, str]) -> str:
        return "".join(p.text if p.slot is None else values[p.slot] for p in self._pieces)

    def _labels(self) -> list[tuple[int, str]]:
        """(piece index, label) of the columns the pieces make, before the special tokens' and the last token's."""
        # Slot names and the last token's label are reserved, so that they are always found under their own names.
        used = {LAST_TOKEN, *self.slots}
        labels = []
        for i, piece in enumerate(self._pieces):
            if piece.slot is not None:
                labels.append((i, piece.slot))
            elif piece.text.strip():
                labels.append((i, _unique(piece.text.strip(), used)))
        return labels


def _parse(text: str) -> list[_Piece]:
    pieces: list[_Piece] = []
    start = 0
    for match in _SLOT.finditer(text):
        _literal(text, start, match.start(), pieces)
        name = match.group(1)
        if not name.isidentifier():
            raise PromptError(
                f"template {text!r} has a malformed slot {match.group(0)!r} at character {match.start()}: "
                "a slot is {NAME} with NAME a Python identifier, e.g. {IO}"
            )
        pieces.append(_Piece(name, match.group(0)))
        start = match.end()
    _literal(text, start, len(text), pieces)
    return pieces


def _literal(text: str, start: int, end: int, pieces: list[_Piece]) -> None:
    piece = text[start:end]
    for i, char in enumerate(piece):
        if char in "{}":
            raise PromptError(
                f"template {text!r} has a malformed brace {char!r} at character {start + i}: "
                "braces only mark slots, written {NAME} with NAME a Python identifier"
            )
    if piece:
        pieces.append(_Piece(None, piece))


def _check_value(template: Template, name: str, value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise PromptError(
            f"slot {name} of template {template.text!r} must be filled with a non-empty string, got {value!r}"
        )
    if "{" in value or "}" in value:
        raise PromptError(
            f"slot {name} of template {template.text!r} must not contain braces, got {value!r} "
            "(a filled prompt is not a template)"
        )


def _unique(label: str, used: set[str]) -> str:
    """``label``, or ``label (2)``, ``label (3)``, ... when it is taken; then taken."""
    result, n = label, 2
    while result in used:
        result, n = f"{label} ({n})", n + 1
    used.add(result)
    return result


@dataclass(frozen=True)
class Prompt:
    """A filled template: the text, and which slot values made it. Made by ``Template.fill``.

    ``values`` is a tuple of (slot, value) in slot order, so that prompts are hashable.

    Example:
        >>> p = Template("{A} met {B}").fill(A="Mary", B="John")
        >>> str(p), p.text
        ('Mary met John', 'Mary met John')
    """

    template: Template
    values: tuple[tuple[str, str], ...]
    text: str

    def __post_init__(self) -> None:
        # A Prompt built by hand must say what Template.fill would have said, or spans would be wrong.
        if not isinstance(self.template, Template):
            raise PromptError(f"a Prompt's template must be a Template, got {self.template!r}; use Template.fill")
        try:
            names = tuple(name for name, _ in self.values) if isinstance(self.values, tuple) else None
            text = self.template._render(dict(self.values))
        except (TypeError, ValueError, KeyError):
            names = text = None
        if names != self.template.slots or self.text != text:
            raise PromptError(
                f"Prompt {self.text!r} does not match template {self.template.text!r} with values {self.values!r}; "
                "make prompts with Template.fill"
            )

    def __str__(self) -> str:
        return self.text

    def spans(self, tokenizer: Any) -> list[Span]:
        """The token positions of each column of this prompt, in template order.

        Columns: a leading column for each token the tokenizer adds that comes
        from no character (a BOS), each slot by its name, each literal piece by
        its text stripped (whitespace-only pieces make no column, and their
        tokens, if any, none but the last token's; a repeated text gets
        `` (2)``), a trailing column for each added token after the
        text (an EOS), and ``"last token"``, the last position, where the answer
        is read. A token belongs to the piece holding its first non-whitespace
        character, so GPT-2's ``" John"`` belongs to the slot that holds
        ``John``. Tokenized as ``patchwidget.data.prompts`` does (with special tokens).

        Example:
            >>> p = Template("When {IO} and {S1} went to the store").fill(IO="Mary", S1="John")
            >>> [(s.label, s.positions) for s in p.spans(tokenizer)]  # doctest: +NORMALIZE_WHITESPACE
            [('When', (0,)), ('IO', (1,)), ('and', (2,)), ('S1', (3,)), ('went to the store', (4, 5, 6, 7)),
             ('last token', (7,))]
        """
        if not getattr(tokenizer, "is_fast", False):
            raise PromptError(
                f"spans of prompt {self.text!r} need a fast tokenizer (one backed by the tokenizers library), "
                f"which gives each token's character offsets; {type(tokenizer).__name__} is not one"
            )
        # The same call as prompts._encode (special tokens included), asking for offsets too.
        encoding = tokenizer(self.text, return_offsets_mapping=True, return_special_tokens_mask=True)
        ids = [int(i) for i in encoding["input_ids"]]
        offsets = [(int(s), int(e)) for s, e in encoding["offset_mapping"]]
        added = encoding.get("special_tokens_mask") or [int(e <= s) for s, e in offsets]
        lead, members, trail = self._assign(tokenizer, ids, offsets, added)
        _, bounds = self._piece_of_char()
        labels = self.template._labels()
        used = {LAST_TOKEN, *(label for _, label in labels)}  # an added token's text must not take a piece's label
        spans = [Span(_unique(self._special_label(tokenizer, ids[p]), used), (p,)) for p in lead]
        for index, label in labels:
            if not members.get(index):
                self._empty(tokenizer, ids, index, bounds[index])
            spans.append(Span(label, tuple(members[index])))
        spans += [Span(_unique(self._special_label(tokenizer, ids[p]), used), (p,)) for p in trail]
        spans.append(Span(LAST_TOKEN, (len(ids) - 1,)))
        return spans

    def _assign(
        self, tokenizer: Any, ids: list[int], offsets: list[tuple[int, int]], added: Sequence[int]
    ) -> tuple[list[int], dict[int, list[int]], list[int]]:
        """The positions of the added tokens before the text, of each piece (by index), of those after it."""
        piece_of, _ = self._piece_of_char()
        has_chars = [i for i, (s, e) in enumerate(offsets) if e > s]
        first, last = (has_chars[0], has_chars[-1]) if has_chars else (len(ids), -1)
        lead, trail = [], []
        members: dict[int, list[int]] = {}
        for position, ((start, end), special) in enumerate(zip(offsets, added)):
            # A token the tokenizer adds before or after the text (a BOS, an EOS) comes from no character.
            if special and end <= start and (position < first or position > last):
                (lead if position < first else trail).append(position)
                continue
            if end <= start:
                # Any other empty token (a whitespace token whose offsets were trimmed to nothing) belongs to
                # the piece of the character where it stands.
                members.setdefault(piece_of[min(start, len(self.text) - 1)], []).append(position)
                continue
            chars = [c for c in range(start, end) if not self.text[c].isspace()] or [start]
            pieces = sorted({piece_of[c] for c in chars})
            if len(pieces) > 1:
                self._merged(tokenizer, ids, position, pieces)
            members.setdefault(pieces[0], []).append(position)
        return lead, members, trail

    def _piece_of_char(self) -> tuple[list[int], list[tuple[int, int]]]:
        """For each character of the text, the index of its piece; and each piece's (start, end)."""
        values = dict(self.values)
        piece_of: list[int] = []
        bounds = []
        for i, piece in enumerate(self.template._pieces):
            text = piece.text if piece.slot is None else values[piece.slot]
            bounds.append((len(piece_of), len(piece_of) + len(text)))
            piece_of += [i] * len(text)
        return piece_of, bounds

    def _name(self, index: int) -> str:
        piece = self.template._pieces[index]
        return f"slot {piece.slot} ({dict(self.values)[piece.slot]!r})" if piece.slot else f"the text {piece.text!r}"

    def _merged(self, tokenizer: Any, ids: list[int], position: int, pieces: list[int]) -> None:
        slots = [self.template._pieces[i].slot for i in pieces if self.template._pieces[i].slot]
        others = [self._name(i) for i in pieces]
        token = token_strings(tokenizer, [ids[position]])[0]
        raise PromptError(
            f"in prompt {self.text!r} (template {self.template.text!r}) the tokenizer merges "
            f"{' and '.join(others)} into one token {token!r} (position {position}), so no token boundary "
            f"separates slot {', '.join(slots)} from its neighbour. The prompt's tokens: "
            f"{token_strings(tokenizer, ids)}. Put a space between {{{slots[0]}}} and its neighbour in the template."
        )

    def _empty(self, tokenizer: Any, ids: list[int], index: int, bounds: tuple[int, int]) -> None:
        raise PromptError(
            f"in prompt {self.text!r} (template {self.template.text!r}) {self._name(index)} "
            f"(characters {bounds[0]}-{bounds[1]}) has no tokens: the tokenizer dropped its characters or gave "
            f"them to a neighbour. The prompt's tokens: {token_strings(tokenizer, ids)}"
        )

    @staticmethod
    def _special_label(tokenizer: Any, token_id: int) -> str:
        text = token_strings(tokenizer, [token_id])[0]
        return text if text.strip() else str(tokenizer.convert_ids_to_tokens(token_id))


def columns(prompts: Sequence[Prompt], tokenizer: Any) -> list[str]:
    """The column labels that all ``prompts`` share, checking every prompt's tokenization on the way
    (see ``shared_spans``).

    All prompts must come from one template; their columns then agree whatever
    the slot values, and this checks that they do.

    Example:
        >>> t = Template("When {IO} and {S} went to the store")
        >>> columns([t.fill(IO="Mary", S="John"), t.fill(IO="Tom", S="Anna")], tokenizer)
        ['When', 'IO', 'and', 'S', 'went to the store', 'last token']
    """
    return [span.label for span in shared_spans(prompts, tokenizer)[0]]


def shared_spans(prompts: Sequence[Prompt], tokenizer: Any) -> list[list[Span]]:
    """Every prompt's spans, each prompt tokenized once, checked to share one template's columns.

    All prompts must come from one template; their columns then agree whatever
    the slot values, and this checks that they do.
    """
    if isinstance(prompts, str | Prompt) or not isinstance(prompts, Sequence) or not prompts:
        raise PromptError(f"columns() needs a non-empty list of Prompts (made by Template.fill), got {prompts!r}")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, Prompt):
            raise PromptError(
                f"prompt {i} is {prompt!r}, not a Prompt: prompts with spans are made by Template.fill, "
                "e.g. Template('When {IO} and {S} went').fill(IO='Mary', S='John')"
            )
    first = prompts[0]
    for i, prompt in enumerate(prompts[1:], start=1):
        if prompt.template != first.template:
            raise PromptError(
                f"prompts of different templates cannot share one grid's columns: prompt 0 comes from "
                f"template {first.template.text!r}, prompt {i} from template {prompt.template.text!r}"
            )
    spans = [prompt.spans(tokenizer) for prompt in prompts]
    labels = [s.label for s in spans[0]]
    for i, prompt in enumerate(prompts[1:], start=1):
        other = [s.label for s in spans[i]]
        if other != labels:  # only the tokenizer's added tokens can do this
            raise PromptError(
                f"prompts 0 ({first.text!r}) and {i} ({prompt.text!r}) of template {first.template.text!r} "
                f"tokenize to different columns, {labels} and {other}: the tokenizer adds different special "
                "tokens to them"
            )
    return spans


def align(source: Sequence[int], target: Sequence[int], mode: str = "all") -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Pair a span's positions in the source prompt with its positions in the target prompt.

    Aligned from the span's last token: with k = min(len(source), len(target)),
    the last k positions of each pair up, and the first positions of the longer
    one, which have no partner, are left out (not patched). ``mode="last"``
    pairs only the last token of each.

    Example:
        >>> align((3, 4, 5), (7, 8))
        ((4, 5), (7, 8))
        >>> align((3, 4, 5), (7, 8), mode="last")
        ((5,), (8,))
    """
    if not isinstance(mode, str) or mode not in SPAN_POSITIONS:
        raise SettingsError(
            f"span positions must be 'all' (every position, aligned from the span's last token) or 'last' "
            f"(only each span's last token), got {mode!r}"
        )
    source, target = tuple(int(p) for p in source), tuple(int(p) for p in target)
    k = min(len(source), len(target), 1 if mode == "last" else len(source))
    # Slice from len - k, not -k: -0 would take everything.
    return source[len(source) - k :], target[len(target) - k :]
