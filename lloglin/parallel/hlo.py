"""Reading compiled HLO text: can an all-reduce overlap matmuls?

Two views of each all-reduce of the entry computation:
  * data flow: the matmuls that are neither ancestors nor descendants of it (XLA is free to run
    them while the all-reduce is in flight). Holds for any backend, including CPU, whose runtime
    has no asynchronous collectives.
  * schedule: for async collectives (`all-reduce-start` ... `all-reduce-done`, or the
    `fusion-start` ... `fusion-done` wrappers XLA:GPU emits around an all-reduce), the matmuls
    scheduled between the start and the done.

A "matmul" is a `dot`, a cuBLAS/cuBLASLt or Triton GEMM custom call, or a fusion/call whose
computation contains one.
"""

import dataclasses
import re

_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(.*)$")
_GEMM_CALL = re.compile(r'custom_call_target="[^"]*(gemm|cublas|matmul)[^"]*"', re.I)


@dataclasses.dataclass
class Instr:
  name: str
  opcode: str
  operands: list[str]
  calls: list[str]
  line: str


def _opcode(rhs: str) -> str:
  """The opcode after the result type (which may be a parenthesised tuple)."""
  if rhs.startswith("("):
    depth = 0
    for i, ch in enumerate(rhs):
      depth += ch == "("
      depth -= ch == ")"
      if depth == 0:
        rhs = rhs[i + 1:]
        break
  else:
    rhs = rhs.split(" ", 1)[1] if " " in rhs else ""
  m = re.match(r"\s*([\w\-]+)\(", rhs)
  return m.group(1) if m else ""


def parse(text: str) -> tuple[dict[str, list[Instr]], str]:
  """Computations (name -> instructions in text order, i.e. schedule order once scheduled)
  and the name of the entry computation."""
  comps: dict[str, list[Instr]] = {}
  entry, current = None, None
  for line in text.splitlines():
    head = re.match(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
    if head and not line.startswith(" "):
      current = head.group(2)
      comps[current] = []
      if head.group(1):
        entry = current
      continue
    if line.startswith("}"):
      current = None
      continue
    m = _INSTR.match(line)
    if m and current is not None:
      name, rhs = m.groups()
      refs = re.findall(r"%([\w.\-]+)", rhs)
      comps[current].append(Instr(name, _opcode(rhs), refs, [], line))
  for instrs in comps.values():
    names = {i.name for i in instrs}
    for ins in instrs:
      ins.calls = [r for r in ins.operands if r in comps and r not in names]
      ins.operands = [r for r in ins.operands if r in names]
  if entry is None:
    raise ValueError("no ENTRY computation in the HLO text")
  return comps, entry


def _matmul_checker(comps):
  memo = {}

  def comp_has(name):
    if name not in memo:
      memo[name] = False
      memo[name] = any(is_matmul(i) for i in comps.get(name, []))
    return memo[name]

  def is_matmul(ins):
    if ins.opcode in ("dot", "convolution") or _GEMM_CALL.search(ins.line):
      return True
    if "__triton_gemm" in ins.line:
      return True
    return any(comp_has(c) for c in ins.calls)

  return is_matmul


@dataclasses.dataclass
class AllReduceReport:
  name: str
  independent_matmuls: int  # matmuls with no data dependence on it either way
  scheduled_between: int | None  # async only: matmuls between its start and done


def all_reduce_overlap(text: str, *, match: str = "") -> list[AllReduceReport]:
  """One report per all-reduce whose line contains `match` (e.g. "psum" for shard_map
  all-reduces), in schedule order, computation by computation (entry, loop bodies, ...): each
  is judged against the matmuls of its own computation. An all-reduce is a synchronous
  `all-reduce`, an `all-reduce-start`, or an async wrapper (`fusion-start`, `async-start`)
  around a computation that all-reduces; its done is the matching `*-done`."""
  comps, _ = parse(text)
  is_matmul = _matmul_checker(comps)
  reduces = {name for name, instrs in comps.items()
             if any(i.opcode in ("all-reduce", "all-reduce-start") for i in instrs)}

  def is_all_reduce(ins):
    if ins.opcode in ("all-reduce", "all-reduce-start"):
      return True
    return ins.opcode.endswith("-start") and any(c in reduces for c in ins.calls)

  fusion_bodies = {c for instrs in comps.values() for i in instrs
                   if i.opcode in ("fusion", "fusion-start", "async-start") for c in i.calls}
  out = []
  for name, instrs in comps.items():
    if name in fusion_bodies:  # the all-reduce inside an async wrapper: judged at the wrapper
      continue
    if any(is_all_reduce(i) and match in i.line for i in instrs):
      out.extend(_computation_overlap(instrs, is_all_reduce, is_matmul, match))
  return out


def _computation_overlap(instrs, is_all_reduce, is_matmul, match):
  by_name = {i.name: i for i in instrs}
  users: dict[str, list[str]] = {i.name: [] for i in instrs}
  for ins in instrs:
    for o in ins.operands:
      users[o].append(ins.name)

  def closure(start, edges):
    seen, stack = set(), [start]
    while stack:
      for n in edges(stack.pop()):
        if n not in seen:
          seen.add(n)
          stack.append(n)
    return seen

  matmuls = {i.name for i in instrs if is_matmul(i)}
  order = {i.name: k for k, i in enumerate(instrs)}
  out = []
  for ins in instrs:
    if not is_all_reduce(ins) or match not in ins.line:
      continue
    first, last = ins.name, ins.name
    if ins.opcode.endswith("-start"):
      dones = [u for u in users[ins.name] if by_name[u].opcode.endswith("-done")]
      last = dones[0] if dones else ins.name
    ancestors = closure(first, lambda n: by_name[n].operands)
    descendants = closure(last, lambda n: users[n])
    independent = matmuls - ancestors - descendants - {first, last}
    between = None
    if last != first:
      between = sum(1 for m in matmuls if order[first] < order[m] < order[last])
    out.append(AllReduceReport(ins.name, len(independent), between))
  return out
