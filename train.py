"""Train a lloglin model: python train.py --config configs/<file>.py[:variant] --workdir DIR.

Override any config value with --config.<key>=<value>, e.g. --config.model.d_model=512.
Re-running the same command resumes from the newest checkpoint in --workdir.
Multi-host: pass --coordinator_address/--num_processes/--process_id on every process (or set
LLOGLIN_COORDINATOR_ADDRESS, LLOGLIN_NUM_PROCESSES, LLOGLIN_PROCESS_ID).
"""

import json
import logging

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from lloglin.parallel import distributed

config_flags.DEFINE_config_file("config", "configs/mqar.py", "Experiment config file.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and the export go.",
                    required=True)
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
flags.DEFINE_integer("process_id", None, "This process's index (multi-host).")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax reports every save at INFO
  logging.getLogger("lloglin").setLevel(logging.INFO)
  distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  from lloglin.training.trainer import train  # after jax.distributed.initialize
  final = train(FLAGS.config, FLAGS.workdir)
  summary = {k: v for k, v in final.items() if k != "eval_loss_per_position"}
  print(json.dumps({"final": summary}, indent=1))


if __name__ == "__main__":
  app.run(main)
