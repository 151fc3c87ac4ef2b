"""The semantic-hub experiment (arXiv 2411.04986): small LMs trained on the synthetic multilingual
world, and the settings of the `semantic_hub` suite that analyses them
(docs/suites/semantic_hub.md).

One file for both command lines (train.py reads the training sections, eval.py `suite` and
`semantic_hub`; each ignores the other's keys):

  python train.py --config configs/semantic_hub.py:transformer --workdir runs/hub_transformer
  python eval.py --suite semantic_hub --config configs/semantic_hub.py:transformer \
      --checkpoint runs/hub_transformer

Variants: transformer | gdn | loglinear_gdn (6 layers, 64 wide, about 0.33M parameters each:
minutes on a 2-core CPU) | shallow (the Transformer with 2 layers: the control) | tiny (seconds on
a CPU: tests). Without --checkpoint the suite trains the variant's own model into <out>/train
first.
"""

import ml_collections

from configs.base import get_base_config, set_model_size, smoke_run

VARIANTS = ("transformer", "gdn", "loglinear_gdn", "shallow", "tiny")
_PATTERN = {"transformer": "attention", "shallow": "attention", "tiny": "attention"}


def get_config(arg: str | None = None):
  if arg not in VARIANTS:
    raise ValueError(f"unknown variant {arg!r} of configs/semantic_hub.py; valid: {VARIANTS}")
  c = get_base_config()
  c.seq_len = 64  # a window holds about two documents
  c.batch_size = 32
  c.data.source = "multilingual"  # defaults: configs/base.py, data.multilingual
  mixer = _PATTERN.get(arg, arg)
  c.model.layer_pattern = mixer
  set_model_size(c, d_model=64, num_layers=2 if arg == "shallow" else 6, num_heads=4,
                 head_dim=16, mlp_dim=192)
  c.model.chunk_size = 16  # the GDN chunked forms run fastest on a CPU at this size
  if mixer.endswith("gdn"):
    c.model.mixer_options[mixer] = {"expand_v": 1}  # V = K: the attention's value width
  c.optim.learning_rate = 3e-3
  c.optim.warmup_steps = 100
  c.optim.weight_decay = 0.1
  c.optim.no_decay_regex = r"(^|/)(A_log|dt_bias|D|level_weight)$"
  c.train.num_steps = 800
  c.train.log_every = 50
  c.train.eval_every = 400
  c.train.checkpoint_every = 400
  c.train.keep_checkpoints = 1

  c.suite = "semantic_hub"
  s = c.semantic_hub = ml_collections.ConfigDict()
  # Further checkpoints analysed alike, one curve each in the same figures (comma-separated
  # workdirs or exports), and the curves' labels ("" = each run's folder name).
  s.compare = ""
  s.labels = ""
  s.num_pairs = 256  # translation pairs (and digit / word sums) for the Eq. 1 similarity
  # Hidden state of a sentence for Eq. 1: the mean over its tokens, or its last token (the paper's
  # choice, with a bridging phrase; the world's sentence-final states barely depend on content).
  s.pool = "mean"
  s.num_lens_sentences = 128  # minor-language sentences read by the logit lens
  s.lens_final_norm = True  # the figures' logit lens applies the final norm (both are reported)
  # Steering: a dominant-language mood vector (mean difference of the hidden states of matched
  # positive / negative sentences where the object's adjective is about to be said, i.e. the
  # mood of the next word: "activations"; unembedding rows of the positive minus the negative
  # adjectives: "unembedding") and a random vector, each scaled to the stream's mean norm at its
  # layer, added
  # at `steer_layers` (() = the middle layer, num_layers // 2) with each strength while
  # minor-language prompts are continued.
  s.steer_sources = ("activations", "unembedding", "random")
  s.steer_layers = ()
  s.strengths = (0.0, 0.125, 0.25, 0.5, 1.0)
  s.layer_sweep = True  # also steer at every layer above the embeddings, largest strength
  s.num_steer_prompts = 64
  s.steer_new_tokens = 16
  s.steer_positions = "all"  # all (prompt and generated tokens) | prompt
  s.temperature = 1.0
  s.batch_size = 64
  s.seed = 0
  # A real model: line i of pairs_a and of pairs_b say the same (two languages, or any two
  # forms), read with the checkpoint's tokenizer unless tokenizer / tokenizer_path name another
  # (as data.tokenizer / data.tokenizer_path do). Then only the similarity and the logit lens
  # (language share: tokens only file a's / only file b's) are run.
  s.pairs_a = ""
  s.pairs_b = ""
  s.tokenizer = ""
  s.tokenizer_path = ""

  if arg == "tiny":
    c.seq_len = 64
    c.batch_size = 8
    c.data.multilingual.num_train_documents = 300
    c.data.multilingual.num_val_documents = 20
    set_model_size(c, d_model=32, num_layers=2, num_heads=2, head_dim=16, mlp_dim=64)
    c.optim.warmup_steps = 5
    smoke_run(c)
    c.train.num_steps = c.train.eval_every = c.train.checkpoint_every = 10  # one eval, one save
    s.num_pairs = 16
    s.num_lens_sentences = 8
    s.strengths = (0.0, 2.0)
    s.layer_sweep = False
    s.num_steer_prompts = 4
    s.steer_new_tokens = 4
    s.batch_size = 16
  return c
