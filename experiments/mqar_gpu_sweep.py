"""MQAR at equal width over mixers x pairs x learning rates x seeds, several runs at a time on one
device (GPU or CPU), within a wall-clock deadline; then the table and plot of
experiments/run_mixer_experiments.py (best accuracy over learning rates, as Zoology and the
log-linear paper report). From the repository root:

  python -m experiments.mqar_gpu_sweep --workers 8 --deadline 255 \
      --workdir /tmp/mqar --report_dir /tmp/mqar/report       # defaults: see --help

Each run is run_mixer_experiments.run in its own process (this script with --job), config
configs/mqar_sweep.py:<mixer>,long (or :<mixer> with --variant short), saving
<workdir>/mqar_lrsweep[_long]/<mixer>_kv<N>_lr<lr>_seed<s>/ (run.json, metrics.jsonl, result.json;
copy these back under runs/mixer_experiments/ and `python -m experiments.run_mixer_experiments
report` redraws).
Workers take GPU memory on demand (XLA_PYTHON_CLIENT_PREALLOCATE=false), each at most a share of
it, and share a persistent compilation cache: the pairs and the seed change only the data, so a
job whose program (mixer, learning rate) a running job is still compiling waits behind jobs with
other programs. Jobs start in the order learning rate (as listed), pairs, mixer, seed; none starts
with less than --start_margin seconds left, and at --deadline the running ones are killed. A run
killed (or failed) after an evaluation (every --eval_every steps) counts with that evaluation,
marked in the table; <workdir>/<experiment>/sweep_status.json lists every job's fate.
"""

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from typing import NamedTuple

from experiments import run_mixer_experiments as rme

EXPERIMENT = "mqar_lrsweep"
COMMAND = "python -m experiments.mqar_gpu_sweep "
# Workers run this module with `-m`: the repository root (above experiments/) must be importable.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Job(NamedTuple):
  mixer: str
  kv: int
  lr: float
  seed: int

  @property
  def name(self) -> str:
    return f"{self.mixer}_kv{self.kv}_lr{self.lr:g}_seed{self.seed}"

  @property
  def program(self) -> tuple:
    """What the compiled train and eval steps depend on (the pairs and seed are only data)."""
    return self.mixer, self.lr


def experiment_name(args) -> str:
  return EXPERIMENT + ("_long" if args.variant == "long" else "")


def jobs(args) -> list[Job]:
  return [Job(m, kv, lr, seed) for lr in args.lrs for kv in args.kv for m in args.mixers
          for seed in args.seeds]


def train_job(args, job: Job):
  """One run, in this process (the worker side of --job)."""
  cfg = rme.load_config("mqar_sweep", job.mixer + (",long" if args.variant == "long" else ""),
                        args.set)
  cfg.data.mqar.num_kv_pairs = job.kv
  cfg.optim.learning_rate = job.lr
  cfg.seed = job.seed
  cfg.train.num_steps = cfg.train.checkpoint_every = args.steps
  cfg.train.eval_every = min(args.eval_every, args.steps)
  rme.run(experiment_name(args), job.name, cfg, args.workdir)


def worker_env(args) -> dict:
  env = dict(os.environ, PYTHONUNBUFFERED="1", XLA_PYTHON_CLIENT_PREALLOCATE="false",
             XLA_PYTHON_CLIENT_MEM_FRACTION=f"{args.mem_fraction or 0.8 / args.workers:.3f}")
  if args.compile_cache:
    env.update(JAX_COMPILATION_CACHE_DIR=os.path.abspath(args.compile_cache),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p)
  return env


def next_job(pending: list[Job], running: dict) -> Job:
  """The first pending job whose program no running job is compiling, else the first."""
  busy = {job.program for job, _, _ in running.values()}
  return next((j for j in pending if j.program not in busy), pending[0])


