"""Model-based transforms (paraphrase, back-translation, back-transcription) behind one interface.

A `Rewriter` maps a batch of texts and a seed to their rewrites. Two implementations:
- `SynonymParaphraser`: offline, deterministic per seed; words of the shipped synonym table
  (synonyms.py) replaced by another word of their group.
- `generation_rewriter(generate, templates)`: each text sent through a generation function
  `generate(list[str]) -> list[str]` once per template (paraphrase: one instruction;
  back-translation: into Spanish, then back into English). `generate` is any user function,
  a lloglin LM (`lm_generation`, through lloglin.inference.generate) or an OpenAI-compatible
  chat-completions endpoint (`openai_chat`, stdlib HTTP).
Back-transcription (text -> speech -> text) has no offline implementation: a user function
`fn(list[str]) -> list[str]` that runs TTS then ASR is the rewriter.

`rewrite_records` applies a rewriter to the declared fields of a batch of records, each distinct
text once, and with an embedding function (`char_ngram_tfidf`, or a user's
`embed(list[str]) -> [N, D]` array) keeps a record only if each of its rewrites has cosine
similarity >= threshold with its original (the paper's filter; threshold 0.7).
"""

import concurrent.futures
import json
import os
import re
import urllib.error
import urllib.request
import zlib
from typing import Callable, Sequence

import ml_collections
import numpy as np

from lloglin.data import make_tokenizer
from lloglin.evals.report import progress
from lloglin.evals.rewordbench.synonyms import SYNONYM_GROUPS
from lloglin.evals.rewordbench.transforms import Transform
from lloglin.evals.userfn import import_function
from lloglin.inference.generate import generate as lm_generate
from lloglin.training.loading import load_model

Generate = Callable[[list[str]], list[str]]
Rewriter = Callable[[list[str], int], list[str]]
Embed = Callable[[list[str]], np.ndarray]

PARAPHRASE_TEMPLATES = (
    "Paraphrase the following text. Keep its meaning and everything it says; change the wording. "
    "Reply with the paraphrase only.\n\n{text}",)
BACK_TRANSLATION_TEMPLATES = (
    "Translate the following text into Spanish. Reply with the translation only.\n\n{text}",
    "Translate the following text into English. Reply with the translation only.\n\n{text}")


class SynonymParaphraser:
  """Each word of the synonym table replaced, with probability `rate`, by another word of its
  group drawn uniformly (capitalisation kept); a text's rewrite depends on (seed, text) only."""

  def __init__(self, groups: Sequence[Sequence[str]] = SYNONYM_GROUPS, rate: float = 0.5):
    if not 0 < rate <= 1:
      raise ValueError(f"synonym rate={rate}; expected a probability in (0, 1]")
    self.rate = rate
    self.table = {w: [v for v in group if v != w] for group in groups for w in group}

  def __call__(self, texts: list[str], seed: int) -> list[str]:
    return [self._one(text, np.random.default_rng([seed, zlib.crc32(text.encode())]))
            for text in texts]

  def _one(self, text: str, rng) -> str:

    def swap(match):
      word = match[0]
      options = self.table.get(word.lower())
      if not options or rng.random() >= self.rate:
        return word
      new = str(rng.choice(options))
      return new.upper() if word.isupper() and len(word) > 1 else (
          new.capitalize() if word[0].isupper() else new)

    return re.sub(r"[A-Za-z]+", swap, text)


def generation_rewriter(generate: Generate, templates: Sequence[str]) -> Rewriter:
  """A rewriter sending each text through `generate` once per template ("{text}" in it)."""

  def rewrite(texts: list[str], seed: int) -> list[str]:
    del seed  # the generation function has its own sampling settings
    for template in templates:
      texts = checked_texts(generate([template.format(text=t) for t in texts]), len(texts),
                            "the generation function")
    return texts

  return rewrite


def checked_texts(out, n: int, what: str) -> list[str]:
  """`out` if it is a list of n strings (a ValueError naming `what` otherwise)."""
  if not isinstance(out, (list, tuple)) or len(out) != n or not all(isinstance(t, str)
                                                                    for t in out):
    raise ValueError(f"{what} returned {type(out).__name__} {str(out)[:80]!r}; expected a list "
                     f"of {n} strings, one per input")
  return list(out)


