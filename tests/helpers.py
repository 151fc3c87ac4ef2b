"""Running the repository's scripts as a user does (a subprocess on one CPU device)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(script, *args, env=None, timeout=300):
  """`python script args...` from the repository root; returns the CompletedProcess."""
  full_env = dict(os.environ, JAX_PLATFORMS="cpu", **(env or {}))
  full_env.pop("XLA_FLAGS", None)  # one CPU device per process
  return subprocess.run([sys.executable, script, *args], cwd=ROOT, env=full_env,
                        capture_output=True, text=True, timeout=timeout)