def sweep(args, argv: list[str]) -> dict:
  """Runs the jobs (those with a result.json are done already) and returns each one's status.

  SIGTERM (e.g. from `timeout`) moves the deadline to now: the running jobs are killed, and the
  status and the report are still written.
  """
  root = os.path.join(args.workdir, experiment_name(args))
  env = worker_env(args)
  start = time.monotonic()
  clock = {"deadline": start + args.deadline}
  status, pending, running = {}, [], {}  # running: Popen -> (job, start time, log file)
  for job in jobs(args):
    if os.path.exists(os.path.join(root, job.name, "result.json")):
      status[job.name] = {"status": "done before"}
    else:
      pending.append(job)

  def say(text):
    print(f"[sweep {time.monotonic() - start:5.0f} s] {text}", flush=True)

  def finish(proc, reason=None):
    job, t0, log = running.pop(proc)
    log.close()
    seconds = round(time.monotonic() - t0, 1)
    if reason is None and proc.returncode == 0:
      status[job.name] = {"status": "done", "seconds": seconds}
      say(f"done {job.name} ({seconds:.0f} s)")
      return
    reason = reason or f"exit code {proc.returncode} (see log.txt)"
    with open(os.path.join(root, job.name, "stopped.json"), "w") as f:
      json.dump({"reason": reason, "seconds": seconds}, f)
    status[job.name] = {"status": reason, "seconds": seconds}
    say(f"{job.name}: {reason}")

  def kill(proc, reason):
    os.killpg(proc.pid, signal.SIGKILL)  # the worker's own session: it and nothing else
    proc.wait()
    finish(proc, reason)

  previous = signal.signal(signal.SIGTERM,
                           lambda *_: clock.update(deadline=time.monotonic()))
  try:
    while pending or running:
      now = time.monotonic()
      for proc in list(running):
        if proc.poll() is not None:
          finish(proc)
        elif now >= clock["deadline"]:
          kill(proc, "killed at the deadline")
      while (pending and len(running) < args.workers
             and clock["deadline"] - now > args.start_margin):
        job = next_job(pending, running)
        pending.remove(job)
        os.makedirs(os.path.join(root, job.name), exist_ok=True)
        log = open(os.path.join(root, job.name, "log.txt"), "a")
        proc = subprocess.Popen([sys.executable, "-m", __spec__.name, *argv, "--job",
                                 f"{job.mixer},{job.kv},{job.lr!r},{job.seed}"],
                                stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        running[proc] = (job, time.monotonic(), log)
        say(f"start {job.name}")
      if not running and clock["deadline"] - now <= args.start_margin:
        break
      time.sleep(0.2)
  finally:  # also on an exception or Ctrl-C here: no worker outlives the sweep
    for proc in list(running):
      kill(proc, "killed: the sweep stopped")
    signal.signal(signal.SIGTERM, previous)
    for job in pending:
      status[job.name] = {"status": "skipped: not started before the deadline"}
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "sweep_status.json"), "w") as f:
      json.dump({"command": rme.COMMAND, "seconds": round(time.monotonic() - start, 1),
                 "jobs": status}, f, indent=1)
  return status


def parse_args(argv):
  floats = lambda s: [float(x) for x in s.split(",")]  # noqa: E731
  ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--variant", choices=("long", "short"), default="long",
                 help="configs/mqar_sweep.py:<mixer>,long (256 tokens) or :<mixer> (64 tokens)")
  p.add_argument("--mixers", type=lambda s: s.split(","), default=list(rme.MQAR_MIXERS))
  p.add_argument("--kv", type=ints, default=[16, 32, 64])
  p.add_argument("--lrs", type=floats, default=[3e-3, 1e-2, 1e-3],
                 help="learning rates, in the order their jobs start")
  p.add_argument("--seeds", type=ints, default=[0])
  p.add_argument("--steps", type=int, default=2000)
  p.add_argument("--eval_every", type=int, default=500,
                 help="evaluations before the last, so that a killed run still reports")
  p.add_argument("--workers", type=int, default=8, help="runs at a time")
  p.add_argument("--deadline", type=float, default=255.0,
                 help="seconds from the start: running jobs are killed then")
  p.add_argument("--start_margin", type=float, default=45.0,
                 help="no job starts with fewer seconds than this left before the deadline")
  p.add_argument("--mem_fraction", type=float, default=0.0,
                 help="GPU memory cap of each worker (default 0.8 / workers)")
  p.add_argument("--compile_cache", default="",
                 help="persistent compilation cache shared by the workers (default "
                      "<workdir>/jax_cache; 'none' turns it off)")
  p.add_argument("--workdir", default="runs/mixer_experiments")
  p.add_argument("--report_dir", default=rme.RESULTS_DIR)
  p.add_argument("--set", action="append", default=[],
                 help="config override key=value (repeatable), e.g. model.mixer_impl=xla")
  p.add_argument("--job", default="", help=argparse.SUPPRESS)  # mixer,kv,lr,seed: one run
  args = p.parse_args(argv)
  for name in ("mixers", "kv", "lrs", "seeds"):
    if not getattr(args, name):
      raise ValueError(f"--{name} is empty; expected a comma-separated list")
  if bad := sorted(set(args.mixers) - set(rme.MQAR_MIXERS)):
    raise ValueError(f"--mixers has {bad}; expected some of {rme.MQAR_MIXERS}")
  if args.workers < 1 or args.steps < 1 or args.eval_every < 1:
    raise ValueError(f"--workers={args.workers}, --steps={args.steps}, "
                     f"--eval_every={args.eval_every}: each must be >= 1")
  args.compile_cache = {"": os.path.join(args.workdir, "jax_cache"),
                        "none": ""}.get(args.compile_cache, args.compile_cache)
  return args


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  args = parse_args(argv)
  if args.job:
    rme.COMMAND = COMMAND + shlex.join(argv[:argv.index("--job")])
    mixer, kv, lr, seed = args.job.split(",")
    train_job(args, Job(mixer, int(kv), float(lr), int(seed)))
    return
  # This process only schedules and writes the report: it leaves the accelerator to the workers.
  rme.jax.config.update("jax_platforms", "cpu")
  rme.COMMAND = COMMAND + shlex.join(argv)
  status = sweep(args, argv)
  counts = {}
  for s in status.values():
    counts[s["status"]] = counts.get(s["status"], 0) + 1
  print("sweep:", ", ".join(f"{n} {k}" for k, n in counts.items()), flush=True)
  rme.report(experiment_name(args), args.workdir, args.report_dir)


if __name__ == "__main__":
  main()