def openai_chat(url: str, model: str, *, api_key_env: str = "", timeout: float = 120.0,
                temperature: float = 0.0, max_tokens: int = 1024,
                workers: int = 4) -> Generate:
  """A generation function calling an OpenAI-compatible endpoint: POST {url}/chat/completions
  with one user message per prompt (`workers` requests at a time). The bearer token, if any, is
  read from the environment variable `api_key_env`."""
  if not url.startswith(("http://", "https://")):
    raise ValueError(f"paraphrase_url={url!r}: expected an http:// or https:// base URL such as "
                     "http://127.0.0.1:8000/v1")
  endpoint = url.rstrip("/") + "/chat/completions"
  headers = {"Content-Type": "application/json"}
  if api_key_env:
    if not os.environ.get(api_key_env):
      raise ValueError(f"api_key_env={api_key_env!r}: that environment variable is not set")
    headers["Authorization"] = f"Bearer {os.environ[api_key_env]}"

  def complete(prompt: str) -> str:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": prompt}],
                       "temperature": temperature, "max_tokens": max_tokens}).encode()
    request = urllib.request.Request(endpoint, data=body, headers=headers, method="POST")
    try:
      with urllib.request.urlopen(request, timeout=timeout) as response:
        reply = json.load(response)
    except urllib.error.HTTPError as e:
      raise RuntimeError(f"{endpoint}: HTTP {e.code} {e.reason}: {e.read()[:300]!r}") from e
    except (urllib.error.URLError, TimeoutError) as e:
      raise RuntimeError(f"{endpoint}: no reply ({e})") from e
    try:
      return reply["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError) as e:
      raise ValueError(f"{endpoint}: not a chat-completions reply: {str(reply)[:300]}") from e

  def generate(prompts: list[str]) -> list[str]:
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
      return list(progress(pool.map(complete, prompts), desc=f"rewordbench: {endpoint}",
                           total=len(prompts)))

  return generate


def lm_generation(checkpoint: str, *, max_new_tokens: int, temperature: float = 0.0,
                  seed: int = 0, batch_size: int = 16) -> Generate:
  """A generation function from a lloglin LM (a training workdir or export): each prompt as
  [BOS] + tokens (cut from the left to leave room for max_new_tokens), decoded on the caches up
  to EOS or max_new_tokens."""
  model, config = load_model(checkpoint)
  if config.get("task", "lm") != "lm":
    raise ValueError(f"paraphrase_lm={checkpoint!r} holds a model of task {config['task']!r}; "
                     "expected a language model (task 'lm')")
  tokenizer = make_tokenizer(ml_collections.ConfigDict(config["data"]))
  if tokenizer is None:
    raise ValueError(f"paraphrase_lm={checkpoint!r}: its data has no text tokenizer")
  bos = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
  room = model.cfg.max_seq_len - max_new_tokens - len(bos)
  if room < 1:
    raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the LM's "
                     f"max_seq_len={model.cfg.max_seq_len}")

  def generate(prompts: list[str]) -> list[str]:
    out = []
    for start in progress(range(0, len(prompts), batch_size), desc="rewordbench: LM rewrites"):
      rows = [bos + tokenizer.encode(p)[-room:] for p in prompts[start:start + batch_size]]
      out += [tokenizer.decode(t) for t in lm_generate(
          model, rows, max_new_tokens, temperature=temperature, seed=seed, impl="plain",
          stop_tokens=[] if tokenizer.eos_id is None else [tokenizer.eos_id])]
    return out

  return generate


def char_ngram_tfidf(texts: list[str], *, n: int = 3, dim: int = 4096) -> np.ndarray:
  """[N, dim] unit rows: TF-IDF of the byte n-grams of each (lower-cased) text, hashed into dim
  buckets, with the document frequencies of `texts` itself. An offline stand-in for a sentence
  embedding model: it measures surface overlap, not meaning."""
  counts_ND = np.zeros((len(texts), dim))
  for i, text in enumerate(texts):
    b = np.frombuffer(f" {text.lower()} ".encode(), np.uint8).astype(np.uint64)
    grams = sum(b[k:len(b) - n + 1 + k] << np.uint64(8 * (n - 1 - k)) for k in range(n))
    buckets = (grams * np.uint64(2654435761)) % np.uint64(2**32) % np.uint64(dim)
    counts_ND[i] = np.bincount(buckets.astype(np.int64), minlength=dim)
  idf_D = np.log((1 + len(texts)) / (1 + (counts_ND > 0).sum(0))) + 1
  v_ND = counts_ND * idf_D
  return v_ND / np.maximum(np.linalg.norm(v_ND, axis=1, keepdims=True), 1e-12)


