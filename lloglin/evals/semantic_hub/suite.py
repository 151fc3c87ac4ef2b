"""The `semantic_hub` suite: is there a shared, dominant-language-anchored representation in the
middle layers (arXiv 2411.04986), for any lloglin decoder?

For each checkpoint (`--checkpoint` and `semantic_hub.compare`): Eq. 1 similarity of paired
inputs by layer against the shuffled-pair baseline; the logit lens (Eq. 2) on minor-language
input, which language's tokens it favours by layer and how much mass the dominant translation
of the next token gets; on the synthetic multilingual world also the arithmetic lens (number
word against digit) and steering: a dominant-language mood vector added at a layer while
minor-language prompts are continued, against a random vector of the same norm. One curve per
model in similarity.png, logit_lens.png and steering.png. Settings: configs/semantic_hub.py;
method and readings of the paper: docs/suites/semantic_hub.md.
"""

import os

import ml_collections
import numpy as np

from lloglin.data import make_tokenizer
from lloglin.data import multilingual as world
from lloglin.evals.registry import register_suite
from lloglin.evals.report import progress
from lloglin.evals.semantic_hub import plots
from lloglin.evals.semantic_hub.analysis import (baseline_adjusted_similarity, scaled_direction,
                                                 unembedding_rows)
from lloglin.evals.semantic_hub.probing import (encode_rows, lens_readout, pooled_states,
                                                steered_continuations, stream_norms)
from lloglin.training.loading import load_model

STEER_SOURCES = ("activations", "unembedding", "random")
STEER_POSITIONS = ("all", "prompt")


@register_suite("semantic_hub")
def run(config, *, checkpoint: str | None, out_dir: str) -> dict:
  s = config.semantic_hub
  _check_settings(s)  # every error of the settings, files and checkpoints before any analysis
  pairs = read_pairs(s.pairs_a, s.pairs_b) if s.pairs_a else None
  trained_here = checkpoint is None
  if trained_here:  # the config's own model, trained here first
    from lloglin.training.trainer import train
    checkpoint = os.path.join(out_dir, "train")
    train(config, checkpoint)
  paths = [checkpoint] + [p.strip() for p in s.compare.split(",") if p.strip()]
  labels = [x.strip() for x in s.labels.split(",")] if s.labels else [_label(p) for p in paths]
  if trained_here and not s.labels:
    labels[0] = config.model.layer_pattern
  if len(labels) != len(paths):
    raise ValueError(f"semantic_hub.labels={s.labels!r}: {len(labels)} labels for {len(paths)} "
                     f"checkpoints ({paths})")
  loaded = [_load(path, s) for path in paths]
  results = {}
  for label, (model, tokenizer) in zip(labels, loaded):
    if pairs is None:
      results[label] = analyse_world(model, tokenizer, s, label=label)
    else:
      results[label] = analyse_pairs(model, tokenizer, pairs, s, label=label)
  plots.similarity(results, os.path.join(out_dir, "similarity.png"))
  plots.lens(results, os.path.join(out_dir, "logit_lens.png"), s.lens_final_norm)
  if any("steering" in r for r in results.values()):
    plots.steering(results, os.path.join(out_dir, "steering.png"))
  for label, r in results.items():
    print(summary(label, r, s.lens_final_norm))
  return {"models": results, "checkpoints": dict(zip(labels, map(os.path.abspath, paths)))}


def _check_settings(s):
  if s.pool not in ("last", "mean"):
    raise ValueError(f"semantic_hub.pool={s.pool!r}; expected 'last' or 'mean'")
  if s.steer_positions not in STEER_POSITIONS:
    raise ValueError(f"semantic_hub.steer_positions={s.steer_positions!r}; expected one of "
                     f"{STEER_POSITIONS}")
  bad = [x for x in s.steer_sources if x not in STEER_SOURCES]
  if bad:
    raise ValueError(f"semantic_hub.steer_sources={tuple(s.steer_sources)!r}; expected names "
                     f"from {STEER_SOURCES}")
  if s.num_pairs < 2:
    raise ValueError(f"semantic_hub.num_pairs={s.num_pairs}; Eq. 1 needs at least 2 pairs")
  if bool(s.pairs_a) != bool(s.pairs_b):
    raise ValueError(f"semantic_hub.pairs_a={s.pairs_a!r}, pairs_b={s.pairs_b!r}: give both "
                     f"paired files or neither")


def _label(path: str) -> str:
  path = os.path.normpath(os.path.abspath(path))
  name = os.path.basename(path)
  return os.path.basename(os.path.dirname(path)) if name in ("export", "checkpoints") else name


