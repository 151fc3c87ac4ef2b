"""Every command shown in README.md and docs/ works as written (tests/docs_commands.py says how).

Fast: each command's flags, config file, variant and config keys are checked against the command
line's own definitions (absl command lines in one subprocess per script). Slow: the documented
training commands that run offline on one CPU device run end to end at tiny size (their config's
`:tiny` variant, a few steps, a local corpus for placeholder paths) in one shared directory, and
the documented evaluations of their checkpoints run after them. Commands that need network
(tensorflow-datasets, pip downloads), several devices, or a checkpoint no documented command
writes are checked for their flags only; the run test prints which and why.
"""

import json
import os
import subprocess
import sys

import pytest

from tests import docs_commands as dc

COMMANDS = dc.all_commands()
ABSL = [c for c in COMMANDS if dc.program(c.argv) == "python"
        and dc.is_absl_cli(dc.python_target(c.argv)[0])]
CHECKED = [c for c in COMMANDS if dc.program(c.argv) in ("python", "make", "pip")]
# Wrong on purpose: the checks must reject each of these (flag, config key, file, variant).
PROBES = [
    ("python", "train.py", "--config", "configs/mqar.py:tiny", "--workdr", "/tmp/x"),
    ("python", "train.py", "--config", "configs/mqar.py:tiny", "--workdir", "/tmp/x",
     "--config.train.num_stepz=2"),
    ("python", "train.py", "--config", "configs/no_such_config.py", "--workdir", "/tmp/x"),
    ("python", "train.py", "--config", "configs/mqar.py:huge", "--workdir", "/tmp/x"),
    ("python", "eval.py", "--checkpoint", "/tmp/x", "--temperatur", "0.8"),
]


def drive(tmp, commands, run=False):
  """{command: result} from the driver, one subprocess per command line, in file order."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)  # one CPU device, as a user's machine
  results = {}
  clis = dict.fromkeys(dc.python_target(c.argv)[0] for c in commands)
  for cli in sorted(clis, key=lambda cli: cli == "eval.py"):  # evaluations read trained runs
    jobs = [c for c in commands if dc.python_target(c.argv)[0] == cli]
    jobs_path, out_path = tmp / "jobs.json", tmp / "results.json"
    jobs_path.write_text(json.dumps([{"argv": list(c.argv)} for c in jobs]))
    proc = subprocess.run([sys.executable, "-m", "tests.docs_commands", cli, str(jobs_path),
                           str(out_path), str(tmp), *(["--run"] if run else [])],
                          cwd=dc.ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results.update(zip(jobs, json.loads(out_path.read_text()), strict=True))
  return results


@pytest.fixture(scope="module")
def parsed(tmp_path_factory):
  probes = [dc.Command(f"probe {i}", argv, in_table=False) for i, argv in enumerate(PROBES)]
  return drive(tmp_path_factory.mktemp("docs_check"), ABSL + probes)


@pytest.mark.parametrize("command", CHECKED, ids=lambda c: f"{c.source} {c.text[:60]}")
def test_documented_command_is_valid(command, parsed):
  if command in parsed:
    result = parsed[command]
    assert result["parsed"], f"{command.source}: {command.text}\n{result['error']}"
  else:
    assert not dc.static_problems(command), dc.static_problems(command)


def test_the_checks_reject_wrong_commands(parsed):
  for argv in PROBES:
    result = next(r for c, r in parsed.items() if c.argv == argv)
    assert not result["parsed"] and result["error"], argv
  wrong = [("make", "trian"), ("pip", "install", "-r", "requirements-none.txt"),
           ("pip", "install", "-e", ".[no_such_extra]"),
           ("pip", "install", "lloglin[gpu,no_such_extra] @ git+https://example.org/lloglin"),
           ("pip", "install", "not_lloglin @ git+https://example.org/lloglin"),
           ("python", "-m", "pytest", "tests/no_such_test.py"),
           ("python", "benchmarks/bench_mixers.py", "--seqlen", "64"),
           ("python", "-m", "experiments.no_such_driver")]
  for argv in wrong:
    assert dc.static_problems(dc.Command("probe", argv, in_table=False)), argv


def test_extraction_joins_lines_drops_comments_and_reads_tables():
  text = "\n".join([
      "```bash", "python train.py --config configs/mqar.py:tiny \\",
      "    --workdir /tmp/a   # a comment", "", "make test", "```",
      "```python", "python not_a_shell_command.py", "```",
      "| feature | `python eval.py --checkpoint x --prompt \"A B\"` | `not a command` |"])
  commands = dc.extract("doc.md", text)
  assert [(c.source, c.argv, c.in_table) for c in commands] == [
      ("doc.md:2", ("python", "train.py", "--config", "configs/mqar.py:tiny", "--workdir",
                    "/tmp/a"), False),
      ("doc.md:5", ("make", "test"), False),
      ("doc.md:10", ("python", "eval.py", "--checkpoint", "x", "--prompt", "A B"), True)]
  readme = [c for c in COMMANDS if c.source.startswith("README.md:") and not c.in_table]
  assert {"train.py", "eval.py", "train", "test"} <= {c.argv[1] for c in readme}
  # The entry points the README documents (in its code blocks, so the slow test runs them).
  shown = {"--suite": "eval.py --suite", "configs/reward.py": "the reward task",
           "pip install -e": "the editable install", "git+https://": "the install from git"}
  missing = [what for key, what in shown.items() if not any(key in c.text for c in readme)]
  assert not missing, missing


@pytest.mark.slow
def test_documented_commands_run_at_tiny_size(tmp_path, capsys):
  # A command shown in both the README and a docs page runs once (every copy is still parsed by
  # test_documented_command_is_valid).
  first = {}
  for c in ABSL:
    if not c.in_table:
      first.setdefault(c.text, c)
  runnable = list(first.values())
  results = drive(tmp_path, runnable, run=True)
  failed = [f"{c.source}: {c.text}\n{r['error']}" for c, r in results.items() if r["error"]]
  assert not failed, "\n\n".join(failed)
  ran = [c for c, r in results.items() if r["ran"]]
  with capsys.disabled():
    for c, r in results.items():
      print(f"\nran in {r['seconds']} s: {c.source}: {c.text}" if r["ran"] else
            f"\nflags only ({r['skipped']}): {c.source}: {c.text}")
  kinds = {dc.python_target(c.argv)[0] for c in ran}
  assert {"train.py", "eval.py"} <= kinds, f"ran {[c.text for c in ran]}"
