"""AdamW with linear warmup and cosine decay, and optional global-norm clipping."""

import optax


def learning_rate_schedule(optim_cfg, num_steps: int) -> optax.Schedule:
  peak = optim_cfg.learning_rate
  warmup = min(optim_cfg.warmup_steps, max(num_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak, warmup_steps=warmup,
      decay_steps=max(num_steps, warmup + 1), end_value=peak * optim_cfg.min_lr_ratio)


def make_adamw(optim_cfg, num_steps: int) -> optax.GradientTransformation:
  schedule = learning_rate_schedule(optim_cfg, num_steps)
  adamw = optax.adamw(schedule, b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps,
                      weight_decay=optim_cfg.weight_decay)
  if optim_cfg.grad_clip_norm:
    return optax.chain(optax.clip_by_global_norm(optim_cfg.grad_clip_norm), adamw)
  return adamw
