"""Argument types shared by the benchmark CLIs (no jax import: some set JAX_PLATFORMS later)."""

import argparse


def int_tuples(names: tuple[str, ...]):
  """An argparse type: '32,8,2,16,8,1' -> [(32, 8, 2), (16, 8, 1)] for names of length 3, each
  value a positive integer; otherwise an error naming the expected groups."""
  n = len(names)
  group = {3: "triples", 4: "quadruples"}.get(n, f"groups of {n}")

  def parse(text: str) -> list[tuple[int, ...]]:
    values = [int(v) for v in text.split(",") if v]
    if len(values) % n or any(v < 1 for v in values):
      raise argparse.ArgumentTypeError(
          f"{text!r}: expected {','.join(names)} {group} of positive integers")
    return [tuple(values[i:i + n]) for i in range(0, len(values), n)]

  return parse
