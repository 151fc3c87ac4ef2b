"""The real trainer on data / FSDP / tensor meshes gives the losses of one device; two processes
with a (data x tensor) mesh give them too; hybrid ladder conversion then fine-tuning."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from configs import mqar
from lloglin.models.decoder import with_residual_mode
from lloglin.parallel import mesh as mesh_lib
from lloglin.training import hybrid, trainer
from lloglin.training.checkpoint import read_config
from lloglin.training.loading import load_model
from lloglin.training.metrics import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = dict(d_model=32, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64, num_layers=2)


def _config(num_steps=3, mesh=None, **model):
  cfg = mqar.get_config("tiny")
  cfg.train.num_steps = num_steps
  cfg.train.log_every = 1
  cfg.train.eval_every = cfg.train.checkpoint_every = num_steps
  cfg.train.eval_steps = 1
  cfg.train.async_checkpointing = False
  cfg.optim.warmup_steps = 1
  for k, v in dict(MODEL, **model).items():
    cfg.model[k] = v
  for k, v in (mesh or {}).items():
    cfg.mesh[k] = v
  return cfg


def _losses(workdir):
  return [r["loss"] for r in read_metrics(os.path.join(workdir, "metrics.jsonl")) if "loss" in r]


def _train(tmp_path, name, **kw):
  trainer.train(_config(**kw), str(tmp_path / name))
  return _losses(tmp_path / name)


ONE_DEVICE = dict(data=1, fsdp=1, tensor=1)


@pytest.mark.slow
def test_fsdp_and_tensor_meshes_train_like_one_device(tmp_path):
  ref = _train(tmp_path, "one", mesh=ONE_DEVICE)
  assert len(ref) == 3 and np.isfinite(ref).all()
  mesh = dict(data=2, fsdp=2, tensor=2)
  np.testing.assert_allclose(_train(tmp_path, "dp_fsdp_tp", mesh=mesh), ref, rtol=2e-5)
  ladder_ref = _train(tmp_path, "ladder_one", mesh=ONE_DEVICE, residual_mode="ladder")
  ladder_tp = _train(tmp_path, "ladder_tp", mesh=dict(data=1, fsdp=2, tensor=4),
                     residual_mode="ladder")
  np.testing.assert_allclose(ladder_tp, ladder_ref, rtol=2e-5)
  assert abs(ladder_ref[-1] - ref[-1]) > 1e-6  # a different model, trained the same way


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_with_a_data_x_tensor_mesh(tmp_path):
  """2 processes x 2 CPU devices, mesh data=2 x tensor=2 (each tensor pair inside a process):
  the same losses as one process on 4 devices (the processes read disjoint halves of each
  global batch, which hold the same examples)."""
  port = _free_port()
  overrides = [f"--config.model.{k}={v}" for k, v in MODEL.items()] + [
      "--config.mesh.data=2", "--config.mesh.tensor=2", "--config.train.num_steps=3",
      "--config.train.eval_steps=1", "--config.train.log_every=1",
      "--config.train.async_checkpointing=False", "--config.optim.warmup_steps=1"]
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  procs = [subprocess.Popen(
      [sys.executable, "train.py", "--config", "configs/mqar.py:tiny", *overrides,
       f"--workdir={tmp_path / 'multi'}", f"--coordinator_address=localhost:{port}",
       "--num_processes=2", f"--process_id={i}"], cwd=ROOT, env=env,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = [p.communicate(timeout=240) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  assert "mesh data=2 x fsdp=1 x tensor=2 over 2 processes" in outs[0][1]
  assert "process 0 of 2 processes" in outs[0][1] and "process 1 of 2 processes" in outs[1][1]
  assert "3" in os.listdir(tmp_path / "multi" / "checkpoints")   # written by the two together
  ref = _train(tmp_path, "single", mesh=dict(data=2, fsdp=1, tensor=2))
  np.testing.assert_allclose(_losses(tmp_path / "multi"), ref, rtol=2e-5)


@pytest.mark.slow
def test_hybrid_conversion_then_fine_tune(tmp_path):
  """Layers >= 1 of a trained standard model become ladder layers; the fine-tune starts from
  the converted weights (its first loss is the converted model's, far below an untrained one)
  and lowers the loss."""
  source = tmp_path / "standard"
  std = _train(tmp_path, "standard", num_steps=30)
  cfg = _config(num_steps=6)
  cfg.model.residual_mode, cfg.model.residual_start_layer = "ladder", 1
  cfg.model.d_model = 999  # the architecture comes from the source, not the config
  mcfg = hybrid.prepare(str(source), cfg, str(tmp_path / "hybrid"))
  assert (mcfg.residual_mode, mcfg.residual_start_layer, mcfg.d_model) == ("ladder", 1, 32)
  trainer.train(cfg, str(tmp_path / "hybrid"))
  tuned = _losses(tmp_path / "hybrid")
  assert tuned[0] < std[0] - 0.2 and tuned[-1] < tuned[0]
  model, _ = load_model(str(tmp_path / "hybrid"))
  step0 = read_config(str(tmp_path / "hybrid" / "checkpoints"), step=0)
  assert model.cfg.residual_mode == "ladder" and step0["hybrid_source"] == str(source)
  source_model, _ = load_model(str(source))
  assert with_residual_mode(source_model, "ladder", start_layer=1).cfg == model.cfg


def test_mesh_log_names_axes_and_processes(caplog):
  caplog.set_level("INFO")
  mesh_lib.make_mesh(dict(data=2, fsdp=1, tensor=4))
  assert "mesh data=2 x fsdp=1 x tensor=4 over 1 processes" in caplog.text
