"""The shell commands shown in README.md and docs/: extraction, static checks, and a driver that
parses (and runs) the absl command lines with their own flag definitions.

Extracted: every line of a ```bash block (backslash continuations joined, comments dropped), and
every inline code span of a markdown table row that starts with python, make or pip.

  python train.py / eval.py / -m lloglin.training.hybrid    absl command lines: parsed by the
        driver below, in a subprocess per command line, with the script's own flags and config
        file (so an unknown flag, a missing config file or variant and an unknown config key fail)
  python <script or -m module>    the script or module exists; argparse flags appear in its source
  python -m pytest PATHS          the paths exist
  make TARGET                     the Makefile has the target
  pip install ...                 -e .: a pyproject.toml; -r FILE: the file; "NAME[extras] @ URL"
                                  and .[extras]: NAME is the project's name, the extras exist
                                  (nothing is installed: that needs network)

Driver: `python -m tests.docs_commands CLI JOBS_JSON OUT_JSON WORK_DIR [--run]`. It executes the
CLI (a script path, or `-m module`) as __main__ with absl's `app.run` replaced, so that only the
flags get defined, then parses each job's argv. With --run it also runs, at tiny size, the jobs
that can run offline on one CPU device (see `tiny_train_argv` and `tiny_eval_argv`).
"""

import dataclasses
import glob
import importlib.util
import json
import os
import re
import runpy
import shlex
import sys
import tomllib
import time
from unittest import mock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ABSL_MODULES = ("lloglin.training.hybrid",)  # absl CLIs run with -m (train.py, eval.py by path)
# Overrides that make a config's training a few steps long (those of its keys that exist).
TINY_TRAIN = {"num_steps": 2, "eval_every": 2, "eval_steps": 1, "checkpoint_every": 2,
              "log_every": 1, "progress_bar": False}
MULTI_DEVICE = ("--coordinator_address", "--num_processes", "--process_id", "--config.mesh.")
CORPUS = "the quick brown fox jumps over the lazy dog.\nROMEO: and so to bed.\n" * 400


@dataclasses.dataclass(frozen=True)
class Command:
  source: str                 # "README.md:42"
  argv: tuple[str, ...]
  in_table: bool              # an inline code span of a table row (flag checks only, not run)

  @property
  def text(self) -> str:
    return shlex.join(self.argv)


def doc_files() -> list[str]:
  """README.md and every markdown file under docs/, relative to the repository root."""
  docs = sorted(glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True))
  return ["README.md"] + [os.path.relpath(p, ROOT) for p in docs]


def extract(path: str, text: str | None = None) -> list[Command]:
  """The commands of one markdown file (see the module docstring)."""
  if text is None:
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
      text = f.read()
  commands, in_bash, pending, start = [], False, "", 0
  for number, line in enumerate(text.splitlines(), 1):
    stripped = line.strip()
    if stripped.startswith("```"):
      in_bash = not in_bash and stripped[3:].strip() in ("bash", "sh", "shell")
      continue
    if in_bash:
      start = start or number
      if stripped.endswith("\\"):
        pending += stripped[:-1] + " "
        continue
      argv = shlex.split(pending + stripped, comments=True)
      if argv:
        commands.append(Command(f"{path}:{start}", tuple(argv), in_table=False))
      pending, start = "", 0
    elif stripped.startswith("|"):
      for span in re.findall(r"`([^`]+)`", line):
        argv = shlex.split(span)
        if argv and program(argv) in ("python", "make", "pip"):
          commands.append(Command(f"{path}:{number}", tuple(argv), in_table=True))
  return commands


def all_commands() -> list[Command]:
  return [c for path in doc_files() for c in extract(path)]


def program(argv) -> str:
  name = os.path.basename(argv[0])
  if re.fullmatch(r"python(3(\.\d+)?)?", name):
    return "python"
  return {"pip3": "pip"}.get(name, name)


def python_target(argv) -> tuple[str, list[str]]:
  """(script path or '-m module', the arguments after it) of a python command."""
  rest = list(argv[1:])
  if rest[:1] == ["-m"]:
    return "-m " + rest[1], rest[2:]
  return rest[0], rest[1:]


def target_source(target: str) -> str | None:
  """Path of the file a python target runs, or None when it does not exist."""
  if target.startswith("-m "):
    name = target[3:]
    if name == "pytest":
      return None
    spec = importlib.util.find_spec(name) if _importable_parent(name) else None
    return spec.origin if spec is not None and spec.origin else None
  path = os.path.join(ROOT, target)
  return path if os.path.isfile(path) else None


def _importable_parent(name: str) -> bool:
  parent = name.rpartition(".")[0]
  return not parent or importlib.util.find_spec(parent) is not None


def is_absl_cli(target: str) -> bool:
  return target in ("train.py", "eval.py") or target[3:] in ABSL_MODULES


