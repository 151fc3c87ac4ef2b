"""Every optim.name trains through the real loop, and its checkpoints load back for eval."""

import os

import numpy as np
import pytest

from lloglin.models import count_params
from lloglin.training import trainer
from lloglin.training.loading import load_model
from lloglin.training.metrics import read_metrics
from tests.training.test_train import tiny_config

CASES = {
    "galore": dict(name="galore"),
    "random_sketch": dict(name="random_sketch", projection="orthogonal"),
    "kronecker": dict(name="kronecker", projection="gaussian"),
    "onesided_lora_svd": dict(name="onesided_lora", projection="svd", refresh_policy="reset"),
    "onesided_lora_gaussian": dict(name="onesided_lora", projection="gaussian"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_low_rank_methods_train_log_memory_and_reload(tmp_path, case):
  cfg = tiny_config(num_steps=12)
  cfg.optim.rank = 4
  cfg.optim.refresh_every = 5  # refreshes at steps 5 and 10, inside the jitted step
  for key, value in CASES[case].items():
    setattr(cfg.optim, key, value)
  final = trainer.train(cfg, str(tmp_path))
  assert np.isfinite(final["loss"]) and np.isfinite(final["eval_loss"])
  records = read_metrics(os.path.join(tmp_path, "metrics.jsonl"))
  memory = next(r for r in records if "optimizer_bytes/state_total" in r)
  batch = np.arange(1, 17, dtype=np.int32)[None] % 60
  from_checkpoint, _ = load_model(str(tmp_path))
  adamw_bytes = 2 * 4 * count_params(from_checkpoint)  # two float32 moments per parameter
  assert 0 < memory["optimizer_bytes/state_low_rank"]
  assert memory["optimizer_bytes/state_total"] < adamw_bytes

  from_export, _ = load_model(str(tmp_path / "export"))
  np.testing.assert_allclose(np.asarray(from_checkpoint(batch)), np.asarray(from_export(batch)),
                             rtol=1e-6, atol=1e-6)


def test_unknown_optimizer_lists_the_valid_names(tmp_path):
  cfg = tiny_config(num_steps=2)
  cfg.optim.name = "adafactorz"
  with pytest.raises(ValueError, match="adafactorz.*adamw"):
    trainer.train(cfg, str(tmp_path))
