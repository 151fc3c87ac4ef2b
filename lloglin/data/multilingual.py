"""A synthetic multilingual world: one latent story generator written in two languages, plus
arithmetic in digits and in number words (the toy of the semantic-hub experiments, arXiv
2411.04986; docs/suites/semantic_hub.md).

A latent sentence is (subject, its adjective, verb, object, its adjective). A story is 2 to 6
sentences with one mood: every adjective is positive, or every one negative (the adjectives come in
antonym pairs, good / bad, ...); the subject often continues the previous object; verbs choose
their objects (`eats` food, `helps` someone animate). It is written in

  dominant  English-like, subject-verb-object, adjective before its noun:
            the happy cat sees the warm apple .
  minor     subject-object-verb, adjective after its noun, postpositions wa / ko, end ne; its
            words (made-up syllables) share nothing with the dominant vocabulary:
            bamu tiko wa rapi genu ko sivo ne

so a minor sentence is a dominant one word for word, reordered (`render`, `parse`). Arithmetic
"c = a + b" (a, b in 0..9) is written in digits, `1 2 = 5 + 7 ;`, or in dominant number words,
`twelve equals five plus seven .`.

Training documents (`data.source = "multilingual"`, settings `data.multilingual`): a story in
the minor language with probability minor_share, else in the dominant one; arithmetic_share of the
documents are arithmetic (half digits, half words), parallel_share are stories whose every sentence
is followed by its translation (the only parallel text), switch_share are code-switched stories
(each sentence in either language, at even odds: the story's mood and topic carry across).
Document i of a split is a pure function of (seed, split, i). The tokenizer is word-level over
this vocabulary (`world_tokenizer`), so each word is one token and the logit lens reads words.
`parallel_pairs` draws evaluation pairs that are translations by construction.
"""

from typing import NamedTuple

import numpy as np

# Dominant-language content words. Adjectives: POSITIVE[i] and NEGATIVE[i] are antonyms.
ANIMATE = ("cat", "dog", "bird", "fox", "horse", "mouse", "bear", "wolf", "king", "queen",
           "child", "farmer", "baker", "sailor")
INANIMATE = ("stone", "river", "house", "tree", "boat", "hill")
FOOD = ("apple", "bread", "cake", "honey", "corn")
NOUNS = ANIMATE + INANIMATE + FOOD
POSITIVE = ("good", "happy", "bright", "kind", "warm", "brave", "calm", "sweet")
NEGATIVE = ("bad", "sad", "dark", "cruel", "cold", "weak", "angry", "bitter")
ADJECTIVES = POSITIVE + NEGATIVE
VERBS_ANY_OBJECT = ("sees", "likes", "finds", "carries", "watches", "visits", "paints")
VERBS_ANIMATE_OBJECT = ("helps", "meets", "follows", "fears")
VERBS = VERBS_ANY_OBJECT + VERBS_ANIMATE_OBJECT + ("eats",)
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen",
                "seventeen", "eighteen")
DOMINANT_FUNCTION = ("the", ".", "plus", "equals")
MINOR_FUNCTION = ("wa", "ko", "ne")  # subject marker, object marker, sentence end
DIGIT_SYMBOLS = tuple("0123456789") + ("+", "=", ";")
SPECIALS = ("<bos>", "<eos>")
LANGUAGES = ("dominant", "minor")
ARITHMETIC_FORMS = ("digits", "words")
_CONTENT = NOUNS + ADJECTIVES + VERBS


def _minor_words(n: int) -> tuple[str, ...]:
  """n distinct two-syllable words (consonant-vowel syllables), the same on every machine."""
  syllables = [c + v for c in "bdgklmnprstvz" for v in "aeiou"]
  words = tuple(syllables[(3 * k + 1) % 65] + syllables[(11 * k + 7) % 65] for k in range(n))
  assert len(set(words)) == n and not set(words) & set(NUMBER_WORDS + _CONTENT), words
  return words


TO_MINOR = dict(zip(_CONTENT, _minor_words(len(_CONTENT))))
TO_DOMINANT = {m: d for d, m in TO_MINOR.items()}
# Every word of the world by type, in vocabulary order after the SPECIALS.
WORD_TYPES = {
    "dominant": DOMINANT_FUNCTION + _CONTENT + NUMBER_WORDS,
    "minor": MINOR_FUNCTION + tuple(TO_MINOR[w] for w in _CONTENT),
    "digits": DIGIT_SYMBOLS,
}
VOCABULARY = SPECIALS + sum(WORD_TYPES.values(), ())
SENTIMENT = {**{w: 1 for w in POSITIVE}, **{w: -1 for w in NEGATIVE},
             **{TO_MINOR[w]: 1 for w in POSITIVE}, **{TO_MINOR[w]: -1 for w in NEGATIVE}}

