"""A judge calling any OpenAI-compatible multimodal chat-completions endpoint (httpx).

Each judgement is one request: the principle's pairwise prompt and the two images as PNG data
URLs ("Image A", "Image B"); the reply's text must hold the JSON object the prompt asks for
({"justification", "winner": "A" | "B" | "tie"}). Requests are
- cached on disk by request: the file name is the SHA-256 of the endpoint and the request body
  (never the key), written whole (temporary file + rename), so a rerun sends nothing;
- retried on HTTP 429 and 5xx and on connection errors, `max_retries` times with exponential
  backoff (`backoff` * 2^attempt seconds, or the server's Retry-After when it gives one);
- rate-limited to `requests_per_second` (0: no limit) across threads; the suite runs up to
  `max_concurrency` at a time (judges.judge_pairs' `workers`).
The bearer key is read from the environment variable `api_key_env` when the judge is built and
lives only in the HTTP client's headers: it is never written to the cache, a report, an error
message or a log line. HTTP 401 / 403 and malformed replies raise errors naming the endpoint.
"""

import base64
import hashlib
import io
import json
import os
import re
import tempfile
import threading
import time

import httpx
import numpy as np
from PIL import Image

from lloglin.evals.perception.judges import WINNERS, Judgement
from lloglin.evals.perception.principles import pairwise_prompt


def png_data_url(image_HWC) -> str:
  buf = io.BytesIO()
  Image.fromarray(np.asarray(image_HWC, dtype=np.uint8)).save(buf, format="PNG")
  return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def parse_reply(content: str, *, where: str) -> Judgement:
  """The Judgement in a reply's text: its first {...} object (code fences allowed)."""
  match = re.search(r"\{.*\}", content or "", flags=re.DOTALL)
  try:
    reply = json.loads(match[0]) if match else None
  except json.JSONDecodeError:
    reply = None
  winner = str(reply.get("winner", "")).strip() if isinstance(reply, dict) else ""
  winner = {"a": "A", "b": "B", "tie": "tie"}.get(winner.lower(), winner)
  if winner not in WINNERS:
    raise ValueError(f"{where}: malformed reply: expected a JSON object with \"winner\" in "
                     f"{WINNERS}, got {str(content)[:200]!r}")
  return Judgement(winner, str(reply.get("justification", "")))


class ChatJudge:
  """judge(a, b, principle) -> Judgement through POST {base_url}/chat/completions (module
  docstring)."""

  def __init__(self, base_url: str, model: str, *, api_key_env: str = "", cache_dir: str = "",
               max_retries: int = 5, backoff: float = 1.0, requests_per_second: float = 0.0,
               timeout: float = 120.0, temperature: float = 0.0, max_tokens: int = 512):
    if not base_url.startswith(("http://", "https://")):
      raise ValueError(f"base_url={base_url!r}: expected an http:// or https:// base URL such as "
                       "https://api.openai.com/v1")
    if not model:
      raise ValueError("model: expected the endpoint's model name, got ''")
    if max_retries < 0 or backoff < 0 or requests_per_second < 0:
      raise ValueError(f"max_retries={max_retries}, backoff={backoff}, requests_per_second="
                       f"{requests_per_second}: expected values >= 0")
    headers = {}
    if api_key_env:
      if not os.environ.get(api_key_env):
        raise ValueError(f"api_key_env={api_key_env!r}: that environment variable is not set")
      headers["Authorization"] = f"Bearer {os.environ[api_key_env]}"
    self.endpoint = base_url.rstrip("/") + "/chat/completions"
    self.model, self.api_key_env, self.cache_dir = model, api_key_env, cache_dir
    self.max_retries, self.backoff = max_retries, backoff
    self.interval = 1.0 / requests_per_second if requests_per_second else 0.0
    self.temperature, self.max_tokens = temperature, max_tokens
    self.requests_sent = 0
    self._client = httpx.Client(headers=headers, timeout=timeout)
    self._lock = threading.Lock()
    self._next_start = 0.0

  def __repr__(self):  # the client's headers hold the key: never show them
    return f"ChatJudge({self.endpoint!r}, model={self.model!r})"

  def close(self):
    self._client.close()

  def __call__(self, a, b, principle: str) -> Judgement:
    body = {"model": self.model, "temperature": self.temperature, "max_tokens": self.max_tokens,
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": pairwise_prompt(principle)},
                {"type": "text", "text": "Image A:"},
                {"type": "image_url", "image_url": {"url": png_data_url(a.image)}},
                {"type": "text", "text": "Image B:"},
                {"type": "image_url", "image_url": {"url": png_data_url(b.image)}}]}]}
    text = json.dumps(body, sort_keys=True)
    key = hashlib.sha256((self.endpoint + "\n" + text).encode()).hexdigest()
    cache = os.path.join(self.cache_dir, f"{key}.json") if self.cache_dir else ""
    if cache and os.path.isfile(cache):
      with open(cache) as f:
        return parse_reply(json.load(f)["content"], where=cache)
    content = self._post(text)
    judgement = parse_reply(content, where=self.endpoint)
    if cache:  # only replies that parse are kept: a malformed one is asked again next time
      os.makedirs(self.cache_dir, exist_ok=True)
      fd, tmp = tempfile.mkstemp(dir=self.cache_dir, suffix=".tmp")
      with os.fdopen(fd, "w") as f:
        json.dump({"endpoint": self.endpoint, "model": self.model, "principle": principle,
                   "a": a.id, "b": b.id, "content": content}, f)
      os.replace(tmp, cache)
    return judgement

  def _wait_for_slot(self):
    with self._lock:
      now = time.monotonic()
      start = max(now, self._next_start)
      self._next_start = start + self.interval
    time.sleep(start - now)

  def _post(self, text: str) -> str:
    for attempt in range(self.max_retries + 1):
      self._wait_for_slot()
      self.requests_sent += 1
      try:
        response = self._client.post(self.endpoint, content=text,
                                     headers={"Content-Type": "application/json"})
      except httpx.TransportError as e:
        error, retry_after = f"no reply ({type(e).__name__})", None
      else:
        if response.status_code in (401, 403):
          raise PermissionError(f"{self.endpoint}: HTTP {response.status_code}: the endpoint "
                                f"refused the key (environment variable "
                                f"{self.api_key_env or '(none set)'})")
        if response.status_code == 429 or response.status_code >= 500:
          error, retry_after = f"HTTP {response.status_code}", response.headers.get("Retry-After")
        elif response.status_code != 200:
          raise RuntimeError(f"{self.endpoint}: HTTP {response.status_code}: "
                             f"{response.text[:300]!r}")
        else:
          try:
            return response.json()["choices"][0]["message"]["content"]
          except (ValueError, KeyError, IndexError, TypeError) as e:
            raise ValueError(f"{self.endpoint}: malformed reply: not a chat-completions JSON "
                             f"object: {response.text[:200]!r}") from e
      if attempt == self.max_retries:
        raise RuntimeError(f"{self.endpoint}: {error} after {self.max_retries + 1} attempts")
      delay = self.backoff * 2**attempt
      if retry_after is not None and retry_after.replace(".", "", 1).isdigit():
        delay = float(retry_after)
      time.sleep(delay)
