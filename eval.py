"""Run an evaluation suite; writes <out>/report.json and the suite's PNG figures.

  python eval.py --checkpoint runs/mqar                      # the lm suite, configs/lm.py
  python eval.py --checkpoint runs/text --prompt "ROMEO:" --max_new_tokens 200 --top_p 0.95
  python eval.py --suite NAME --config configs/NAME.py:tiny --config.KEY=VALUE [--checkpoint DIR]

--suite defaults to lm, whose config defaults to configs/lm.py; its keys have shorthand flags
(--prompt=X is --config.prompt=X). --checkpoint takes a training workdir, its checkpoints/ folder
or a params-only export. --out defaults to <checkpoint>/eval/<suite> (runs/eval/<suite> without a
checkpoint).
"""

import logging
import os

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from lloglin.evals import check_run, run_suite
from lloglin.evals.report import REPORT_FILE

LM_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "lm.py")

flags.DEFINE_string("suite", "lm", "Evaluation suite (a package of lloglin/evals).")
config_flags.DEFINE_config_file("config", LM_CONFIG, "The suite's config file.", lock_config=True)
flags.DEFINE_string("checkpoint", None, "Workdir, checkpoints/ folder or export to evaluate.")
flags.DEFINE_string("out", None, "Output folder (default <checkpoint>/eval/<suite>).")
SHORTHANDS = {name: define(name, None, f"Sets --config.{name} (see configs/lm.py).")
              for define, names in ((flags.DEFINE_integer, "num_batches batch_size max_new_tokens "
                                                           "top_k seed"),
                                    (flags.DEFINE_float, "temperature top_p"),
                                    (flags.DEFINE_string, "data_path prompt decode_impl"))
              for name in names.split()}
FLAGS = flags.FLAGS


def main(argv):
  del argv
  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax reports every save at INFO
  logging.getLogger("lloglin").setLevel(logging.INFO)
  config = FLAGS.config
  try:
    check_run(FLAGS.suite, config, FLAGS.checkpoint)
    for name, flag in SHORTHANDS.items():
      if flag.value is not None:
        if name not in config:
          raise ValueError(f"--{name} sets config.{name}, which suite {FLAGS.suite!r} lacks")
        config[name] = flag.value
  except ValueError as e:
    raise app.UsageError(str(e))
  out = FLAGS.out or (os.path.join(FLAGS.checkpoint, "eval", FLAGS.suite) if FLAGS.checkpoint
                      else os.path.join("runs", "eval", FLAGS.suite))
  run_suite(FLAGS.suite, config, checkpoint=FLAGS.checkpoint, out_dir=out)
  print(f"wrote {os.path.join(out, REPORT_FILE)}")


if __name__ == "__main__":
  app.run(main)
