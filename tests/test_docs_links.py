"""Links into the documentation resolve: every `docs/<page>.md#<heading>` and
`benchmarks/RESULTS.md#<heading>` named in a source file or a markdown page, and every relative
link of the markdown pages, points at an existing file and, where it names one, at an existing
heading (GitHub's anchor rules). Docstrings link to these headings, so renaming one breaks the
build instead of the link. No file refers to documents outside the repository, and the paths the
user documentation writes exist."""

import glob
import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tracked(*patterns):
  out = subprocess.run(["git", "ls-files", *patterns], cwd=ROOT, capture_output=True, text=True)
  if out.returncode:
    pytest.skip("not a git checkout")
  return out.stdout.split()


def anchors(path):
  """GitHub's anchors of a markdown file: lower case, punctuation dropped, spaces to hyphens,
  repeats numbered."""
  seen, out, in_code = {}, set(), False
  with open(path, encoding="utf-8") as f:
    for line in f:
      if line.startswith("```"):
        in_code = not in_code
      match = None if in_code else re.match(r"#{1,6} (.*)", line)
      if match:
        slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-")
        out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
  return out


def references():
  """(where, target file, anchor or '') of every documentation link in the repository."""
  refs = []
  for path in tracked("*.py", "*.md"):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
      text = f.read()
    for m in re.finditer(r"\b(?:docs/[\w/.-]+|benchmarks/RESULTS)\.md(?:#[\w-]+)?", text):
      target, _, anchor = m.group(0).partition("#")
      refs.append((path, target, anchor))
    if path.endswith(".md"):
      for m in re.finditer(r"\]\(([^)\s#]*)(?:#([\w-]+))?\)", text):
        link, anchor = m.group(1), m.group(2) or ""
        if not re.match(r"\w+://", link):
          target = os.path.normpath(os.path.join(os.path.dirname(path), link or
                                                 os.path.basename(path)))
          refs.append((path, target, anchor))
  return refs


def test_documentation_links_resolve():
  broken = []
  for where, target, anchor in references():
    full = os.path.join(ROOT, target)
    if not os.path.exists(full):
      broken.append(f"{where}: {target} does not exist")
    elif anchor and full.endswith(".md") and anchor not in anchors(full):
      broken.append(f"{where}: {target} has no heading #{anchor}")
  assert not broken, "\n".join(broken)


def test_anchor_rules(tmp_path):
  page = tmp_path / "p.md"
  page.write_text("# Title\n## Decode: O(log T) states\n```\n# not a heading\n```\n## Title\n")
  assert anchors(page) == {"title", "decode-olog-t-states", "title-1"}



# Documents that live outside the repository (a clone lacks them), as a regex written so that this
# file does not match it itself; the pages of docs/ have no numbered sections, so a section sign
# refers to such a document too.
OUTSIDE_DOCUMENTS = re.compile(r"\bshared[/]|\b(kernels|papers|DESIGN|seeds)[.]md\b|jax[-]stack|"
                               r"h200[-]anchors|\N{SECTION SIGN}")


def test_no_file_refers_to_documents_outside_the_repository():
  found = []
  for path in tracked():
    try:
      with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        lines = f.read().splitlines()
    except (UnicodeDecodeError, FileNotFoundError):  # plots; a file deleted but not committed
      continue
    found += [f"{path}:{n}: {line.strip()[:100]}" for n, line in enumerate(lines, 1)
              if OUTSIDE_DOCUMENTS.search(line)]
  assert not found, "link to docs/ instead:\n" + "\n".join(found)


# Repository paths (`configs/mqar.py:tiny`) and modules (`lloglin.ops`) written in backticks in the
# user documentation name something that exists, so that a rename fails until the docs follow.
PATH_ROOTS = ("lloglin", "pallas_kernels", "configs", "benchmarks", "experiments", "tests",
              "notebooks", "docs", "scripts")
SPAN_PATH = re.compile(r"(?<![\w./-])((?:%s)[/.][\w./<>*{},:-]*)" % "|".join(PATH_ROOTS))


def user_docs():
  """(path, text) of README, CONTRIBUTING, docs/ and RESULTS.md's current tables (its lab log
  keeps the paths of the day each run was recorded)."""
  for path in tracked("README.md", "CONTRIBUTING.md", "docs/*.md", "benchmarks/RESULTS.md"):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
      yield path, f.read().split("\n## Lab log", 1)[0]


def module_problem(name):
  """Why the dotted name (a module, or a module and one of its names) does not resolve, or ''.
  The name is looked for as a word of the module's source, without importing it."""
  parts = name.split(".")
  for n in range(len(parts), 0, -1):
    base = os.path.join(ROOT, *parts[:n])
    source = next((p for p in (base + ".py", os.path.join(base, "__init__.py"))
                   if os.path.isfile(p)), None)
    if source is None:
      continue
    module, rest = ".".join(parts[:n]), parts[n:]
    if len(rest) > 1:
      return f"{module} has no module {rest[0]}"
    with open(source, encoding="utf-8") as f:
      if rest and not re.search(rf"\b{rest[0]}\b", f.read()):
        return f"{module} does not define {rest[0]}"
    return ""
  return f"no module {name}"


def path_problem(written):
  """Why a path or module written in the docs names nothing in the repository, or ''. A test id
  (`::name`), config variant (`:tiny`) or anchor (`#x`) is cut; a `<placeholder>` checks the
  folder before it; a glob must match something."""
  path = re.split(r"::|:|#", written)[0].rstrip(".,")
  if "/" not in path:
    return module_problem(path) if path.split(".")[0] in ("lloglin", "pallas_kernels") else ""
  if "<" in path or "{" in path:
    folder = os.path.dirname(re.split(r"[<{]", path)[0])
    return "" if os.path.isdir(os.path.join(ROOT, folder)) else f"no folder {folder}"
  if "*" in path:
    return "" if glob.glob(os.path.join(ROOT, path)) else f"nothing matches {path}"
  return "" if os.path.exists(os.path.join(ROOT, path)) else f"{path} does not exist"


def test_paths_written_in_the_docs_exist():
  missing = []
  for doc, text in user_docs():
    for number, line in enumerate(text.splitlines(), 1):
      for span in re.findall(r"`([^`]+)`", line):
        span = re.sub(r"--(out|workdir)[ =]\S+", "", span)  # what a command writes
        missing += [f"{doc}:{number}: {problem}" for written in SPAN_PATH.findall(span)
                    if (problem := path_problem(written))]
  assert not missing, "\n".join(missing)


def test_path_checks_reject_what_is_not_there():
  assert path_problem("configs/mqar.py:tiny") == path_problem("lloglin/ops/<name>.py") == ""
  assert path_problem("tests/ops/helpers.py::assert_close") == path_problem("lloglin.ops") == ""
  assert path_problem("lloglin/ops/no_such_op.py")
  assert path_problem("lloglin/no_such_floor/<name>.py")
  assert path_problem("lloglin.ops.no_such_op.fn")
  assert path_problem("experiments/results/*.no_such_extension")
