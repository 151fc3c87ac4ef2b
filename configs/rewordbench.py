"""reWordBench (arXiv 2503.11751): reward models trained on the reward world
(lloglin/data/reward_world.py), standard against paraphrase-regularised, and the `rewordbench`
suite that evaluates them under meaning-preserving transforms (lloglin/evals/rewordbench).

One config per experiment: each variant trains with `python train.py --config
configs/rewordbench.py:<variant>` and evaluates with `python eval.py --suite rewordbench --config
configs/rewordbench.py:<variant> --checkpoint RUN` (train.py ignores the suite's keys):
- pretrain: the trunk as a byte-level LM on the world's texts (task lm), as the paper's reward
  models start from a pretrained LM; the others start from it with
  `--config.init_from=<its workdir>/export` (the model sections match);
- standard (the default): pointwise regression, (r(x, y) - s)^2;
- augment: regression plus the paraphrase as an extra example, + (r(x, y~) - s)^2;
- reg1, reg10: regression plus alpha (r(x, y) - r(x, y~))^2, alpha = 1 and 10 (the paper's);
  reg30 the same at alpha = 30 (beyond the paper's values: where the trend with alpha goes);
- tiny: `standard` at smoke-test size (`shrink`, which shrinks any variant), and the suite on a
  few transforms and records (seconds on a CPU).
The seed (`--config.seed=1`) draws the model's initialisation, the world and the data order; the
suite's keys live under `rewordbench` (`--config.rewordbench.data_path=rewardbench.jsonl` scores
RewardBench-format records instead of the world's held-out pairs). The transforms:
docs/suites/rewordbench.md.
"""

import ml_collections

from configs import reward
from configs.base import set_model_size, smoke_run

# variant: (consistency_alpha, augmentation)
REWARD_VARIANTS = {"standard": (0.0, False), "augment": (0.0, True), "reg1": (1.0, False),
                   "reg10": (10.0, False), "reg30": (30.0, False), "tiny": (0.0, False)}
TRAINING_VARIANTS = ("pretrain",) + tuple(REWARD_VARIANTS)


def training_config(variant: str):
  if variant not in TRAINING_VARIANTS:
    raise ValueError(f"unknown training variant {variant!r} of configs/rewordbench.py; valid: "
                     f"{list(TRAINING_VARIANTS)}")
  c = reward.get_config()
  c.reward.objective = "regression"
  c.data.source = "reward_world"
  c.data.tokenizer = "byte"
  # The world's rows take at most reward_world.MAX_ROW_BYTES = 100 bytes (70 before its
  # paraphrases gained neutral sentences), and BOS/EOS; the pretrain LM reads the same windows.
  c.seq_len = 102
  c.batch_size = 32
  set_model_size(c, d_model=64, num_layers=2, num_heads=2, head_dim=32, mlp_dim=128)
  c.model.max_seq_len = 256  # the eval's transforms lengthen rows beyond the training length
  c.optim.learning_rate = 1e-3  # at 3e-3 and alpha = 10 the rewards collapse to a constant
  c.optim.warmup_steps = 50
  c.optim.weight_decay = 0.0
  # The clean held-out pairs carry no artefact (base.py draws them at 5%, independent of
  # quality): the clean accuracy measures what a model knows of the content, and the surface
  # comes only from the transforms (docs/suites/rewordbench.md, "Which clean set").
  c.data.reward_world.artefact_test = 0.0
  # 6000 steps, so that every variant learns the world (the drops then compare like with like):
  # at 1000 the standard model had not (clean accuracy 84 against 98 for augmentation); with the
  # paraphrases' neutral sentences alpha = 10 learns slower, 95.5 clean at 3000 steps against
  # 99.8 for standard, 97.9 against 100.0 at 6000 (seed 0; docs/suites/rewordbench.md).
  c.train.num_steps = 6000
  c.train.log_every = 100
  c.train.eval_every = 1000
  c.train.eval_steps = 16
  c.train.checkpoint_every = 1000
  if variant == "pretrain":
    c.task = "lm"
    c.data.reward_world.num_train_examples = 40_000  # 80k texts, about 3.9M bytes
    c.data.reward_world.num_val_examples = 200
    c.train.num_steps = 1000
    c.train.eval_every = c.train.checkpoint_every = 500
    c.train.eval_steps = 8
    return c
  c.reward.consistency_alpha, c.reward.augmentation = REWARD_VARIANTS[variant]
  if variant == "tiny":
    shrink(c)
  return c


def shrink(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Any training variant at smoke-test size (seconds on a CPU; the same model sections for
  every variant, so a shrunk reward run starts from a shrunk pretrain); returns c."""
  c.batch_size = 8
  c.data.reward_world.num_train_examples = 2000  # the lm corpus is built up front
  c.data.reward_world.num_val_examples = 32
  c.optim.warmup_steps = 5
  set_model_size(c, d_model=32, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16,
                 mlp_dim=64)
  c.model.max_seq_len = 256
  smoke_run(c)
  return c


def add_suite_config(c: ml_collections.ConfigDict, *, tiny: bool = False):
  """Sets c.suite = "rewordbench" and the suite's settings c.rewordbench; returns c."""
  c.suite = "rewordbench"
  r = c.rewordbench = ml_collections.ConfigDict()
  r.data_path = ""  # a RewardBench-format .jsonl / .parquet file ("" = the synthetic world's)
  r.world_pairs = 4000  # held-out pairs of the synthetic world (data_path ""; s.e. ~0.5 points)
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


def get_config(arg: str | None = None):
  return add_suite_config(training_config(arg or "standard"), tiny=arg == "tiny")