def static_problems(command: Command) -> list[str]:
  """What is wrong with a non-absl command (empty when nothing is); absl ones go to the driver."""
  argv, kind = command.argv, program(command.argv)
  if kind == "make":
    with open(os.path.join(ROOT, "Makefile"), encoding="utf-8") as f:
      targets = set(re.findall(r"^([A-Za-z0-9_.-]+):", f.read(), flags=re.M))
    return [f"make target {t!r} not in the Makefile ({sorted(targets)})"
            for t in argv[1:] if "=" not in t and not t.startswith("-") and t not in targets]
  if kind == "pip":
    return _pip_problems(argv)
  target, args = python_target(argv)
  if target == "-m pytest":
    paths = [a.split("::")[0] for a in args if a.startswith("tests") or a.endswith(".py")]
    return [f"pytest path {p!r} does not exist" for p in paths
            if not os.path.exists(os.path.join(ROOT, p))]
  source = target_source(target)
  if source is None:
    return [f"{target} does not exist"]
  with open(source, encoding="utf-8") as f:
    code = f.read()
  flags = [a.split("=")[0] for a in args if a.startswith("--")]
  return [f"{target} defines no {flag}" for flag in flags
          if f'"{flag}"' not in code and f"'{flag}'" not in code]


def _pip_problems(argv) -> list[str]:
  args = list(argv[2:]) if argv[1:2] == ("install",) else None
  if args is None:
    return [f"only `pip install` is checked, got {shlex.join(argv)!r}"]
  problems = []
  for i, arg in enumerate(args):
    prev = args[i - 1] if i else ""
    if prev == "-e" and arg == "." and not os.path.exists(os.path.join(ROOT, "pyproject.toml")):
      problems.append("pip install -e . needs a pyproject.toml at the repository root")
    elif prev == "-r" and not os.path.exists(os.path.join(ROOT, arg)):
      problems.append(f"requirements file {arg!r} does not exist")
    elif re.fullmatch(r"\.\[.*\]", arg) or " @ " in arg:  # .[extras] or "name[extras] @ URL"
      requirement = arg.split(" @ ")[0].strip()
      name, _, extras = requirement.partition("[")
      if name != "." and name != project().get("name"):
        problems.append(f"pip installs {name!r}, but the project is {project().get('name')!r}")
      known = project().get("optional-dependencies", {})
      problems += [f"pyproject.toml defines no extra {extra!r} (has {sorted(known)})"
                   for extra in filter(None, extras.rstrip("]").split(",")) if extra not in known]
  return problems


def project() -> dict:
  """The [project] table of pyproject.toml ({} without one)."""
  path = os.path.join(ROOT, "pyproject.toml")
  if not os.path.exists(path):
    return {}
  with open(path, "rb") as f:
    return tomllib.load(f).get("project", {})


# ------------------------------------------------------------------------------------------------
# The driver (runs in its own process: the CLI's flags are defined in absl's global FlagValues)


def mapped_dir(work: str, kind: str, doc_path: str) -> str:
  """Where a documented workdir / checkpoint path lives in this test: the same for both CLIs."""
  return os.path.join(work, kind, re.sub(r"[^A-Za-z0-9_.-]+", "_", doc_path.strip("/")))


def flag_value(argv, name: str) -> str | None:
  """The last value of --name (as `--name=v` or `--name v`) in argv, or None."""
  value = None
  for i, arg in enumerate(argv):
    if arg == f"--{name}" and i + 1 < len(argv):
      value = argv[i + 1]
    elif arg.startswith(f"--{name}="):
      value = arg.split("=", 1)[1]
  return value


def replace_flag(argv, name: str, value: str) -> list[str]:
  """argv with every --name value replaced by `value` (the flag kept where it was)."""
  out, skip = [], False
  for i, arg in enumerate(argv):
    if skip:
      skip = False
    elif arg == f"--{name}" and i + 1 < len(argv):
      out += [arg, value]
      skip = True
    elif arg.startswith(f"--{name}="):
      out.append(f"--{name}={value}")
    else:
      out.append(arg)
  return out


def local_path(argv, name: str, corpus: str) -> list[str]:
  """Replaces a documented placeholder path (one that does not exist here) by the test corpus."""
  value = flag_value(argv, name)
  return argv if value is None or os.path.exists(value) else replace_flag(argv, name, corpus)


def has_tiny_variant(config_file: str) -> bool:
  spec = importlib.util.spec_from_file_location("_docs_config", config_file)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    module.get_config("tiny")
  except Exception:  # noqa: BLE001 - any failure means: no usable tiny variant
    return False
  return True


