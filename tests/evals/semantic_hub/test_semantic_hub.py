"""The semantic_hub suite in-process: configs/semantic_hub.py:tiny trains its own model on the
multilingual world and analyses it; its export then stands in for a real model read through
paired text files, and an untrained export without a tokenizer for a user's model read with the
user's; bad input is refused before any analysis."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.semantic_hub import get_config
from lloglin import evals
from lloglin.data import multilingual as world
from lloglin.data.tokenizers import ByteTokenizer
from lloglin.evals.semantic_hub.analysis import baseline_adjusted_similarity, logit_lens
from lloglin.evals.semantic_hub.suite import read_pairs
from lloglin.models import build_model
from lloglin.training import export, trainer
from lloglin.training.loading import load_model

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def hub_run(tmp_path_factory):
  """(out_dir, report) of the tiny variant without a checkpoint: trains into out_dir/train."""
  out = tmp_path_factory.mktemp("semantic_hub")
  return out, evals.run_suite("semantic_hub", get_config("tiny"), out_dir=str(out))


def test_tiny_run_trains_its_model_and_reports_every_measure(hub_run):
  out, report = hub_run
  saved = json.loads((out / "report.json").read_text())
  assert saved["figures"] == ["logit_lens.png", "similarity.png", "steering.png"]
  assert all((out / f).read_bytes()[:8] == PNG for f in saved["figures"])
  assert (out / "train" / "export").is_dir() and saved["config"]["semantic_hub"]["num_pairs"] == 16
  [(label, r)] = saved["results"]["models"].items()
  assert label == "attention" and r["num_layers"] == 2
  for kind in ("language", "arithmetic"):
    sim = {k: np.asarray(v) for k, v in r["similarity"][kind].items()}
    assert sim["adjusted"].shape == (3,) and (np.abs(sim["paired"]) <= 1 + 1e-9).all()
    np.testing.assert_allclose(sim["adjusted"], sim["paired"] - sim["shuffled"], atol=1e-12)
  for part in ("minor_input", "arithmetic"):
    for norm in ("final_norm", "raw"):
      lens = r["lens"][part][norm]
      total = sum(np.asarray(v) for v in lens["share"].values())  # all but BOS / EOS
      assert total.shape == (3,) and ((0.5 < total) & (total <= 1 + 1e-6)).all()
      p = np.asarray(lens["target_probability"])
      assert p.shape == (3, 2) and ((0 < p) & (p < 1)).all()
  st = r["steering"]
  assert st["layers"] == [1] and len(st["stream_norm"]) == 3
  rows = {(row["source"], row["strength"]) for row in st["table"]}
  assert rows == {(s, x) for s in ("activations", "unembedding", "random") for x in (0.0, 2.0)}
  for row in st["table"]:
    assert 0 <= row["minor_share"] <= 1 and row["adjectives"] >= 0


def _write_pairs(tmp_path, pairs):
  a, b = tmp_path / "a.txt", tmp_path / "b.txt"
  a.write_text("\n".join(x for x, _ in pairs) + "\n")
  b.write_text("\n".join(y for _, y in pairs) + "\n")
  return str(a), str(b)


def test_paired_files_and_several_checkpoints(hub_run, tmp_path):
  """The world's own pairs as files give the world run's Eq. 1; two checkpoints, two curves."""
  out, report = hub_run
  export = str(out / "train" / "export")
  config = get_config("tiny")
  s = config.semantic_hub
  s.pairs_a, s.pairs_b = _write_pairs(tmp_path, world.parallel_pairs("language", 16, seed=s.seed))
  s.compare, s.labels = export, "first,second"
  got = evals.run_suite("semantic_hub", config, checkpoint=export, out_dir=str(tmp_path / "o"))
  assert got["figures"] == ["logit_lens.png", "similarity.png"]
  models = got["results"]["models"]
  assert list(models) == ["first", "second"]
  world_sim = report["results"]["models"]["attention"]["similarity"]["language"]
  for label in models:
    np.testing.assert_allclose(models[label]["similarity"]["pairs"]["adjusted"],
                               world_sim["adjusted"], rtol=1e-6)
    shares = models[label]["lens"]["b_input"]["final_norm"]["share"]
    assert set(shares) == {"a", "b"} and shares["b"].shape == (3,)


@pytest.mark.parametrize("settings, match", [
    (dict(pairs="unequal"), r"paired files of unequal length: .*a.txt' has 3 lines, .*b.txt' "
                            r"has 2"),
    (dict(tokenizer="byte"), r"semantic_hub.tokenizer='byte': its vocabulary of 258 tokens does "
                             r"not match .*model vocab_size 147"),
    (dict(steer_layers=(0, 3)), r"semantic_hub.steer_layers=\(0, 3\): layer\(s\) \[3\] out of "
                                r"range .*\(2 layers: 0..2"),
    (dict(pool="first"), r"semantic_hub.pool='first'; expected 'last' or 'mean'"),
    (dict(steer_sources=("activations", "mood")), r"semantic_hub.steer_sources=\('activations', "
                                                  r"'mood'\); expected names from"),
    (dict(steer_positions="generated"), r"semantic_hub.steer_positions='generated'; expected"),
    (dict(num_pairs=1), r"semantic_hub.num_pairs=1; Eq. 1 needs at least 2 pairs"),
    (dict(pairs_a="a.txt"), r"pairs_a='a.txt', pairs_b='': give both paired files or neither"),
    (dict(labels="x,y"), r"semantic_hub.labels='x,y': 2 labels for 1 checkpoints"),
])
def test_bad_input_is_refused_before_any_analysis(hub_run, tmp_path, settings, match):
  out, _ = hub_run
  config = get_config("tiny")
  s = config.semantic_hub
  if settings.pop("pairs", None):
    s.pairs_a, s.pairs_b = _write_pairs(tmp_path, [("a", "b"), ("c", "d"), ("e", "f")])
    (tmp_path / "b.txt").write_text("b\nd\n")
  s.update(settings)
  with pytest.raises(ValueError, match=match):
    evals.run_suite("semantic_hub", config, checkpoint=str(out / "train" / "export"),
                    out_dir=str(tmp_path / "o"))
  assert not (tmp_path / "o" / "report.json").exists()


def test_paired_files_must_exist_and_hold_a_text_on_every_line(tmp_path):
  a, b = _write_pairs(tmp_path, [("a", "b"), ("c", "d")])
  with pytest.raises(FileNotFoundError, match=r"semantic_hub.pairs_b='.*none.txt': no such file"):
    read_pairs(a, str(tmp_path / "none.txt"))
  (tmp_path / "b.txt").write_text("b\n\n")
  with pytest.raises(ValueError, match=r"b.txt:2: a blank line; every line must hold one text"):
    read_pairs(a, b)


@pytest.fixture(scope="module")
def tokenizerless_export(tmp_path_factory):
  """An export of an untrained LM of 258 tokens whose training data (MQAR) has no tokenizer: a
  user's model that only the user's tokenizer (here the byte one) can read."""
  cfg = get_config("tiny")
  cfg.data.source = "mqar"
  mcfg = trainer.model_config(cfg, ByteTokenizer.vocab_size)
  path = str(tmp_path_factory.mktemp("user") / "export")
  export.export_params(path, nnx.state(build_model(mcfg, seed=3), nnx.Param),
                       dict(cfg.to_dict(), model=mcfg.to_dict(), task="lm"))
  return path


def test_a_user_tokenizer_reads_a_model_trained_without_one(tokenizerless_export, tmp_path):
  """Eq. 1 and the logit lens without the final norm of the suite (the user's texts through the
  byte tokenizer, in batches) equal those of each text run alone (right-padded: a causal model's
  earlier positions do not see the padding); without a tokenizer, or without paired files
  (steering needs the world), the checkpoint is refused."""
  pairs = [("the cat", "le chat"), ("a dog sleeps", "un chien dort"), ("red", "rouge"),
           ("good bread", "du bon pain")]
  config = get_config("tiny")
  s = config.semantic_hub
  s.pairs_a, s.pairs_b = _write_pairs(tmp_path, pairs)
  run = lambda: evals.run_suite("semantic_hub", config, checkpoint=tokenizerless_export,
                                out_dir=str(tmp_path / "o"))
  with pytest.raises(ValueError, match=r"data.source='mqar', which has no tokenizer; set "
                                       r"semantic_hub.tokenizer"):
    run()
  s.tokenizer = "byte"
  [r] = run()["results"]["models"].values()
  model, _ = load_model(tokenizerless_export)
  tok = ByteTokenizer()
  streams = jax.jit(lambda model, tokens_BT: model.probe(tokens_BT)["resid"])

  def alone_LTD(text):  # every layer's stream at each of the text's tokens, BOS first
    ids = [tok.bos_id] + tok.encode(text)
    return np.asarray(streams(model, jnp.asarray([ids + [0] * (16 - len(ids))])))[:, 0, :len(ids)]
  a_LND, b_LND = (np.stack([alone_LTD(t)[:, 1:].mean(1) for t in side], axis=1)
                  for side in zip(*pairs))
  expected = baseline_adjusted_similarity(a_LND, b_LND)
  for key in ("paired", "shuffled", "adjusted"):
    np.testing.assert_allclose(r["similarity"]["pairs"][key], expected[key], rtol=1e-4,
                               atol=1e-5)
  # The lens on file b's texts, at every position but the last: the mass on the bytes that only
  # file a's texts use, and on those only file b's use.
  used = [set(sum((tok.encode(t) for t in side), [])) for side in zip(*pairs)]
  only = {"a": sorted(used[0] - used[1]), "b": sorted(used[1] - used[0])}
  p_LMV = np.exp(np.concatenate([logit_lens(model, alone_LTD(b)[:, :-1], final_norm=False)
                                 for _, b in pairs], axis=1))
  shares = r["lens"]["b_input"]["raw"]["share"]
  for side, ids in only.items():
    np.testing.assert_allclose(shares[side], p_LMV[..., ids].sum(-1).mean(1), rtol=1e-4)
  s.pairs_a = s.pairs_b = ""
  with pytest.raises(ValueError, match=r"was not trained on the multilingual world \(data.source="
                                       r"'mqar'\); give paired text files"):
    run()
