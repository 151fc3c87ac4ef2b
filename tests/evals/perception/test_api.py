"""The OpenAI-compatible chat judge against a fake endpoint on 127.0.0.1 (never a real API)."""

import http.server
import json
import threading

import numpy as np
import pytest

from lloglin.evals.perception import api, judges
from lloglin.evals.perception.synthetic import Item

KEY = "sk-test-never-written"
GOOD = json.dumps({"choices": [{"message": {"content": '```json\n{"justification": "A has more '
                                                       'shapes", "winner": "A"}\n```'}}]})


class FakeChat(http.server.BaseHTTPRequestHandler):
  """Answers the next scripted (status, body) of `script`, then GOOD; records each request."""
  script, seen = [], []

  def do_POST(self):
    body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
    FakeChat.seen.append((self.path, self.headers.get("Authorization"), body))
    status, reply = FakeChat.script.pop(0) if FakeChat.script else (200, GOOD)
    self.send_response(status)
    self.send_header("Content-Type", "application/json")
    if status == 429:
      self.send_header("Retry-After", "0")
    self.send_header("Content-Length", str(len(reply.encode())))
    self.end_headers()
    self.wfile.write(reply.encode())

  def log_message(self, *args):
    pass


@pytest.fixture(scope="module")
def server():
  httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeChat)
  threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
  yield f"http://127.0.0.1:{httpd.server_port}/v1"
  httpd.shutdown()
  httpd.server_close()


@pytest.fixture
def pair():
  rng = np.random.default_rng(0)
  return [Item(f"img{k}", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), {}) for k in range(2)]


def make(server, tmp_path, monkeypatch, **kw):
  monkeypatch.setenv("PERCEPTION_TEST_KEY", KEY)
  FakeChat.script.clear()
  FakeChat.seen.clear()
  return api.ChatJudge(server, "vlm", api_key_env="PERCEPTION_TEST_KEY",
                       cache_dir=str(tmp_path / "cache"), backoff=0.0, **kw)


def test_retries_then_caches(server, tmp_path, monkeypatch, capsys, pair):
  judge = make(server, tmp_path, monkeypatch, requests_per_second=50)
  FakeChat.script += [(429, "slow down"), (503, "busy")]
  j = judge(*pair, "clutter")
  assert (j.winner, j.justification) == ("A", "A has more shapes")
  assert len(FakeChat.seen) == 3 and judge.requests_sent == 3
  path, auth, body = FakeChat.seen[-1]
  assert (path, auth, body["model"]) == ("/v1/chat/completions", f"Bearer {KEY}", "vlm")
  content = body["messages"][0]["content"]
  assert content[0]["text"].startswith("You are an HCI researcher")
  assert content[2]["image_url"]["url"].startswith("data:image/png;base64,")
  again = make(server, tmp_path, monkeypatch)  # a rerun: the cache answers, nothing is sent
  assert again(*pair, "clutter") == j and FakeChat.seen == [] and again.requests_sent == 0
  assert again(*pair[::-1], "clutter").winner == "A" and len(FakeChat.seen) == 1
  for f in (tmp_path / "cache").iterdir():
    assert KEY not in f.read_text()
  assert KEY not in repr(judge) and KEY not in "".join(capsys.readouterr())


def test_errors(server, tmp_path, monkeypatch, pair):
  judge = make(server, tmp_path, monkeypatch, max_retries=1)
  FakeChat.script += [(401, '{"error": "bad key"}')]
  with pytest.raises(PermissionError, match="HTTP 401.*PERCEPTION_TEST_KEY") as e:
    judge(*pair, "symmetry")
  assert KEY not in str(e.value)
  FakeChat.script += [(500, "x"), (502, "y")]
  with pytest.raises(RuntimeError, match="HTTP 502 after 2 attempts"):
    judge(*pair, "symmetry")
  bad = json.dumps({"choices": [{"message": {"content": "I prefer the left one."}}]})
  FakeChat.script += [(200, "not json"), (200, bad)]
  records, failures = judges.judge_pairs(judge, pair, np.array([[0, 1], [1, 0]]), "symmetry")
  assert records == [] and len(failures) == 2
  assert "malformed reply: not a chat-completions JSON" in failures[0]["error"]
  assert "malformed reply: expected a JSON object" in failures[1]["error"]
  assert not (tmp_path / "cache").exists()  # errors are not cached
  with pytest.raises(ValueError, match="'PERCEPTION_UNSET'.*not set"):
    api.ChatJudge(server, "vlm", api_key_env="PERCEPTION_UNSET")


def test_suite_with_the_api_judge(server, tmp_path, monkeypatch):
  from configs.perception import get_config
  from lloglin.evals import run_suite

  make(server, tmp_path, monkeypatch)
  config = get_config("tiny")
  p = config.perception
  p.update(judge="api", principles=("closure",), num_images=4)
  p.api.update(base_url=server, model="vlm", key_env="PERCEPTION_TEST_KEY", backoff=0.0,
               requests_per_second=0.0, cache_dir=str(tmp_path / "cache"))
  FakeChat.script += [(200, "{}")]  # one malformed reply: recorded, the rest aggregated
  for sent in (6, 1):  # the rerun asks again only for the judgement that failed
    FakeChat.seen.clear()
    res = run_suite("perception", config, out_dir=str(tmp_path / "out"))["results"]
    assert len(FakeChat.seen) == sent
  closure = res["principles"]["closure"]
  assert closure["num_judged"] == 6 and closure["failures"] == []
  assert KEY not in (tmp_path / "out" / "report.json").read_text()