def _load(path: str, s):
  """(model, tokenizer) of one checkpoint, after the checks that need it."""
  model, train_config = load_model(path)
  if train_config.get("task", "lm") != "lm":
    raise ValueError(f"checkpoint={path!r} holds a model of task {train_config['task']!r}; the "
                     f"semantic_hub suite analyses language models (task 'lm')")
  data = ml_collections.ConfigDict(train_config["data"])
  own = make_tokenizer(data)
  tokenizer = own
  if s.tokenizer:  # as a text source names it (the world's source implies its own)
    data.source = "text"
    data.tokenizer, data.tokenizer_path = s.tokenizer, s.tokenizer_path
    tokenizer = make_tokenizer(data)
  vocab = model.cfg.vocab_size
  if tokenizer is None:
    raise ValueError(f"checkpoint={path!r} was trained on data.source={data.source!r}, which has "
                     f"no tokenizer; set semantic_hub.tokenizer (and tokenizer_path)")
  if tokenizer.vocab_size > vocab or (own is not None and own.vocab_size != tokenizer.vocab_size):
    raise ValueError(
        f"semantic_hub.tokenizer={s.tokenizer or data.tokenizer!r}: its vocabulary of "
        f"{tokenizer.vocab_size} tokens does not match checkpoint={path!r} (model vocab_size "
        f"{vocab}" + (f", trained with a tokenizer of {own.vocab_size}" if own else "") + ")")
  world_mode = not s.pairs_a
  if world_mode and data.source != "multilingual":
    raise ValueError(f"checkpoint={path!r} was not trained on the multilingual world "
                     f"(data.source={data.source!r}); give paired text files "
                     f"(semantic_hub.pairs_a, pairs_b) to analyse it")
  L = model.cfg.num_layers
  bad = [layer for layer in s.steer_layers if not 0 <= layer <= L]
  if world_mode and s.steer_sources and bad:
    raise ValueError(f"semantic_hub.steer_layers={tuple(s.steer_layers)!r}: layer(s) {bad} out "
                     f"of range for checkpoint={path!r} ({L} layers: 0..{L}, the stream entering "
                     f"each block and after the last)")
  return model, tokenizer


def read_pairs(path_a: str, path_b: str) -> list[tuple[str, str]]:
  """The lines of two text files, paired by line number (every line of both must hold text)."""
  lines = []
  for path in (path_a, path_b):
    if not os.path.isfile(path):
      raise FileNotFoundError(f"semantic_hub.pairs_{'ab'[len(lines)]}={path!r}: no such file")
    with open(path, encoding="utf-8") as f:
      lines.append(f.read().splitlines())
    blank = [i + 1 for i, line in enumerate(lines[-1]) if not line.strip()]
    if blank:
      raise ValueError(f"{path}:{blank[0]}: a blank line; every line must hold one text")
  if len(lines[0]) != len(lines[1]):
    raise ValueError(f"paired files of unequal length: {path_a!r} has {len(lines[0])} lines, "
                     f"{path_b!r} has {len(lines[1])}; line i of each must say the same")
  return list(zip(*lines))


def similarity(model, tokenizer, pairs, s) -> dict:
  """Eq. 1 by layer over the pairs (their first num_pairs)."""
  pairs = pairs[:s.num_pairs]
  if len(pairs) < 2:
    raise ValueError(f"{len(pairs)} pair(s); Eq. 1 needs at least 2")
  kw = dict(pool=s.pool, skip_first=tokenizer.bos_id is not None, batch_size=s.batch_size)
  h = [pooled_states(model, encode_rows(tokenizer, side, model.cfg.max_seq_len), **kw)
       for side in zip(*pairs)]
  return baseline_adjusted_similarity(*h)


def type_matrix(type_ids: dict[str, list[int]], vocab_size: int) -> np.ndarray:
  """[K, V] one-hot rows: which token ids are of each of the K types."""
  out = np.zeros((len(type_ids), vocab_size), np.float32)
  for k, ids in enumerate(type_ids.values()):
    out[k, ids] = 1
  return out


def lens_by_layer(model, rows, targets, type_ids, s) -> dict:
  """The logit lens, with and without the final norm, over the positions that have a first
  target: mean type shares per layer, and the mean probability of each target column per layer
  (where it has a token)."""
  types_KV = type_matrix(type_ids, model.cfg.vocab_size)
  out = {}
  read = lens_readout(model, rows, targets, types_KV, batch_size=s.batch_size)
  for final_norm, (shares_LMK, logp_LMJ) in read.items():
    p_LMJ = np.exp(logp_LMJ)
    wins_LM = np.where(np.isnan(p_LMJ[..., 1]), np.nan, p_LMJ[..., 1] > p_LMJ[..., 0])
    at_M = ~np.isnan(logp_LMJ[0, :, 0])
    out["final_norm" if final_norm else "raw"] = {
        "share": {k: shares_LMK[:, at_M, i].mean(1) for i, k in enumerate(type_ids)},
        "target_probability": _nanmean(p_LMJ),
        "second_wins": _nanmean(wins_LM)}  # how often target 1 beats target 0, where both exist
  return out