_STREAM = 0x4D4C  # keeps these seeds apart from the shuffling and the other sources' seeds
_SPLIT_CODES = {"train": 0, "validation": 1, "pairs": 2}


class Sentence(NamedTuple):
  """A latent sentence: indices into NOUNS, ADJECTIVES, VERBS."""
  subject: int
  subject_adjective: int
  verb: int
  object: int
  object_adjective: int


def render(sentence: Sentence, language: str) -> str:
  """The sentence written in `language` ('dominant' | 'minor')."""
  s, sa, v, o, oa = (NOUNS[sentence.subject], ADJECTIVES[sentence.subject_adjective],
                     VERBS[sentence.verb], NOUNS[sentence.object],
                     ADJECTIVES[sentence.object_adjective])
  if language == "dominant":
    return f"the {sa} {s} {v} the {oa} {o} ."
  if language == "minor":
    m = TO_MINOR
    return f"{m[s]} {m[sa]} wa {m[o]} {m[oa]} ko {m[v]} ne"
  raise ValueError(f"language={language!r}; expected one of {LANGUAGES}")


def parse(text: str, language: str) -> Sentence:
  """The latent sentence that `text` writes in `language` (the inverse of `render`)."""
  words = text.split()
  if language == "dominant":
    shape_ok = len(words) == 8 and words[0] == words[4] == "the" and words[7] == "."
    sa, s, v, oa, o = (words[i] for i in (1, 2, 3, 5, 6)) if shape_ok else [""] * 5
  elif language == "minor":
    shape_ok = len(words) == 8 and (words[2], words[5], words[7]) == ("wa", "ko", "ne")
    s, sa, o, oa, v = ((TO_DOMINANT.get(words[i], "") for i in (0, 1, 3, 4, 6)) if shape_ok
                       else [""] * 5)
  else:
    raise ValueError(f"language={language!r}; expected one of {LANGUAGES}")
  try:
    return Sentence(NOUNS.index(s), ADJECTIVES.index(sa), VERBS.index(v), NOUNS.index(o),
                    ADJECTIVES.index(oa))
  except ValueError:
    raise ValueError(f"text={text!r} is not a {language} sentence of the world") from None


def render_sum(a: int, b: int, form: str) -> str:
  """The sum a + b = c written "c = a + b" in `form` ('digits' | 'words')."""
  if not (0 <= a <= 9 and 0 <= b <= 9):
    raise ValueError(f"a={a}, b={b}; expected digits 0..9")
  if form == "digits":
    return f"{' '.join(str(a + b))} = {a} + {b} ;"
  if form == "words":
    return f"{NUMBER_WORDS[a + b]} equals {NUMBER_WORDS[a]} plus {NUMBER_WORDS[b]} ."
  raise ValueError(f"form={form!r}; expected one of {ARITHMETIC_FORMS}")


def _objects(verb: str, subject: int) -> tuple[int, ...]:
  """The nouns `verb` takes as its object after `subject`."""
  if verb == "eats":
    return tuple(NOUNS.index(f) for f in FOOD)
  pool = len(ANIMATE) if verb in VERBS_ANIMATE_OBJECT else len(NOUNS)
  return tuple(i for i in range(pool) if i != subject)


_OBJECTS = {(v, s): _objects(VERBS[v], s) for v in range(len(VERBS)) for s in range(len(ANIMATE))}


def random_sentence(rng: np.random.Generator, mood: int, subject: int | None = None) -> Sentence:
  """A latent sentence with adjectives of `mood` (+1 positive, -1 negative); the subject is drawn
  from the animate nouns unless given; the object suits the verb and differs from the subject."""
  draws = rng.integers(1 << 30, size=5)  # one call: the generator's per-call cost dominates
  subject = int(draws[0] % len(ANIMATE)) if subject is None else subject
  verb = int(draws[1] % len(VERBS))
  objects = _OBJECTS[verb, subject]
  offset = 0 if mood > 0 else len(POSITIVE)
  return Sentence(subject, offset + int(draws[2] % len(POSITIVE)), verb,
                  objects[draws[3] % len(objects)], offset + int(draws[4] % len(POSITIVE)))


def random_story(rng: np.random.Generator, num_sentences: int, mood: int) -> list[Sentence]:
  """Sentences of one mood; each later subject continues the previous object (when animate)
  with probability 0.6."""
  story = [random_sentence(rng, mood)]
  for _ in range(num_sentences - 1):
    previous = story[-1].object
    keep = previous < len(ANIMATE) and rng.random() < 0.6
    story.append(random_sentence(rng, mood, previous if keep else None))
  return story