def tiny_train_argv(argv, work: str, corpus: str, train_keys) -> tuple[list[str] | None, str]:
  """(argv of the same training at tiny size, "") or (None, why it is not run). train_keys: the
  keys of the parsed config's `train` section."""
  if any(a.startswith(MULTI_DEVICE) for a in argv):
    return None, "needs several devices or processes"
  if flag_value(argv, "config.init_from"):
    return None, "starts from another run's export, whose shapes the tiny variant does not match"
  config_file = (flag_value(argv, "config") or "").partition(":")[0]
  if not config_file or not has_tiny_variant(config_file):
    return None, f"{config_file or 'the default config'} has no :tiny variant"
  out = replace_flag(argv, "config", f"{config_file}:tiny")
  out = replace_flag(out, "workdir", mapped_dir(work, "workdirs", flag_value(argv, "workdir")))
  tiny = [f"--config.train.{k}={v}" for k, v in TINY_TRAIN.items() if k in train_keys]
  return local_path(out, "config.data.path", corpus) + tiny, ""


def tiny_eval_argv(argv, work: str, corpus: str, known) -> tuple[list[str] | None, str]:
  """Like tiny_train_argv for an evaluation of a documented checkpoint; known: the flags this
  command may set (the CLI's, less the config shorthands its suite's config lacks)."""
  if flag_value(argv, "checkpoint") is None:
    return None, "evaluates no --checkpoint"
  checkpoint = mapped_dir(work, "workdirs", flag_value(argv, "checkpoint"))
  if not os.path.isdir(checkpoint):
    return None, "no documented train command wrote this checkpoint"
  out = local_path(replace_flag(argv, "checkpoint", checkpoint), "data_path", corpus)
  limits = {"out": f"{checkpoint}_eval", "max_new_tokens": 4,
            "num_batches": 0 if flag_value(argv, "num_batches") == "0" else 1}
  return out + [f"--{k}={v}" for k, v in limits.items() if k in known], ""


def drive(cli: str, jobs: list[dict], work: str, run: bool) -> list[dict]:
  """Parses every job's argv with the CLI's flags; with `run`, runs those that can at tiny size.
  Returns one dict per job: parsed (bool), error, ran (bool), skipped (why not run)."""
  from absl import app, flags

  captured = {}
  with mock.patch.object(app, "run", lambda main, *a, **k: captured.setdefault("main", main)):
    if cli.startswith("-m "):
      runpy.run_module(cli[3:], run_name="__main__", alter_sys=True)
    else:
      runpy.run_path(os.path.join(ROOT, cli), run_name="__main__")
  FLAGS = flags.FLAGS
  corpus = os.path.join(work, "corpus.txt")
  with open(corpus, "w", encoding="utf-8") as f:
    f.write(CORPUS)

  base_flags = set(FLAGS)

  def parse(argv):
    """Parses a documented command (python + script or -m module + flags) as the CLI would."""
    for name in set(FLAGS) - base_flags:  # a config's override flags of the previous parse
      delattr(FLAGS, name)
    target, args = python_target(argv)
    sys.argv = [target.removeprefix("-m ")] + args  # ml_collections reads overrides from here
    FLAGS.unparse_flags()
    FLAGS(sys.argv)
    if "config" in FLAGS:
      FLAGS.config.to_dict()  # a config file that fails to load only raises when read

  results = []
  for job in jobs:
    result = {"parsed": False, "ran": False, "skipped": "", "error": ""}
    results.append(result)
    try:
      parse(job["argv"])
      result["parsed"] = True
      if not run:
        continue
      if "workdir" in FLAGS and "checkpoint" not in FLAGS:
        argv, result["skipped"] = tiny_train_argv(job["argv"], work, corpus,
                                                  set(FLAGS.config.train.keys()))
      else:
        config = FLAGS.config if "config" in FLAGS else {}
        shorthands = {"num_batches", "max_new_tokens"}  # eval.py's, set in the suite's config
        known = {f for f in FLAGS if f not in shorthands or f in config}
        argv, result["skipped"] = tiny_eval_argv(job["argv"], work, corpus, known)
      if argv is None:
        continue
      parse(argv)
      data = FLAGS.config.data if "config" in FLAGS and "workdir" in FLAGS else None
      if data is not None and data.source == "text" and not data.path:
        result["skipped"] = "reads a tensorflow-datasets corpus (network)"
        continue
      start = time.perf_counter()
      captured["main"](sys.argv[:1])
      result["ran"], result["seconds"] = True, round(time.perf_counter() - start, 1)
    except BaseException as e:  # noqa: BLE001 - SystemExit and flag errors are results here
      result["error"] = f"{type(e).__name__}: {e}"[-3000:]
  return results


def main():
  cli, jobs_path, out_path, work = sys.argv[1:5]
  run = "--run" in sys.argv[5:]
  with open(jobs_path, encoding="utf-8") as f:
    jobs = json.load(f)
  results = drive(cli, jobs, work, run)
  with open(out_path, "w", encoding="utf-8") as f:
    json.dump(results, f)


if __name__ == "__main__":
  main()