def _nanmean(x_LM):
  """Mean over axis 1 of the entries that are not NaN (NaN where there are none)."""
  valid = ~np.isnan(x_LM)
  return np.where(valid.any(1), np.where(valid, x_LM, 0).sum(1) / np.maximum(valid.sum(1), 1),
                  np.nan)


def analyse_pairs(model, tokenizer, pairs, s, *, label: str) -> dict:
  """A real model on the user's paired texts: Eq. 1, and the logit lens on the b side (token
  types: the ids only file a's texts use, and those only file b's use)."""
  out = {"num_layers": model.cfg.num_layers, "similarity": {"pairs": similarity(
      model, tokenizer, pairs, s)}}
  pairs = pairs[:s.num_lens_sentences]
  seen = [set(sum((tokenizer.encode(t) for t in side), [])) for side in zip(*pairs)]
  type_ids = {"a": sorted(seen[0] - seen[1]), "b": sorted(seen[1] - seen[0])}
  rows = encode_rows(tokenizer, [b for _, b in pairs], model.cfg.max_seq_len)
  targets = [[[t, -1] for t in r[1:]] for r in rows]
  out["lens"] = {"b_input": lens_by_layer(model, rows, targets, type_ids, s)}
  print(f"{label}: {len(rows)} b-side texts; {len(type_ids['a'])} tokens only in pairs_a, "
        f"{len(type_ids['b'])} only in pairs_b")
  return out


def world_types(tokenizer) -> dict[str, list[int]]:
  return {k: tokenizer.encode(" ".join(words)) for k, words in world.WORD_TYPES.items()}


def analyse_world(model, tokenizer, s, *, label: str) -> dict:
  """Every measure on a model of the multilingual world."""
  enc = lambda texts: encode_rows(tokenizer, texts, model.cfg.max_seq_len)
  out = {"num_layers": model.cfg.num_layers, "similarity": {
      kind: similarity(model, tokenizer, world.parallel_pairs(kind, s.num_pairs, seed=s.seed), s)
      for kind in ("language", "arithmetic")}}
  types = world_types(tokenizer)
  # Minor-language input: at each position, the next (minor) token and, for a content word,
  # its dominant translation.
  minor = [m for _, m in world.parallel_pairs("language", s.num_lens_sentences, seed=s.seed + 1)]
  rows = enc(minor)
  translation = dict(zip(tokenizer.encode(" ".join(world.TO_DOMINANT)),
                         tokenizer.encode(" ".join(world.TO_DOMINANT.values()))))
  targets = [[[t, translation.get(t, -1)] for t in r[1:]] for r in rows]
  out["lens"] = {"minor_input": lens_by_layer(model, rows, targets, types, s)}
  # Arithmetic: after "c = a +" in digits (only there), the digit b against its number word.
  sums = [d for d, _ in world.parallel_pairs("arithmetic", s.num_lens_sentences, seed=s.seed + 1)]
  rows = enc([d[:d.index("+") + 1] for d in sums])
  targets = [[[-1, -1]] * (len(r) - 2) + [[tokenizer.encode(d.split()[-2])[0], tokenizer.encode(
      world.NUMBER_WORDS[int(d.split()[-2])])[0]]] for r, d in zip(rows, sums)]
  out["lens"]["arithmetic"] = lens_by_layer(model, rows, targets, types, s)
  if s.steer_sources:
    out["steering"] = steering(model, tokenizer, s, label=label)
  return out