def check_settings(cfg) -> None:
  """The `data.multilingual` settings, each named with its value when out of range."""
  shares = ("arithmetic_share", "parallel_share", "switch_share")
  for name in ("minor_share",) + shares:
    if not 0 <= cfg[name] <= 1:
      raise ValueError(f"data.multilingual.{name}={cfg[name]}; expected a share in [0, 1]")
  if sum(cfg[name] for name in shares) > 1:
    raise ValueError(f"data.multilingual.{' + '.join(shares)} = "
                     f"{sum(cfg[name] for name in shares):g}; expected at most 1")
  if not 1 <= cfg.min_sentences <= cfg.max_sentences:
    raise ValueError(f"data.multilingual.min_sentences={cfg.min_sentences}, max_sentences="
                     f"{cfg.max_sentences}; expected 1 <= min_sentences <= max_sentences")
  for name in ("num_train_documents", "num_val_documents"):
    if cfg[name] < 1:
      raise ValueError(f"data.multilingual.{name}={cfg[name]}; expected at least 1")


def document(cfg, *, split: str, seed: int, index: int) -> str:
  """Document `index` of `split`: a story in one language, a parallel or code-switched story, or
  arithmetic."""
  rng = np.random.default_rng([_STREAM, seed, _SPLIT_CODES[split], index])
  n = int(rng.integers(cfg.min_sentences, cfg.max_sentences + 1))
  kind = rng.random()
  if kind < cfg.arithmetic_share:
    form = ARITHMETIC_FORMS[int(rng.integers(2))]
    return " ".join(render_sum(int(rng.integers(10)), int(rng.integers(10)), form)
                    for _ in range(n))
  story = random_story(rng, n, mood=1 if rng.random() < 0.5 else -1)
  if kind < cfg.arithmetic_share + cfg.parallel_share:
    order = LANGUAGES if rng.random() < 0.5 else LANGUAGES[::-1]
    return " ".join(render(s, lang) for s in story for lang in order)
  if kind < cfg.arithmetic_share + cfg.parallel_share + cfg.switch_share:
    return " ".join(render(s, LANGUAGES[int(rng.integers(2))]) for s in story)
  language = "minor" if rng.random() < cfg.minor_share else "dominant"
  return " ".join(render(s, language) for s in story)


def documents(cfg, *, split: str, seed: int) -> list[str]:
  """Every document of `split` ('train' | 'validation')."""
  check_settings(cfg)
  count = cfg.num_train_documents if split == "train" else cfg.num_val_documents
  return [document(cfg, split=split, seed=seed, index=i) for i in range(count)]


def parallel_pairs(kind: str, count: int, *, seed: int) -> list[tuple[str, str]]:
  """`count` evaluation pairs that mean the same by construction: kind 'language' gives
  (dominant, minor) renderings of one latent sentence (either mood), 'arithmetic' (digits,
  words) of one sum. Drawn from a stream of their own (no training document's)."""
  rng = np.random.default_rng([_STREAM, seed, _SPLIT_CODES["pairs"]])
  out = []
  for _ in range(count):
    if kind == "language":
      s = random_sentence(rng, mood=1 if rng.random() < 0.5 else -1)
      out.append((render(s, "dominant"), render(s, "minor")))
    elif kind == "arithmetic":
      a, b = (int(x) for x in rng.integers(10, size=2))
      out.append((render_sum(a, b, "digits"), render_sum(a, b, "words")))
    else:
      raise ValueError(f"kind={kind!r}; expected 'language' or 'arithmetic'")
  return out


def mood_pairs(count: int, language: str, *, seed: int) -> list[tuple[str, str]]:
  """`count` (positive, negative) sentences in `language` that differ only in their adjectives
  (each replaced by its antonym): the two prompt sets of a mood steering vector."""
  rng = np.random.default_rng([_STREAM, seed, _SPLIT_CODES["pairs"], 1])
  out = []
  for _ in range(count):
    s = random_sentence(rng, mood=1)
    flip = lambda a: a + len(POSITIVE)
    out.append((render(s, language), render(s._replace(
        subject_adjective=flip(s.subject_adjective), object_adjective=flip(s.object_adjective)),
        language)))
  return out


def before_object_adjective(text: str, language: str) -> str:
  """A sentence's words up to its object's adjective, which would come next (dominant: "the happy
  cat sees the", minor: "bamu tiko wa rapi"): a prompt whose next word carries the mood."""
  if language not in LANGUAGES:
    raise ValueError(f"language={language!r}; expected one of {LANGUAGES}")
  words = text.split()
  parse(text, language)  # a sentence of the world
  return " ".join(words[:5 if language == "dominant" else 4])
