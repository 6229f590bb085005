"""The seam between the core and the subsystems: the core names no subsystem, no import cycles, light configs."""

import ast
import json
import os
import subprocess
import sys

from tests.conftest import REPO, subprocess_env

PACKAGES = ("common", "configs", "ear_teacher", "distill", "facerec", "benchmarks")
SUBSYSTEMS = ("ear_teacher", "distill", "facerec", "configs", "benchmarks")


def _modules(package: str) -> dict[str, str]:
  """{dotted module name: file path} for every .py file under `package`."""
  out = {}
  for root, _, files in os.walk(os.path.join(REPO, package)):
    for f in files:
      if f.endswith(".py"):
        rel = os.path.relpath(os.path.join(root, f), REPO)[:-3].replace(os.sep, ".")
        out[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(root, f)
  return out


ALL = {name: path for pkg in PACKAGES for name, path in _modules(pkg).items()}


def _imports(name: str, path: str) -> set[str]:
  """Project modules that `name` imports anywhere in its file (function-level imports included)."""
  with open(path) as f:
    module = ast.parse(f.read(), path)
  found = set()
  for node in ast.walk(module):
    if isinstance(node, ast.Import):
      targets = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      if node.level:  # relative: resolve against this module's package
        base = name.split(".")[:-node.level] if not path.endswith("__init__.py") else name.split(".")[:len(
            name.split(".")) - node.level + 1]
        prefix = ".".join(base + ([node.module] if node.module else []))
      else:
        prefix = node.module or ""
      targets = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in ALL else prefix for a in node.names]
    else:
      continue
    for t in targets:
      while t and t not in ALL:  # `import common.models.vgg as x` -> the deepest project module named
        t = t.rpartition(".")[0]
      if t and t != name:
        found.add(t)
  return found


GRAPH = {name: _imports(name, path) for name, path in ALL.items()}


def test_core_imports_no_subsystem_in_source():
  offenders = {m: sorted(i for i in deps if i.split(".")[0] in SUBSYSTEMS)
               for m, deps in GRAPH.items() if m.split(".")[0] == "common"}
  assert not {m: d for m, d in offenders.items() if d}


def test_no_import_cycles():
  cycles, state = [], {}

  def visit(node, stack):
    state[node] = "open"
    for dep in sorted(GRAPH[node]):
      if state.get(dep) == "open":
        cycles.append(stack[stack.index(dep):] + [dep])
      elif dep not in state:
        visit(dep, stack + [dep])
    state[node] = "done"

  for node in sorted(GRAPH):
    if node not in state:
      visit(node, [node])
  assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_each_core_module_alone_loads_no_subsystem():
  """Each common module imported alone in a fresh interpreter pulls in no subsystem package."""
  probe = ("import importlib, json, sys; importlib.import_module(sys.argv[1]); "
           f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {SUBSYSTEMS!r})))")
  names = sorted(m for m in ALL if m.split(".")[0] == "common")
  procs = {m: subprocess.Popen([sys.executable, "-c", probe, m], cwd=REPO, env=subprocess_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for m in names}
  loaded = {}
  for m, p in procs.items():
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, (m, err[-2000:])
    loaded[m] = json.loads(out.strip().splitlines()[-1])
  assert not {m: v for m, v in loaded.items() if v}


def test_configs_import_only_common_config():
  for name, path in ALL.items():
    if name.split(".")[0] == "configs":
      allowed = {d for d in GRAPH[name] if d == "common.config" or d.split(".")[0] == "configs"}
      assert GRAPH[name] == allowed, (name, sorted(GRAPH[name] - allowed))


def test_loading_every_config_pulls_in_no_training_stack():
  files = sorted(p for n, p in ALL.items() if n.split(".")[0] == "configs" and not p.endswith(("__init__.py",
                                                                                            "common.py")))
  probe = ("import json, sys\nfrom ml_collections.config_flags import config_flags as f\n"
           "for path in sys.argv[1:]:\n  f.ConfigFileFlagParser('config').parse(path + ':smoke')\n"
           "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & "
           "{'jax', 'flax', 'optax', 'orbax', 'grain', 'torch', 'ear_teacher', 'distill', 'facerec'})))")
  r = subprocess.run([sys.executable, "-c", probe, *files], cwd=REPO, env=subprocess_env(), capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  assert len(files) >= 5 and json.loads(r.stdout.strip().splitlines()[-1]) == []


def test_no_command_module_looks_like_a_test():
  """pytest collects test_*.py / *_test.py: command modules must not be named like tests."""
  named_like_tests = [n for n in ALL if n.rpartition(".")[2].startswith("test_") or n.endswith("_test")]
  assert not named_like_tests


def test_model_directories_record_their_module(tmp_path):
  """A saved model names the module that builds it; loading it in a fresh interpreter needs nothing else."""
  from common import models  # pylint: disable=import-outside-toplevel
  from distill import models as dmodels  # pylint: disable=import-outside-toplevel

  module, variables = models.load_or_init("random", dmodels.TinyLaDeDa(width=4), (1, 16, 16, 3), 0)
  models.save(str(tmp_path / "tiny"), "tiny_ladeda", models.module_kwargs(module), variables)
  meta = models.read_meta(str(tmp_path / "tiny"))
  assert meta["module"] == "distill.models" and meta["kwargs"]["width"] == 4
  probe = ("import sys; from common import models; m, v = models.load(sys.argv[1]); "
           "print(type(m).__module__, sorted(k for k in sys.modules if k.startswith('facerec')))")
  r = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "tiny")], cwd=REPO, env=subprocess_env(),
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  assert r.stdout.split()[0] == "distill.models" and r.stdout.strip().endswith("[]")