def steering(model, tokenizer, s, *, label: str) -> dict:
  """Mood steering of minor-language continuations (the paper's ActAdd, dominant-language
  vectors): at the chosen layers with every strength, and with the largest strength at every
  layer above the embeddings (layer_sweep). The activations vector is the mean difference of the
  states of matched positive / negative dominant sentences where the object's adjective is about
  to be said (the mood of the next word; 0 at layer 0, the embedding of the same word "the");
  each vector is scaled to the mean norm of the stream at its layer."""
  L = model.cfg.num_layers
  layers = tuple(s.steer_layers) or (L // 2,)
  positive, negative = zip(*world.mood_pairs(s.num_steer_prompts, "dominant", seed=s.seed + 2))
  kw = dict(pool="last", skip_first=True, batch_size=s.batch_size)
  enc = lambda texts: encode_rows(tokenizer, texts, model.cfg.max_seq_len)
  h_pos, h_neg = (pooled_states(model, enc([world.before_object_adjective(t, "dominant")
                                            for t in texts]), **kw)
                  for texts in (positive, negative))
  norms = stream_norms(model, enc(positive + negative), skip_first=True, batch_size=s.batch_size)
  unembed = np.asarray(unembedding_rows(model, tokenizer.encode(" ".join(world.POSITIVE)))).mean(0)
  unembed -= np.asarray(unembedding_rows(model, tokenizer.encode(" ".join(world.NEGATIVE)))).mean(0)
  rng = np.random.default_rng(s.seed)
  random_D = rng.normal(size=model.cfg.d_model)

  def vector(source, layer):
    d = {"activations": h_pos[layer].mean(0) - h_neg[layer].mean(0), "unembedding": unembed,
         "random": random_D}[source]
    return scaled_direction(d, norms[layer])

  prompts = enc([m for _, m in world.parallel_pairs("language", s.num_steer_prompts,
                                                    seed=s.seed + 3)])
  run_kw = dict(new_tokens=s.steer_new_tokens, prompt_only=s.steer_positions == "prompt",
                temperature=s.temperature, seed=s.seed, stop_tokens=[tokenizer.eos_id])
  zero = np.zeros(model.cfg.d_model, np.float32)
  base = attributes(tokenizer, steered_continuations(model, prompts, zero, layer=0, strength=0.0,
                                                     **run_kw))
  jobs = [(src, layer, x) for src in s.steer_sources for layer in layers
          for x in s.strengths if x != 0]
  if s.layer_sweep:
    jobs += [(src, layer, max(s.strengths)) for src in s.steer_sources
             for layer in range(1, L + 1) if layer not in layers]
  measured = {}
  for src, layer, x in progress(jobs, desc=f"semantic_hub: steering {label}"):
    measured[src, layer, x] = attributes(tokenizer, steered_continuations(
        model, prompts, vector(src, layer), layer=layer, strength=x, **run_kw))
  table = [dict(source=src, layer=layer, strength=x, **measured[src, layer, x])
           for src, layer, x in jobs]
  table += [dict(source=src, layer=layer, strength=0.0, **base) for src in s.steer_sources
            for layer in layers]
  return {"layers": list(layers), "stream_norm": norms, "unsteered": base, "table": table}


def attributes(tokenizer, continuations) -> dict:
  """What the steering moves and what it must keep, over all continuations: the share of
  positive adjectives among the adjectives (of either language: "positive_share"), the share of
  words in the minor language ("minor_share") and of finished sentences that are well-formed minor
  sentences ("well_formed")."""
  words = [[tokenizer.words[t] for t in c if t not in (tokenizer.bos_id, tokenizer.eos_id)]
           for c in continuations]
  flat = sum(words, [])
  minor = set(world.WORD_TYPES["minor"])
  moods = [world.SENTIMENT[w] for w in flat if w in world.SENTIMENT]
  sentences, ok = 0, 0
  for ws in words:
    start = 0
    for i, w in enumerate(ws):
      if w in ("ne", "."):
        sentences += 1
        try:
          world.parse(" ".join(ws[start:i + 1]), "minor")
          ok += 1
        except ValueError:
          pass
        start = i + 1
  nan = float("nan")
  return {"positive_share": float(np.mean(np.asarray(moods) > 0)) if moods else nan,
          "minor_share": sum(w in minor for w in flat) / len(flat) if flat else nan,
          "well_formed": ok / sentences if sentences else nan,
          "adjectives": len(moods)}


def summary(label: str, r: dict, final_norm: bool) -> str:
  """A few lines of figures for the console."""
  key = "final_norm" if final_norm else "raw"
  lines = [f"== {label} ({r['num_layers']} layers)"]
  for kind, sim in r["similarity"].items():
    lines.append(f"  Eq. 1 {kind:10s} by layer: " + " ".join(f"{x:+.3f}" for x in sim["adjusted"]))
  for kind, lens in r["lens"].items():
    share = lens[key]["share"]
    lines.append(f"  lens {kind} ({key}): " + "; ".join(
        f"{k} " + " ".join(f"{x:.2f}" for x in v) for k, v in share.items()))
  if "steering" in r:
    st = r["steering"]
    lines.append(f"  unsteered positive share {st['unsteered']['positive_share']:.3f}")
  return "\n".join(lines)
