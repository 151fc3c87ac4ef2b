"""Base defaults for every lloglin experiment. Other configs start from `get_base_config()`.

Every key here can be overridden on the command line: `--config.model.d_model=256`.
"""

import ml_collections


def get_base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.seq_len = 256  # tokens per training sequence
  c.batch_size = 32  # global batch (rows per step, over all processes)
  # The training objective (lloglin.training.tasks): "lm" (next-token prediction on the data
  # sources mqar | text | flipflop) or "reward" (a reward model: the decoder trunk and a scalar
  # head; Bradley-Terry loss on preference pairs, data.source synthetic_preferences |
  # preference_jsonl | reward_world, or regression on scored records, data.source scored_jsonl |
  # reward_world; configs/reward.py's `reward` section picks) or "contrastive" (a CLIP-style dual
  # encoder on image-caption pairs, InfoNCE mixed with NegBench's MCQ loss by
  # contrastive.alpha; data.source toy_pairs | scenes | negcap | negmcq; configs/contrastive.py,
  # configs/negbench.py). The task decides the model, batches, loss and eval metrics.
  c.task = "lm"
  # A params-only LM export (a training workdir's export/) whose weights initialise the model:
  # all of them for "lm", the trunk for "reward" and the text tower for "contrastive" (the LM
  # head is dropped); or an export of the same task, which initialises the whole model
  # (fine-tuning). "" = random init.
  # The model section must describe the same shapes (a ValueError lists the fields that differ).
  c.init_from = ""

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
  # Residual wiring: standard | ladder (Ladder Residual) | parallel (PaLM) | desync (skip some
  # tensor-parallel all-reduces). Layers below residual_start_layer stay standard (hybrid).
  c.model.residual_mode = "standard"
  c.model.residual_start_layer = 0
  c.model.desync_every = 1  # desync: every n-th layer keeps the all-reduce of desync_reduce
  c.model.desync_reduce = "mlp"  # mlp | mixer | both
  # Rematerialisation of each residual branch (mixer or MLP, with its norm) during training, i.e.
  # what its forward keeps for the backward (lloglin/layers/remat.py):
  #   none: everything autodiff needs (fastest; most memory)
  #   dots_saveable: matmul outputs; elementwise work and sequence kernels recomputed
  #   dots_and_kernels: projections, mixer outputs, sequence kernels' outputs; only elementwise
  #     work and XLA-side preprocessing recomputed, no kernel forward rerun
  #   dots_with_no_batch_dims_saveable: projections only
  #   dots_and_mixer_core: projections and mixer outputs (kernels whose backward needs only
  #     their inputs, Mamba-2's, are not rerun)
  #   mixer_core: mixer outputs only
  #   block: nothing but the branch's input (least memory; one more forward of compute)
  # ~350M models at 32K tokens per step on one 80 GB H100 (benchmarks/bench_train_step.py
  # --memory): log-linear Mamba-2 / log-linear GDN at 16K need a policy (mixer_core: 5% slower
  # than none for log-linear Mamba-2), PaTH-FoX at 4K dots_and_kernels; GDN and the Transformer
  # fit with none.
  c.model.remat = "none"

  # --- device mesh (lloglin.parallel.mesh): sizes of the data, fsdp and tensor axes; -1 = all
  # the devices the other axes leave. data=-1 is data parallelism, fsdp=-1 FSDP, tensor=N
  # tensor parallelism over N devices (keep it within one host).
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1
  c.mesh.fsdp = 1
  c.mesh.tensor = 1

  # --- data (lloglin.data.make_dataset; preference pairs: lloglin.data.preferences)
  c.data = ml_collections.ConfigDict()
  # task lm: mqar | text | flipflop | multilingual | reward_world | arc_dsl (generated ARC-like
  # tasks, configs/arc_pretrain.py); task reward: synthetic_preferences | preference_jsonl |
  # scored_jsonl | reward_world; task contrastive: toy_pairs (lloglin/data/contrastive.py),
  # scenes | negcap | negmcq (synthetic scenes, settings data.scenes: lloglin/data/scenes.py)
  c.data.source = "mqar"
  c.data.name = ""  # tfds dataset name for source=text (tiny_shakespeare, lm1b, wikitext...)
  # local .txt / .jsonl file or a directory of them (wins over name); for preference_jsonl a
  # .jsonl file of {"prompt", "chosen", "rejected"} records, for scored_jsonl of {"prompt",
  # "response", "score"} records and an optional "paraphrase" (prompts truncated from the left)
  c.data.path = ""
  c.data.text_key = "text"  # field holding the text in .jsonl records and tfds examples
  c.data.tfds_data_dir = ""  # where tfds keeps prepared datasets ("" = tfds default)
  c.data.tokenizer = "byte"  # byte | sentencepiece | tiktoken (multilingual: its own words)
  c.data.tokenizer_path = ""  # sentencepiece .model file, or tiktoken encoding name
  c.data.val_fraction = 0.05  # held-out tail of local files (or .jsonl records) as validation
  # task lm: worker processes that make each batch's rows (0: this process). For generated
  # sources whose rows cost CPU time (arc_dsl), so that a GPU does not wait for the data.
  c.data.num_workers = 0
  c.data.mqar = ml_collections.ConfigDict()
  c.data.mqar.vocab_size = 8192
  c.data.mqar.num_kv_pairs = 8
  c.data.mqar.power_a = 0.01  # query-gap distribution of Zoology's MQAR
  c.data.mqar.random_non_queries = True
  c.data.mqar.num_train_examples = 100_000
  c.data.mqar.num_val_examples = 1_000
  # Flip-flop language (lloglin/data/flipflop.py): FFL(p) strings of seq_len / 2 pairs.
  c.data.flipflop = ml_collections.ConfigDict()
  c.data.flipflop.p_ignore = 0.8  # training distribution FFL(0.8)
  c.data.flipflop.val_p_ignore = 0.8  # validation: 0.8 in distribution, 0.98 sparse, 0.1 dense
  c.data.flipflop.num_train_examples = 1_000_000
  c.data.flipflop.num_val_examples = 1_000
  # Synthetic multilingual world (lloglin/data/multilingual.py; its own word-level tokenizer):
  # stories in a dominant and a minor language, arithmetic in digits and number words.
  c.data.multilingual = ml_collections.ConfigDict()
  c.data.multilingual.minor_share = 0.1  # stories written in the minor language
  c.data.multilingual.arithmetic_share = 0.1  # documents of sums (half digits, half words)
  c.data.multilingual.parallel_share = 0.05  # stories with each sentence and its translation
  c.data.multilingual.switch_share = 0.1  # code-switched stories (each sentence either language)
  c.data.multilingual.min_sentences = 2
  c.data.multilingual.max_sentences = 6
  c.data.multilingual.num_train_documents = 50_000
  c.data.multilingual.num_val_documents = 500
  # Synthetic preference pairs (lloglin/data/preferences.py): the chosen response repeats words
  # of the prompt, the rejected one has num_errors words that are not in it.
  c.data.preferences = ml_collections.ConfigDict()
  c.data.preferences.vocab_size = 32  # 0 padding, 1 separator, words [2, vocab_size)
  c.data.preferences.prompt_len = 8
  c.data.preferences.min_response_len = 2
  c.data.preferences.max_response_len = 6
  c.data.preferences.num_errors = 1
  c.data.preferences.num_train_examples = 100_000
  c.data.preferences.num_val_examples = 1_000
  # The reward world (lloglin/data/reward_world.py): text requests and responses whose score is a
  # known function of their content, with paraphrases. Surface artefacts (spaced punctuation,
  # quotes, no end mark): in train and validation on a bad unit (an off-topic item, a wrong
  # answer, ...) with probability artefact_bad, on a good one with artefact_good; in the test
  # split on any unit with artefact_test (independent of quality); in paraphrases on any unit
  # with paraphrase_artefact. A paraphrase also lists its items in a new order with probability
  # paraphrase_reorder, swaps the case of its first letter with paraphrase_case, and adds a
  # neutral sentence ("Good question.", "Hope this helps!") before and after the answer with
  # paraphrase_filler each (all three 0: the world's first paraphrases, text for text).
  c.data.reward_world = ml_collections.ConfigDict()
  c.data.reward_world.artefact_bad = 0.3
  c.data.reward_world.artefact_good = 0.0
  c.data.reward_world.artefact_test = 0.05
  c.data.reward_world.paraphrase_artefact = 0.3
  c.data.reward_world.paraphrase_reorder = 0.5
  c.data.reward_world.paraphrase_case = 0.3
  c.data.reward_world.paraphrase_filler = 0.5
  c.data.reward_world.num_train_examples = 100_000  # pairs (records: twice as many)
  c.data.reward_world.num_val_examples = 1_000

  # --- optimisation
  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adamw"  # adamw | galore | random_sketch | kronecker | onesided_lora | lora ...
  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 100
  c.optim.min_lr_ratio = 0.1  # cosine decays to learning_rate * min_lr_ratio
  c.optim.b1 = 0.9
  c.optim.b2 = 0.95
  c.optim.eps = 1e-8
  c.optim.weight_decay = 0.1
  c.optim.grad_clip_norm = 1.0  # 0 = no clipping
  c.optim.decay_matrices_only = False  # weight decay on ndim >= 2 parameters only
  c.optim.no_decay_regex = ""  # parameters (paths, re.search) that get no weight decay
  # Low-rank methods (optim.name = galore | random_sketch | kronecker, or the adapter duals
  # onesided_lora | kronecker_lora; lloglin/optim/factory.py documents each field).
  c.optim.rank = 128
  c.optim.refresh_every = 200  # new projections every N steps (0 = never)
  c.optim.refresh_policy = "keep"  # keep | reset the inner optimizer state at a refresh
  c.optim.projection = ""  # svd | gaussian | orthogonal ("" = the method's default)
  c.optim.side = "auto"  # left | right | auto (the smaller side)
  c.optim.mask_regex = r"kernel$"  # which parameters are projected (paths, re.search)
  c.optim.mask_exclude_regex = r"(^|/)(embed|head|lm_head)(/|$)|conv/"
  c.optim.accumulate_steps = 1  # microbatches per optimizer step
  c.optim.projection_seed = 0
  c.optim.lora_alpha = 16.0  # optim.name = lora: the update is scaled by lora_alpha / rank
  c.optim.per_host_projections = False

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


def set_model_size(c: ml_collections.ConfigDict, *, d_model: int, num_layers: int, num_heads: int,
                   head_dim: int, mlp_dim: int, num_kv_heads: int | None = None) -> None:
  """Sets the decoder's size in c.model, the part every experiment config chooses for itself.

  num_kv_heads defaults to num_heads (no grouped-query attention). max_seq_len becomes c.seq_len,
  the training length, so set c.seq_len first.
  """
  c.model.d_model = d_model
  c.model.num_layers = num_layers
  c.model.num_heads = num_heads
  c.model.num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
  c.model.head_dim = head_dim
  c.model.mlp_dim = mlp_dim
  c.model.max_seq_len = c.seq_len


def smoke_run(c: ml_collections.ConfigDict) -> None:
  """The :tiny variants' training: 20 steps, logged, evaluated and saved often, no progress bar."""
  c.train.num_steps = 20
  c.train.log_every = 5
  c.train.eval_every = 10
  c.train.eval_steps = 2
  c.train.checkpoint_every = 10
  c.train.progress_bar = False


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  return get_base_config()
