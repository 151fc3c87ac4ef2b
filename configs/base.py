"""Base defaults for every lloglin experiment. Other configs start from `get_base_config()`.

Every key here can be overridden on the command line: `--config.model.d_model=256`.
"""

import ml_collections


def get_base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.seq_len = 256  # tokens per training sequence
  c.batch_size = 32  # global batch (sequences per step, over all processes)

  # --- model (lloglin.models.ModelConfig; the vocabulary size comes from the data when 0)
  c.model = ml_collections.ConfigDict()
  c.model.vocab_size = 0
  c.model.d_model = 256
  c.model.num_layers = 4
  c.model.num_heads = 4
  c.model.num_kv_heads = 4  # < num_heads for grouped-query attention
  c.model.head_dim = 64
  c.model.mlp_dim = 1024  # SwiGLU hidden width; 0 = no MLP (mixer-only blocks)
  # Comma-separated mixer names, cycled over the layers: "attention", or "gdn,gdn,gdn,attention".
  c.model.layer_pattern = "attention"
  c.model.tie_embeddings = True
  c.model.rope_theta = 10_000.0
  c.model.max_seq_len = 2048
  c.model.norm_eps = 1e-6
  c.model.dtype = "float32"  # compute dtype: float32 | bfloat16
  c.model.param_dtype = "float32"
  c.model.attention_impl = "auto"  # auto | xla | cudnn (jax.nn.dot_product_attention)
  c.model.chunk_size = 64  # chunked forms of the linear mixers
  c.model.mixer_impl = "auto"  # auto | xla | pallas
  # Per-mixer options, keyed by mixer name (e.g. c.model.mixer_options.mamba2 = {"d_state": 64}).
  c.model.mixer_options = ml_collections.ConfigDict()

  # --- data (lloglin.data.make_dataset)
  c.data = ml_collections.ConfigDict()
  c.data.source = "mqar"  # mqar | text
  c.data.name = ""  # tfds dataset name for source=text (tiny_shakespeare, lm1b, wikitext...)
  c.data.path = ""  # local .txt / .jsonl file or a directory of them (wins over name)
  c.data.text_key = "text"  # field holding the text in .jsonl records and tfds examples
  c.data.tfds_data_dir = ""  # where tfds keeps prepared datasets ("" = tfds default)
  c.data.tokenizer = "byte"  # byte | sentencepiece | tiktoken
  c.data.tokenizer_path = ""  # sentencepiece .model file, or tiktoken encoding name
  c.data.val_fraction = 0.05  # held-out tail of local files when they have no split
  c.data.mqar = ml_collections.ConfigDict()
  c.data.mqar.vocab_size = 8192
  c.data.mqar.num_kv_pairs = 8
  c.data.mqar.power_a = 0.01  # query-gap distribution of Zoology's MQAR
  c.data.mqar.random_non_queries = True
  c.data.mqar.num_train_examples = 100_000
  c.data.mqar.num_val_examples = 1_000

  # --- optimisation
  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adamw"
  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 100
  c.optim.min_lr_ratio = 0.1  # cosine decays to learning_rate * min_lr_ratio
  c.optim.b1 = 0.9
  c.optim.b2 = 0.95
  c.optim.eps = 1e-8
  c.optim.weight_decay = 0.1
  c.optim.grad_clip_norm = 1.0  # 0 = no clipping

  # --- loop
  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 1000
  c.train.log_every = 20
  c.train.eval_every = 200
  c.train.eval_steps = 10  # validation batches per evaluation
  c.train.checkpoint_every = 200
  c.train.keep_checkpoints = 3
  c.train.keep_best = False  # also keep the checkpoint with the best eval loss
  c.train.async_checkpointing = True
  c.train.progress_bar = True
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  return get_base_config()
