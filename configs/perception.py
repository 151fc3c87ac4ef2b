"""The `perception` suite (docs/suites/perception.md): principle-guided pairwise judgements of
images aggregated by Bradley-Terry and compared with human ratings (after arXiv 2504.12511).

  python eval.py --suite perception --config configs/perception.py
  python eval.py --suite perception --config configs/perception.py:oracle \
      --config.perception.flip=0.1
  python eval.py --suite perception --config configs/perception.py \
      --config.perception.image_dir=SAVOIAS/Images/Scenes \
      --config.perception.scores_csv=scenes.csv --config.perception.category_column=category

  OPENAI_API_KEY=... python eval.py --suite perception --config configs/perception.py \
      --config.perception.judge=api --config.perception.api.base_url=https://api.openai.com/v1 \
      --config.perception.api.model=gpt-4o

Variants: default (the computed-measure judges on the synthetic set), oracle (the noisy oracle
on the synthetic set's clutter and symmetry), tiny (the measure judges on a few images).
"""

import ml_collections

VARIANTS = ("default", "oracle", "tiny")


def get_config(arg: str | None = None):
  variant = arg or "default"
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {arg!r} of configs/perception.py; valid: {VARIANTS}")
  c = ml_collections.ConfigDict()
  c.suite = "perception"
  p = c.perception = ml_collections.ConfigDict()
  p.judge = "measure"  # "measure", "oracle" (synthetic set only), "api", "encoder" or "mod:fn"
  p.principles = ("clutter", "symmetry", "simplicity")  # names of principles.PRINCIPLES
  p.flip = 0.1  # oracle: the probability that a judgement is flipped
  p.tie_tol = 0.0  # measure: a relative difference at most this is a tie
  p.seed = 0  # the synthetic images, the pairs and the oracle's flips
  p.num_images = 60  # synthetic images
  p.image_size = 64  # synthetic image side (px)
  p.pairs_per_image = 0  # 0: all pairs; else a budget of about this many opponents per image
  p.prior = 0.1  # Bradley-Terry: virtual ties per image against a score-0 reference (>= 0)
  p.top_disagreements = 10  # images listed in each principle's disagreement report
  p.image_dir = ""  # a folder of images (with scores_csv: the real analysis)
  p.scores_csv = ""  # its scores file: one row per image
  p.layout = "csv"  # "csv" (named columns) or "ic9600" (its train.txt / test.txt)
  p.image_column = "image"  # the image's path relative to image_dir
  p.score_column = "score"  # the human score
  p.category_column = ""  # per-category PLCC / SROCC (optional; ic9600: "name_prefix")
  p.max_side = 256  # loaded images: the longer side resized to this (0: kept)
  p.min_side = 32  # loaded images: smaller images are refused
  p.encoder = ""  # judge "encoder": "" = the checkpoint's dual encoder, or "module:function"
  p.encoder_texts = ml_collections.ConfigDict()  # {principle: text} (default: its definition)
  p.batch_size = 64  # judge "encoder": images per encoder call
  a = p.api = ml_collections.ConfigDict()  # judge "api": an OpenAI-compatible chat endpoint
  a.base_url = ""  # e.g. https://api.openai.com/v1 (POST {base_url}/chat/completions)
  a.model = ""  # a multimodal model of that endpoint
  a.key_env = "OPENAI_API_KEY"  # the environment variable holding the key ("" = no key)
  a.cache_dir = ""  # replies cached by request ("" = <out>/api_cache): a rerun sends nothing
  a.max_concurrency = 4  # requests in flight at a time
  a.requests_per_second = 1.0  # rate limit (0 = none)
  a.max_retries = 5  # on HTTP 429 / 5xx and connection errors, with exponential backoff
  a.backoff = 2.0  # seconds before the first retry (doubling; a Retry-After header wins)
  a.timeout = 120.0  # seconds per request
  a.max_tokens = 512
  if variant == "oracle":
    p.judge = "oracle"
    p.principles = ("clutter", "symmetry")
  if variant == "tiny":
    p.num_images = 12
    p.image_size = 48
  return c
