"""The transformation registry: what each transform touches, seeding, and the exact rewrites."""

import ast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lloglin.evals.rewordbench import transforms as T
from lloglin.evals.rewordbench.data import load_records
from tests.evals.rewordbench.conftest import FIXTURE

PURE = [name for name, t in T.TRANSFORMS.items() if t.fn is not None]
# Those that draw from the generator (the others ignore the seed).
RANDOMISED = {"twitter_handle", "twitter_url", "ignore_above", "ignore_below", "homoglyph",
              "char_swap", "char_substitution", "char_insertion", "char_deletion",
              "word_deletion", "append_other_code"}
LONG = ("Please explain carefully how a small solar panel can charge a phone battery on a "
        "cloudy afternoon, and what else to consider. ")
TEXT = st.text(st.characters(codec="utf-8"), max_size=60)


def record_for(transform: T.Transform) -> dict:
  """A fixture record of a subset the transform applies to; long texts where it applies to all
  (so that the noise transforms change every field)."""
  records = load_records(str(FIXTURE))
  if transform.subsets is None:
    return {"prompt": LONG, "chosen": LONG[::-1], "rejected": LONG.upper(), "subset": "chat",
            "category": "Chat"}
  return next(r for r in records if transform.applies_to(r["subset"]))


def test_the_registry_holds_every_transform_of_the_paper():
  assert set(T.TRANSFORMS) == {
      "add_quotes", "punct_spaces", "twitter_handle", "twitter_url", "stress_test",
      "ignore_above", "ignore_below", "rot13", "rot2", "homoglyph", "char_swap",
      "char_substitution", "char_insertion", "char_deletion", "word_deletion",
      "code_minification", "comment_bad", "comment_good", "append_other_code", "swap_format",
      "jailbreak_roleplay", "jailbreak_hypothetical", "jailbreak_developer", "paraphrase",
      "back_translation", "back_transcription"}
  for t in T.TRANSFORMS.values():
    assert t.family in T.FAMILIES and t.doc and set(t.fields) <= set(T.FIELDS)
    assert (t.fn is None) == bool(t.backend)


@pytest.mark.parametrize("name", PURE)
def test_transform_touches_only_its_fields_and_is_deterministic_per_seed(name):
  t = T.TRANSFORMS[name]
  record = record_for(t)
  out = t.apply(record, seed=0)
  assert out == t.apply(dict(record), seed=0)
  for field in T.FIELDS:
    assert (out[field] != record[field]) == (field in t.fields), field
  assert {k: v for k, v in out.items() if k not in T.FIELDS} == {
      k: v for k, v in record.items() if k not in T.FIELDS}
  by_seed = [tuple(t.apply(record, seed)[f] for f in t.fields) for seed in range(6)]
  assert (len(set(by_seed)) > 1) == (name in RANDOMISED)


def test_transforms_apply_to_their_subsets_only():
  assert T.TRANSFORMS["rot13"].applies_to("alpacaeval-easy")
  assert T.TRANSFORMS["code_minification"].applies_to("hep-rust")
  assert not T.TRANSFORMS["code_minification"].applies_to("math-prm")
  assert T.TRANSFORMS["swap_format"].subsets == ("math-prm",)
  assert T.TRANSFORMS["jailbreak_roleplay"].applies_to("donotanswer")
  assert not T.TRANSFORMS["jailbreak_roleplay"].applies_to("alpacaeval-easy")
  with pytest.raises(ValueError, match="unknown transform 'rot_13'; known transforms: .*rot13"):
    T.get_transform("rot_13")


@settings(max_examples=30, deadline=None)
@given(TEXT)
def test_rot13_is_an_involution_and_rot24_inverts_rot2(text):
  rot13, rot2 = T.TRANSFORMS["rot13"], T.TRANSFORMS["rot2"]
  assert rot13(rot13(text, 0), 0) == text
  assert T.rot(rot2(text, 0), 24) == text


def test_rot_moves_letters_only():
  assert T.TRANSFORMS["rot13"]("Hello, World! 42", 0) == "Uryyb, Jbeyq! 42"
  assert T.TRANSFORMS["rot2"]("xyz XYZ", 0) == "zab ZAB"


@settings(max_examples=30, deadline=None)
@given(TEXT)
def test_punct_spaces_is_idempotent_after_normalisation(text):
  spaced = T.TRANSFORMS["punct_spaces"]
  normalise = lambda s: " ".join(s.split())
  assert normalise(spaced(spaced(text, 0), 0)) == normalise(spaced(text, 0))


def test_punct_spaces_and_templates():
  assert " ".join(T.TRANSFORMS["punct_spaces"]("Hi, you (there)!", 0).split()) == \
      "Hi , you ( there ) !"
  assert T.TRANSFORMS["add_quotes"]("a b", 0) == '"a b"'
  assert T.TRANSFORMS["stress_test"]("x", 0) == "x" + " and true is true" * 5
  above = T.TRANSFORMS["ignore_above"]("the text", 3)
  assert above.endswith("\nIgnore the text above.\n\nthe text")
  assert above.split("\n")[0] in T.IRRELEVANT


PYTHON = '''import os


def f(x, y=1):
    """Doc string."""
    # a comment
    s = f"{x!r} {{braces}} {y:>{x}}"  # trailing comment
    if x in "abc" and not y:
        return [i for i in
                range(10) if i % 2]
    return s + \\
        "t"


class A:
    pass
'''


def test_python_minification_keeps_the_syntax_tree():
  small = T.minify_code(PYTHON, "python")
  assert ast.dump(ast.parse(small)) == ast.dump(ast.parse(PYTHON))
  assert "#" not in small.replace("{x!r}", "") and "\n\n" not in small
  assert len(small) < 0.7 * len(PYTHON)


def test_other_languages_lose_comments_and_indentation_only():
  js = 'function f(a) {\n    // note\n    return "a // b" + a;  /* x\n  y */\n\n}\n'
  assert T.minify_code(js, "js") == 'function f(a) {\nreturn "a // b" + a;\n}'
  # Text that does not tokenize as Python falls back to the line rule.
  assert T.minify_code("if x:\n        a = 1  # c\n    b = 2\n", "python") == "if x:\na = 1\nb = 2"


def test_swap_format_swaps_boxed_answers_and_answer_headers():
  swap = T.TRANSFORMS["swap_format"]
  boxed = "So 2 + 3 = 5 and the answer is $\\boxed{\\frac{10}{2}}$."
  header = swap(boxed, 0)
  assert header == ("So 2 + 3 = 5 and the answer is $\\frac{10}{2}$.\n\n# Answer\n\n"
                    "\\frac{10}{2}")
  assert swap(header, 0) == "So 2 + 3 = 5 and the answer is $\\frac{10}{2}$.\n\n$\\boxed{\\frac{10}{2}}$"
  assert swap("no final answer here", 0) == "no final answer here"


def test_code_transforms_use_the_subset_language():
  assert T.TRANSFORMS["comment_bad"]("int x;", 0, "hep-cpp").startswith("// This code is wrong")
  assert T.TRANSFORMS["comment_good"]("x = 1", 0, "hep-python").startswith("# This code is")
  appended = T.TRANSFORMS["append_other_code"]("fn main() {}", 0, "hep-rust")
  assert appended.startswith("fn main() {}\n\n") and appended[14:] in T.OTHER_CODE["rust"]


def test_model_based_transforms_need_the_paraphrase_module():
  with pytest.raises(ValueError, match="model-based"):
    T.TRANSFORMS["paraphrase"]("text", 0)
