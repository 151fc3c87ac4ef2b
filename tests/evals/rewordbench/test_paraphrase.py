"""Model-based transforms: the synonym paraphraser, generation functions (a fake local
OpenAI-compatible server, a tiny lloglin LM) and the similarity filter."""

import http.server
import json
import re
import threading

import ml_collections
import pytest

from configs.rewordbench import get_config
from lloglin.evals.rewordbench import paraphrase as P
from lloglin.evals.rewordbench.synonyms import SYNONYM_GROUPS
from lloglin.evals.rewordbench.transforms import TRANSFORMS

TEXT = "Begin with a quick check, then Explain the main problem very carefully to a FRIEND."


def test_synonym_groups_are_disjoint():
  words = [w for group in SYNONYM_GROUPS for w in group]
  assert len(words) == len(set(words)) and all(len(g) >= 2 for g in SYNONYM_GROUPS)


def test_synonym_paraphraser_swaps_table_words_within_their_group():
  para = P.SynonymParaphraser()
  [out] = para([TEXT], seed=0)
  assert para([TEXT], seed=0) == [out]
  assert len({para([TEXT], seed=s)[0] for s in range(5)}) > 1
  before, after = re.findall(r"[A-Za-z]+", TEXT), re.findall(r"[A-Za-z]+", out)
  assert len(before) == len(after) and before != after
  for a, b in zip(before, after):
    if a != b:
      assert b.lower() in para.table[a.lower()]
      assert (a.isupper(), a[0].isupper()) == (b.isupper(), b[0].isupper())
  # every word of the table is replaced at rate 1
  assert all(a != b for a, b in zip(re.findall(r"[a-z]+", "quick check main very"),
                                    P.SynonymParaphraser(rate=1.0)(["quick check main very"],
                                                                   0)[0].split()))


def test_generation_rewriter_runs_each_template_in_turn():
  calls = []

  def fake(prompts):
    calls.append(prompts)
    return [p.rsplit("\n\n", 1)[1][::-1] for p in prompts]  # the text, reversed

  rewrite = P.generation_rewriter(fake, P.BACK_TRANSLATION_TEMPLATES)
  assert rewrite(["abc", "de"], seed=0) == ["abc", "de"]  # reversed twice
  assert [c[0] for c in calls] == [P.BACK_TRANSLATION_TEMPLATES[0].format(text="abc"),
                                   P.BACK_TRANSLATION_TEMPLATES[1].format(text="cba")]
  with pytest.raises(ValueError, match="the generation function returned list .* expected a "
                     "list of 2 strings"):
    P.generation_rewriter(lambda prompts: ["one"], P.PARAPHRASE_TEMPLATES)(["a", "b"], 0)


def test_similarity_filter_drops_records_with_a_distant_rewrite():
  records = [{"prompt": "the cat sat on the mat today", "chosen": "a fine answer",
              "rejected": "a poor answer", "subset": "s"},
             {"prompt": "the dog ran in the park today", "chosen": "a fine answer",
              "rejected": "another answer", "subset": "s"}]
  rewrites = {"the cat sat on the mat today": "the cat sat on the mat, today",
              "the dog ran in the park today": "zzzz qqqq xxxx"}
  rewriter = lambda texts, seed: [rewrites.get(t, t) for t in texts]
  t = TRANSFORMS["paraphrase"]
  sims = P.cosine_similarity(list(rewrites), list(rewrites.values()), P.char_ngram_tfidf)
  assert sims[0] > 0.7 > sims[1]
  out = P.rewrite_records(t, records, rewriter, 0, embed=P.char_ngram_tfidf, threshold=0.7)
  assert out[1] is None and out[0] == dict(records[0], prompt="the cat sat on the mat, today")
  assert P.rewrite_records(t, records, rewriter, 0)[1]["prompt"] == "zzzz qqqq xxxx"  # no filter


class FakeChat(http.server.BaseHTTPRequestHandler):
  """An OpenAI-compatible chat-completions endpoint on 127.0.0.1 that upper-cases the text after
  the instruction; /v1/fail answers 500."""
  seen = []

  def do_POST(self):
    body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
    FakeChat.seen.append((self.path, self.headers.get("Authorization"), body))
    if self.path != "/v1/chat/completions":
      self.send_error(500, "boom")
      return
    text = body["messages"][0]["content"].rsplit("\n\n", 1)[1]
    reply = json.dumps({"choices": [{"message": {"role": "assistant",
                                                 "content": text.upper()}}]}).encode()
    self.send_response(200)
    self.send_header("Content-Type", "application/json")
    self.send_header("Content-Length", str(len(reply)))
    self.end_headers()
    self.wfile.write(reply)

  def log_message(self, *args):
    pass


@pytest.fixture
def fake_server():
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeChat)
  thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                            daemon=True)
  thread.start()
  yield f"http://127.0.0.1:{server.server_port}"
  server.shutdown()
  server.server_close()


def test_http_paraphraser_against_a_local_server(fake_server, monkeypatch):
  monkeypatch.setenv("RWB_TEST_KEY", "secret")
  cfg = get_config().rewordbench.paraphrase
  cfg.backend, cfg.url, cfg.model, cfg.api_key_env = "http", f"{fake_server}/v1", "m", "RWB_TEST_KEY"
  rewriters = P.make_rewriters(cfg, ["paraphrase", "back_translation"])
  FakeChat.seen.clear()
  assert rewriters["paraphrase"](["hello there", "bye"], 0) == ["HELLO THERE", "BYE"]
  assert rewriters["back_translation"](["x"], 0) == ["X"]  # two requests
  assert len(FakeChat.seen) == 4
  path, auth, body = FakeChat.seen[0]
  assert (path, auth, body["model"], body["temperature"]) == ("/v1/chat/completions",
                                                              "Bearer secret", "m", 0.0)
  with pytest.raises(RuntimeError, match=r"/v1/fail/chat/completions: HTTP 500"):
    P.openai_chat(f"{fake_server}/v1/fail", "m")(["a"])
  with pytest.raises(ValueError, match="api_key_env='RWB_UNSET_KEY'"):
    P.openai_chat(fake_server, "m", api_key_env="RWB_UNSET_KEY")


def test_paraphrase_settings_that_cannot_run():
  cfg = get_config().rewordbench.paraphrase
  assert P.default_names(cfg) == ["paraphrase"]
  with pytest.raises(ValueError, match="back_translation needs a generation backend"):
    P.make_rewriters(cfg, ["back_translation"])
  with pytest.raises(ValueError, match="back_transcription needs rewordbench.paraphrase"):
    P.make_rewriters(cfg, ["back_transcription"])
  cfg.transcriber = "tests.evals.rewordbench.scorers:no_such_function"
  with pytest.raises(ValueError, match="has no function 'no_such_function'"):
    P.make_rewriters(cfg, ["back_transcription"])


def test_lm_generation_continues_each_prompt(tiny_lm_run):
  cfg = ml_collections.ConfigDict({"backend": "lm", "lm": str(tiny_lm_run / "export"),
                                   "max_new_tokens": 4, "temperature": 0.0})
  rewrite = P.make_rewriters(cfg, ["paraphrase"])["paraphrase"]
  out = rewrite(["the quick brown fox", "the lazy dog"], 0)
  assert len(out) == 2 and all(0 < len(o.encode()) <= 4 for o in out)  # 1 to 4 byte tokens