def cosine_similarity(originals: list[str], rewrites: list[str], embed: Embed) -> np.ndarray:
  """[N] cosine similarity of each original with its rewrite (one embed call for both lists)."""
  v = np.asarray(embed(list(originals) + list(rewrites)), np.float64)
  if v.ndim != 2 or v.shape[0] != 2 * len(originals):
    raise ValueError(f"the embedding function returned shape {v.shape}; expected "
                     f"[{2 * len(originals)}, D], one row per text")
  a, b = v[:len(originals)], v[len(originals):]
  return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1),
                                     1e-12)


def rewrite_records(transform: Transform, records: list[dict], rewriter: Rewriter, seed: int, *,
                    embed: Embed | None = None, threshold: float = 0.0,
                    chunk: int = 256) -> list[dict | None]:
  """The records with `transform.fields` rewritten; None for a record with a rewrite whose
  similarity to its original is below `threshold` (with `embed`; threshold 0: no filter)."""
  texts = list(dict.fromkeys(r[f] for r in records for f in transform.fields))
  rewrites = checked_texts(rewriter(texts, seed), len(texts), f"the {transform.name} rewriter")
  new = dict(zip(texts, rewrites))
  keep = dict.fromkeys(texts, True)
  if embed is not None and threshold > 0:
    for start in range(0, len(texts), chunk):  # the IDF of char_ngram_tfidf: per chunk
      part = texts[start:start + chunk]
      sims = cosine_similarity(part, [new[t] for t in part], embed)
      keep.update(zip(part, sims >= threshold))
  return [{**r, **{f: new[r[f]] for f in transform.fields}}
          if all(keep[r[f]] for f in transform.fields) else None for r in records]


def default_names(cfg) -> list[str]:
  """The model-based transforms that `cfg` (config.rewordbench.paraphrase) can run."""
  names = ["paraphrase"]
  if cfg.backend != "synonym":
    names.append("back_translation")
  if cfg.transcriber:
    names.append("back_transcription")
  return names


def make_rewriters(cfg, names: list[str]) -> dict[str, Rewriter]:
  """{name: rewriter} for the model-based transforms `names`, from config.rewordbench.paraphrase
  (one generation function shared by paraphrase and back-translation)."""
  out, generate = {}, None
  for name in names:
    if name == "back_transcription":
      if not cfg.transcriber:
        raise ValueError("back_transcription needs rewordbench.paraphrase.transcriber, a "
                         "'module:function' mapping a list of texts to their TTS -> ASR round trip")
      fn = import_function(cfg.transcriber, what="rewordbench.paraphrase.transcriber")
      out[name] = lambda texts, seed, fn=fn: fn(texts)
    elif cfg.backend == "synonym":
      if name == "back_translation":
        raise ValueError("back_translation needs a generation backend: set "
                         "rewordbench.paraphrase.backend to 'http', 'lm' or 'module:function' "
                         "(it is 'synonym')")
      out[name] = SynonymParaphraser(rate=cfg.synonym_rate)
    else:
      generate = generate or _generate(cfg)
      out[name] = generation_rewriter(generate, PARAPHRASE_TEMPLATES if name == "paraphrase"
                                      else BACK_TRANSLATION_TEMPLATES)
  return out


def make_embed(cfg) -> Embed | None:
  """The similarity filter's embedding function (None when the filter is off)."""
  if cfg.similarity_threshold <= 0:
    return None
  if cfg.embedding == "char_ngram_tfidf":
    return char_ngram_tfidf
  return import_function(cfg.embedding, what="rewordbench.paraphrase.embedding")


def _generate(cfg) -> Generate:
  if cfg.backend == "http":
    return openai_chat(cfg.url, cfg.model, api_key_env=cfg.api_key_env,
                       max_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                       workers=cfg.workers)
  if cfg.backend == "lm":
    return lm_generation(cfg.lm, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature)
  return import_function(cfg.backend, what="rewordbench.paraphrase.backend")
