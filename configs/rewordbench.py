"""Settings of the `rewordbench` suite (lloglin/evals/rewordbench), under `rewordbench`.

  python eval.py --suite rewordbench --config configs/rewordbench.py --checkpoint RUN \
      --config.rewordbench.data_path=rewardbench.jsonl

`add_suite_config(c)` adds the suite's keys (`suite`, `rewordbench`) to any config, so that one
config can both train a model (train.py) and evaluate it (eval.py). Variants: the default (every
transform the settings can run, on all records) and `:tiny` (a few transforms on a few records:
seconds on a CPU). The transforms: docs/suites/rewordbench.md.
"""

import ml_collections


def add_suite_config(c: ml_collections.ConfigDict, *, tiny: bool = False):
  """Sets c.suite = "rewordbench" and the suite's settings c.rewordbench; returns c."""
  c.suite = "rewordbench"
  r = c.rewordbench = ml_collections.ConfigDict()
  r.data_path = ""  # a RewardBench-format .jsonl / .parquet file ("" = the synthetic world's)
  r.world_pairs = 1000  # held-out pairs of the synthetic world (data_path "")
  r.transforms = ()  # transform names (empty = every one the settings below can run)
  r.seed = 0  # the transforms' seed (and the record sample's)
  r.max_records = 0  # evaluate a random sample of this many records (0 = all)
  r.batch_size = 32  # (prompt, response) pairs per scorer call
  r.scorer = "checkpoint"  # the checkpoint's reward model, or "module:function" / "file.py:fn"
  p = r.paraphrase = ml_collections.ConfigDict()  # the model-based transforms
  p.backend = "synonym"  # synonym (offline table) | http | lm | "module:function" (a generator)
  p.synonym_rate = 0.5  # synonym: probability that a word of the table is replaced
  p.url = ""  # http: an OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1
  p.model = ""  # http: the model name sent with each request
  p.api_key_env = ""  # http: environment variable holding a bearer token ("" = none)
  p.workers = 4  # http: concurrent requests
  p.lm = ""  # lm: a lloglin LM run (workdir or export)
  p.max_new_tokens = 512  # http / lm: the longest rewrite
  p.temperature = 0.0  # http / lm: 0 = greedy
  p.transcriber = ""  # back_transcription: "module:function" running text -> TTS -> ASR -> text
  p.similarity_threshold = 0.7  # keep a rewrite only if cosine similarity >= this (0 = off)
  p.embedding = "char_ngram_tfidf"  # the filter's embedding: built-in, or "module:function"
  if tiny:  # seconds on a CPU: tests and smoke runs
    r.max_records = 16
    r.world_pairs = 64
    r.batch_size = 8
    r.transforms = ("punct_spaces", "add_quotes", "char_swap", "rot13", "paraphrase")
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg not in (None, "", "tiny"):
    raise ValueError(f"unknown variant {arg!r} of configs/rewordbench.py; valid: 'tiny'")
  return add_suite_config(ml_collections.ConfigDict(), tiny=arg == "tiny")
