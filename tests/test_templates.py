"""Templates, prompts and spans: which token positions each piece of a filled prompt covers.

Three kinds of tokenizer, all built here or bundled (nothing downloads): the demo model's
word-level one; a byte-level BPE built by hand, whose tokens carry their leading space as
GPT-2's do, with names of one, two and three tokens and a name that merges with a following
"s"; and the same BPE with a BOS (or an EOS) added by the post-processor.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizer, PreTrainedTokenizerFast

from patchwidget.data.templates import LAST_TOKEN, Prompt, Span, Template, align, columns
from patchwidget.errors import PromptError, SettingsError

IOI = Template("When {IO} and {S1} went to the {PLACE} , {S2} gave a drink to")

# --- tokenizers ----------------------------------------------------------------------------------------------

# Whole tokens of the hand-built byte-level BPE ("Ġ" is the byte-level space). " Christopher" becomes
# " Christ" + "opher" and " Maximilian" " Max" + "imil" + "ian"; " Johns" is one token.
WORDS = [
    "When", "Ġand", "Ġwent", "Ġto", "Ġthe", "Ġstore", "Ġpark", "Ġgave", "Ġa", "Ġdrink", "Ġ,", "Ġbook",
    "ĠJohn", "ĠJohns", "ĠMary", "ĠChrist", "opher", "ĠMax", "imil", "ian",
]  # fmt: skip


def byte_level(post_processor=None, trim_offsets=False) -> PreTrainedTokenizerFast:
    """A GPT-2-style byte-level BPE whose merges build exactly WORDS, left to right."""
    vocab = {"<|endoftext|>": 0, "<s>": 1, "</s>": 2}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab.setdefault(char, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in WORDS:
        for i in range(1, len(word)):
            if (word[:i], word[i]) not in merges:
                merges.append((word[:i], word[i]))
            vocab.setdefault(word[: i + 1], len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = post_processor or processors.ByteLevel(trim_offsets=trim_offsets)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="module", params=[False, True], ids=["offsets-with-space", "trimmed-offsets"])
def bpe(request):
    return byte_level(trim_offsets=request.param)


@pytest.fixture(scope="module")
def bos():
    return byte_level(processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)]))


def dropping(char: str) -> PreTrainedTokenizerFast:
    """A word-level tokenizer whose normalizer deletes ``char``: text made of it gets no tokens."""
    tok = Tokenizer(models.WordLevel(vocab={"<unk>": 0, "a": 1, "b": 2}, unk_token="<unk>"))
    tok.normalizer = normalizers.Replace(char, "")
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")


class Slow(PreTrainedTokenizer):
    """A slow (pure Python) tokenizer: it gives no character offsets."""

    def __init__(self, **kwargs):
        self.vocab = {"<unk>": 0, "a": 1, "b": 2}
        super().__init__(unk_token="<unk>", **kwargs)

    @property
    def vocab_size(self):
        return len(self.vocab)

    def get_vocab(self):
        return dict(self.vocab)

    def _tokenize(self, text):
        return text.split()

    def _convert_token_to_id(self, token):
        return self.vocab.get(token, 0)

    def _convert_id_to_token(self, index):
        return {v: k for k, v in self.vocab.items()}[index]


class Canned:
    """A stand-in fast tokenizer that returns the ids and offsets given for each text."""

    is_fast = True

    def __init__(self, table):
        self.table = table  # text -> (ids, offsets)

    def __call__(self, text, return_offsets_mapping=False, return_special_tokens_mask=False):
        ids, offsets, added = self.table[text]
        return {"input_ids": ids, "offset_mapping": offsets, "special_tokens_mask": added}

    def decode(self, ids):
        return "".join(f"<{i}>" for i in ids)

    def convert_ids_to_tokens(self, index):
        return f"<{index}>"


def spans_of(prompt, tokenizer):
    return [(s.label, s.positions) for s in prompt.spans(tokenizer)]


# --- Template ------------------------------------------------------------------------------------------------


def test_template_slots_in_order_and_equality_by_text():
    assert IOI.text == "When {IO} and {S1} went to the {PLACE} , {S2} gave a drink to"
    assert IOI.slots == ("IO", "S1", "PLACE", "S2")
    same = Template("When {IO} and {S1} went to the {PLACE} , {S2} gave a drink to")
    assert same == IOI and hash(same) == hash(IOI) and len({same, IOI}) == 1
    assert Template("When {IO} and {S1} went") != IOI
    with pytest.raises(dataclasses.FrozenInstanceError):
        IOI.text = "x {A}"


@pytest.mark.parametrize(
    "text, match",
    [
        ("When Mary and John went", "has no slots"),
        ("When {IO and {S} went", r"malformed brace '\{' at character 5"),
        ("When IO} and {S} went", r"malformed brace '\}' at character 7"),
        ("When {} and {S} went", r"malformed slot '\{\}'"),
        ("When {1st} and {S} went", r"malformed slot '\{1st\}'"),
        ("When {the IO} and {S} went", r"malformed slot '\{the IO\}'"),
        ("When {{IO}} and {S} went", r"malformed brace '\{' at character 5"),
        ("When {S} and {S} went", r"uses slot \{S\} twice: give each occurrence its own name, e.g. \{S1\} and \{S2\}"),
        ("When {IO}{S} went", r"slots \{IO\} and \{S\} directly adjacent"),
    ],
)
def test_template_refusals_name_the_template(text, match):
    with pytest.raises(PromptError, match=match) as err:
        Template(text)
    assert repr(text) in str(err.value)


def test_template_must_be_a_string():
    with pytest.raises(PromptError, match="a template is a string"):
        Template(3)


def test_slots_separated_by_whitespace_only_are_allowed():
    assert Template("{A} {B}").slots == ("A", "B")


# --- fill and Prompt -----------------------------------------------------------------------------------------


def test_fill_gives_text_and_values_in_slot_order():
    prompt = IOI.fill(S2="John", PLACE="store", IO="Mary", S1="John")
    assert prompt.text == "When Mary and John went to the store , John gave a drink to"
    assert str(prompt) == prompt.text
    assert prompt.template is IOI
    assert prompt.values == (("IO", "Mary"), ("S1", "John"), ("PLACE", "store"), ("S2", "John"))
    again = IOI.fill(IO="Mary", S1="John", PLACE="store", S2="John")
    assert again == prompt and hash(again) == hash(prompt)
    assert IOI.fill(IO="Tom", S1="John", PLACE="store", S2="John") != prompt


def test_fill_refuses_a_missing_slot():
    with pytest.raises(PromptError, match=r"slot PLACE of template .* is missing") as err:
        IOI.fill(IO="Mary", S1="John", S2="John")
    assert repr(IOI.text) in str(err.value)


def test_fill_refuses_an_unknown_slot_and_lists_the_slots():
    with pytest.raises(PromptError, match=r"unknown slot 'S' .* its slots are IO, S1, PLACE, S2") as err:
        IOI.fill(IO="Mary", S="John", S1="John", PLACE="store", S2="John")
    assert repr(IOI.text) in str(err.value)


@pytest.mark.parametrize(
    "value, match",
    [(3, "non-empty string, got 3"), ("", "non-empty string, got ''"), ("  ", "non-empty string, got '  '"),
     (None, "non-empty string, got None"), ("{x}", "must not contain braces"), ("Ma}ry", "must not contain braces")],
)  # fmt: skip
def test_fill_refuses_bad_values_naming_slot_and_template(value, match):
    with pytest.raises(PromptError, match=match) as err:
        IOI.fill(IO="Mary", S1="John", PLACE=value, S2="John")
    assert "slot PLACE" in str(err.value) and repr(IOI.text) in str(err.value)


def test_a_prompt_made_by_hand_must_agree_with_its_template():
    values = (("IO", "Mary"), ("S1", "John"), ("PLACE", "store"), ("S2", "John"))
    assert Prompt(IOI, values, "When Mary and John went to the store , John gave a drink to").text.startswith("When")
    with pytest.raises(PromptError, match="does not match template"):
        Prompt(IOI, values, "When Mary and John went to the park , John gave a drink to")
    with pytest.raises(PromptError, match="does not match template"):
        Prompt(IOI, values[:3], "When Mary and John went to the store , {S2} gave a drink to")
    with pytest.raises(PromptError, match="must be a Template"):
        Prompt("When {IO}", (("IO", "Mary"),), "When Mary")


# --- spans: the word-level demo tokenizer --------------------------------------------------------------------


def test_spans_of_the_ioi_template(tokenizer):
    prompt = IOI.fill(IO="Mary", S1="John", PLACE="store", S2="John")
    assert spans_of(prompt, tokenizer) == [
        ("When", (0,)),
        ("IO", (1,)),
        ("and", (2,)),
        ("S1", (3,)),
        ("went to the", (4, 5, 6)),
        ("PLACE", (7,)),
        (",", (8,)),
        ("S2", (9,)),
        ("gave a drink to", (10, 11, 12, 13)),
        (LAST_TOKEN, (13,)),
    ]
    assert isinstance(prompt.spans(tokenizer)[0], Span)
    assert len(tokenizer(prompt.text)["input_ids"]) == 14  # the same tokens patchwidget.prompts reads


def test_a_slot_of_several_tokens_shifts_the_later_spans(tokenizer):
    prompt = IOI.fill(IO="Mary", S1="John", PLACE="the store", S2="John")
    spans = dict(spans_of(prompt, tokenizer))
    assert spans["PLACE"] == (7, 8) and spans[","] == (9,) and spans["S2"] == (10,)
    assert spans[LAST_TOKEN] == (14,)


def test_repeated_literal_text_gets_distinct_labels(tokenizer):
    template = Template("When {A} , {B} , {C} went to the store")
    prompt = template.fill(A="Mary", B="John", C="Tom")
    assert spans_of(prompt, tokenizer) == [
        ("When", (0,)),
        ("A", (1,)),
        (",", (2,)),
        ("B", (3,)),
        (", (2)", (4,)),
        ("C", (5,)),
        ("went to the store", (6, 7, 8, 9)),
        (LAST_TOKEN, (9,)),
    ]


def test_slot_names_and_the_last_token_keep_their_labels(tokenizer):
    # The literal "A" and the literal "last token" yield to the slot A and to the last-token column.
    prompt = Template("A {A} last token {B} to").fill(A="Mary", B="John")
    assert [label for label, _ in spans_of(prompt, tokenizer)] == [
        "A (2)",
        "A",
        "last token (2)",
        "B",
        "to",
        LAST_TOKEN,
    ]


def test_whitespace_only_literals_make_no_column(tokenizer):
    prompt = Template("{A} {B} went").fill(A="Mary", B="John")
    assert spans_of(prompt, tokenizer) == [("A", (0,)), ("B", (1,)), ("went", (2,)), (LAST_TOKEN, (2,))]


def test_a_prompt_ending_in_a_slot_has_the_slot_as_last_token(tokenizer):
    prompt = Template("When Mary and John went to the {PLACE}").fill(PLACE="park")
    assert spans_of(prompt, tokenizer) == [("When Mary and John went to the", (0, 1, 2, 3, 4, 5, 6)),
                                           ("PLACE", (7,)), (LAST_TOKEN, (7,))]  # fmt: skip


# --- spans: byte-level BPE, where " John" carries its leading space ------------------------------------------


def test_a_token_with_a_leading_space_belongs_to_its_slot(bpe):
    prompt = Template("When {IO} and {S} went to the store").fill(IO="Mary", S="John")
    encoding = bpe(prompt.text, return_offsets_mapping=True)
    assert [bpe.decode([i]) for i in encoding["input_ids"]][:4] == ["When", " Mary", " and", " John"]
    assert spans_of(prompt, bpe) == [
        ("When", (0,)),
        ("IO", (1,)),
        ("and", (2,)),
        ("S", (3,)),
        ("went to the store", (4, 5, 6, 7)),
        (LAST_TOKEN, (7,)),
    ]


def test_untrimmed_offsets_really_include_the_space():
    # Without this the rule "first non-whitespace character" would go untested on the offsets GPT-2 gives.
    tokenizer = byte_level(trim_offsets=False)
    text = "When Mary and John"
    offsets = tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
    assert offsets[1] == (4, 9) and text[4] == " "


def test_names_of_different_token_counts_share_columns(bpe):
    template = Template("When {IO} and {S} went to the {PLACE} , {S2} gave a book to")
    one = template.fill(IO="Mary", S="John", PLACE="store", S2="John")
    three = template.fill(IO="Maximilian", S="Christopher", PLACE="park", S2="Christopher")
    assert [bpe.decode([i]) for i in bpe(three.text)["input_ids"]][1:7] == [
        " Max", "imil", "ian", " and", " Christ", "opher"
    ]  # fmt: skip
    assert spans_of(one, bpe) == [
        ("When", (0,)), ("IO", (1,)), ("and", (2,)), ("S", (3,)), ("went to the", (4, 5, 6)), ("PLACE", (7,)),
        (",", (8,)), ("S2", (9,)), ("gave a book to", (10, 11, 12, 13)), (LAST_TOKEN, (13,)),
    ]  # fmt: skip
    assert spans_of(three, bpe) == [
        ("When", (0,)), ("IO", (1, 2, 3)), ("and", (4,)), ("S", (5, 6)), ("went to the", (7, 8, 9)),
        ("PLACE", (10,)), (",", (11,)), ("S2", (12, 13)), ("gave a book to", (14, 15, 16, 17)), (LAST_TOKEN, (17,)),
    ]  # fmt: skip
    assert len(bpe(three.text)["input_ids"]) == 18
    assert columns([one, three], bpe) == [label for label, _ in spans_of(one, bpe)]


def test_a_slot_at_the_start_without_a_space(bpe):
    prompt = Template("{S} went to the store").fill(S="John")  # "John" without a space is four byte tokens
    assert spans_of(prompt, bpe) == [("S", (0, 1, 2, 3)), ("went to the store", (4, 5, 6, 7)), (LAST_TOKEN, (7,))]


def test_a_whitespace_only_token_goes_to_the_piece_of_its_first_character(bpe):
    # Two spaces: the byte-level pre-tokenizer splits them into " " and " and"; the lone " " starts in
    # the literal "  and ", so it joins the column "and".
    prompt = Template("When {IO}  and {S} went").fill(IO="Mary", S="John")
    assert [bpe.decode([i]) for i in bpe(prompt.text)["input_ids"]] == ["When", " Mary", " ", " and", " John", " went"]
    assert spans_of(prompt, bpe)[1:4] == [("IO", (1,)), ("and", (2, 3)), ("S", (4,))]
    # In a whitespace-only literal the lone " " belongs to no column (and no slot).
    prompt = Template("When {IO}  {S} went").fill(IO="Mary", S="John")
    assert spans_of(prompt, bpe) == [("When", (0,)), ("IO", (1,)), ("S", (3,)), ("went", (4,)), (LAST_TOKEN, (4,))]


def test_a_trailing_space_is_the_last_token_but_in_no_column(bpe):
    prompt = Template("When {IO} went to the {PLACE} ").fill(IO="Mary", PLACE="store")
    assert spans_of(prompt, bpe) == [
        ("When", (0,)), ("IO", (1,)), ("went to the", (2, 3, 4)), ("PLACE", (5,)), (LAST_TOKEN, (6,))
    ]  # fmt: skip


def test_a_slot_merged_with_its_neighbour_is_refused_with_the_tokens(bpe):
    template = Template("When {NAME}s went to the store")
    assert dict(spans_of(template.fill(NAME="Mary"), bpe))["NAME"] == (1,)  # " Mary" + "s": a boundary exists
    with pytest.raises(PromptError) as err:
        template.fill(NAME="John").spans(bpe)  # " Johns" is one token
    message = str(err.value)
    assert "slot NAME ('John')" in message and "' Johns'" in message and "position 1" in message
    assert "['When', ' Johns', ' went', ' to', ' the', ' store']" in message
    assert "Put a space between {NAME} and its neighbour" in message
    assert repr(template.text) in message and "'When Johns went to the store'" in message


# --- spans: tokens that come from no character ---------------------------------------------------------------


def test_a_bos_token_makes_a_leading_column(bos):
    prompt = Template("When {IO} and {S} went to the store").fill(IO="Maximilian", S="John")
    assert bos(prompt.text)["input_ids"][0] == 1  # the BOS really is there
    assert spans_of(prompt, bos) == [
        ("<s>", (0,)),
        ("When", (1,)),
        ("IO", (2, 3, 4)),
        ("and", (5,)),
        ("S", (6,)),
        ("went to the store", (7, 8, 9, 10)),
        (LAST_TOKEN, (10,)),
    ]


def test_an_eos_token_makes_a_trailing_column_and_is_the_last_token():
    eos = byte_level(processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 2)]))
    prompt = Template("When {IO} went").fill(IO="Mary")
    assert spans_of(prompt, eos) == [("When", (0,)), ("IO", (1,)), ("went", (2,)), ("</s>", (3,)), (LAST_TOKEN, (3,))]


def test_an_added_token_does_not_take_a_literal_label(bos):
    # The text "<s>" is itself the added token, so it has characters and is the literal's; the BOS yields.
    prompt = Template("<s> {IO} went").fill(IO="Mary")
    assert spans_of(prompt, bos) == [("<s> (2)", (0,)), ("<s>", (1,)), ("IO", (2,)), ("went", (3,)), (LAST_TOKEN, (3,))]


@pytest.mark.parametrize("added", [0, 1])
def test_an_empty_token_amid_the_text_joins_the_piece_where_it_stands(added):
    # "When Mary": ids 5 (When), 6 (an empty token at 5, added by the tokenizer or not), 7 (Mary).
    canned = Canned({"When Mary": ([5, 6, 7], [(0, 4), (5, 5), (5, 9)], [0, added, 0])})
    prompt = Template("When {IO}").fill(IO="Mary")
    assert spans_of(prompt, canned) == [("When", (0,)), ("IO", (1, 2)), (LAST_TOKEN, (2,))]


def test_an_empty_leading_token_the_tokenizer_does_not_mark_as_added_is_no_column():
    canned = Canned({"When Mary": ([9, 5, 7], [(0, 0), (0, 4), (5, 9)], [0, 0, 0])})
    prompt = Template("When {IO}").fill(IO="Mary")
    assert spans_of(prompt, canned) == [("When", (0, 1)), ("IO", (2,)), (LAST_TOKEN, (2,))]


# --- spans: refusals -----------------------------------------------------------------------------------------


def test_a_slot_without_tokens_is_refused():
    tokenizer = dropping("~")
    with pytest.raises(PromptError, match=r"slot B \('~'\) \(characters 2-3\) has no tokens") as err:
        Template("a {B} b").fill(B="~").spans(tokenizer)
    assert "['a', 'b']" in str(err.value) and "'a {B} b'" in str(err.value)


def test_a_literal_without_tokens_is_refused():
    with pytest.raises(PromptError, match=r"the text ' ~ ' \(characters 1-4\) has no tokens"):
        Template("{A} ~ {B}").fill(A="a", B="b").spans(dropping("~"))


def test_a_slow_tokenizer_is_refused():
    slow = Slow()
    assert not slow.is_fast
    with pytest.raises(PromptError, match="need a fast tokenizer .* Slow is not one"):
        Template("a {B}").fill(B="b").spans(slow)


# --- columns -------------------------------------------------------------------------------------------------


def test_columns_of_prompts_of_one_template(tokenizer):
    prompts = [IOI.fill(IO="Mary", S1="John", PLACE="store", S2="John"),
               IOI.fill(IO="Tom", S1="Anna", PLACE="the park", S2="Anna")]  # fmt: skip
    assert columns(prompts, tokenizer) == [
        "When", "IO", "and", "S1", "went to the", "PLACE", ",", "S2", "gave a drink to", LAST_TOKEN
    ]  # fmt: skip


def test_columns_refuses_prompts_of_different_templates(tokenizer):
    other = Template("After {IO} and {S1} arrived at the {PLACE} , {S2} gave a drink to")
    prompts = [IOI.fill(IO="Mary", S1="John", PLACE="store", S2="John"),
               other.fill(IO="Mary", S1="John", PLACE="store", S2="John")]  # fmt: skip
    with pytest.raises(PromptError, match="different templates") as err:
        columns(prompts, tokenizer)
    assert repr(IOI.text) in str(err.value) and repr(other.text) in str(err.value) and "prompt 1" in str(err.value)


@pytest.mark.parametrize("prompts", [[], "When Mary", IOI.fill(IO="Mary", S1="John", PLACE="store", S2="John")])
def test_columns_needs_a_list_of_prompts(tokenizer, prompts):
    with pytest.raises(PromptError, match="non-empty list of Prompts"):
        columns(prompts, tokenizer)


def test_columns_refuses_a_plain_string_among_prompts(tokenizer):
    with pytest.raises(PromptError, match=r"prompt 1 is 'When Tom', not a Prompt"):
        columns([IOI.fill(IO="Mary", S1="John", PLACE="store", S2="John"), "When Tom"], tokenizer)


def test_columns_checks_every_prompt(bpe):
    template = Template("When {NAME}s went")
    with pytest.raises(PromptError, match="merges"):
        columns([template.fill(NAME="Mary"), template.fill(NAME="John")], bpe)


def test_columns_refuses_prompts_whose_added_tokens_differ():
    # A tokenizer that adds a BOS to one prompt and not to the other: the columns would not line up.
    canned = Canned(
        {"When Mary": ([1, 5, 7], [(0, 0), (0, 4), (5, 9)], [1, 0, 0]), "When John": ([5, 8], [(0, 4), (5, 9)], [0, 0])}
    )
    template = Template("When {IO}")
    with pytest.raises(PromptError, match=r"tokenize to different columns, \['<1>', 'When', 'IO', 'last token'\]"):
        columns([template.fill(IO="Mary"), template.fill(IO="John")], canned)


# --- align ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source, target, mode, expected",
    [
        ((3, 4), (7, 8), "all", ((3, 4), (7, 8))),
        ((3, 4, 5), (7, 8), "all", ((4, 5), (7, 8))),
        ((3,), (6, 7, 8), "all", ((3,), (8,))),
        ((3, 4, 5), (7, 8), "last", ((5,), (8,))),
        ((3,), (6, 7, 8), "last", ((3,), (8,))),
        ((), (1, 2), "all", ((), ())),
        ((1, 2), (), "last", ((), ())),
        (np.array([2, 3]), [5, 6, 7], "all", ((2, 3), (6, 7))),
    ],
)
def test_align_pairs_positions_from_the_last_token(source, target, mode, expected):
    got = align(source, target, mode)
    assert got == expected
    assert all(type(p) is int for side in got for p in side)


def test_align_defaults_to_all():
    assert align((1, 2, 3), (4, 5, 6)) == ((1, 2, 3), (4, 5, 6))


@pytest.mark.parametrize("mode", ["first", "ALL", None, 1])
def test_align_refuses_an_unknown_mode(mode):
    with pytest.raises(SettingsError, match=f"'all' .* or 'last' .*got {mode!r}"):
        align((1,), (2,), mode)
