"""No code in the package that can run what a file holds: no pickle, no eval/exec, no
``torch.load`` without ``weights_only=True``, no ``yaml.load`` without a safe loader.

The rules read the code's syntax tree, not its text, so the words in comments, docstrings and
strings ("never pickle", "``eval()`` mode") and methods of the same name (``model.eval()``,
``ast.literal_eval``) are not findings. What counts as a finding:

* importing, or naming as ``x.y`` / passing to ``__import__`` / ``importlib.import_module``,
  a module that unpickles: ``pickle``, ``_pickle``, ``cPickle``, ``cloudpickle``, ``dill``,
  ``shelve``, ``marshal``, ``joblib``;
* any attribute whose name contains ``pickle`` (``pd.read_pickle``, ``df.to_pickle``), and
  ``allow_pickle=True`` in any call;
* a call of the builtins ``eval``, ``exec`` or ``compile``;
* ``torch.load(...)`` without the keyword ``weights_only=True``;
* ``yaml.load`` / ``yaml.load_all`` without ``Loader=`` one of ``SafeLoader``, ``CSafeLoader``,
  ``BaseLoader``, ``CBaseLoader``; ``yaml.unsafe_load``, ``yaml.full_load`` and their ``_all``
  forms, and ``yaml.Loader`` / ``yaml.UnsafeLoader`` / ``yaml.FullLoader`` anywhere.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "allmrec"
UNPICKLING_MODULES = {"pickle", "_pickle", "cPickle", "cloudpickle", "dill", "shelve", "marshal", "joblib"}
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader", "BaseLoader", "CBaseLoader"}
UNSAFE_YAML = {"unsafe_load", "unsafe_load_all", "full_load", "full_load_all", "Loader", "UnsafeLoader", "FullLoader"}


def _dotted(node: ast.AST) -> str:
    """``a.b.c`` for a chain of names and attributes, else ``""``."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


def _keyword(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _call_finding(call: ast.Call) -> str | None:
    name = _dotted(call.func)
    if name in ("eval", "exec", "compile"):
        return f"{name}() runs code"
    if name == "torch.load" and not _is_true(_keyword(call, "weights_only")):
        return "torch.load without weights_only=True"
    if name in ("yaml.load", "yaml.load_all"):
        loader = _keyword(call, "Loader") or (call.args[1] if len(call.args) > 1 else None)
        safe = loader is not None and _dotted(loader).rsplit(".", 1)[-1] in SAFE_YAML_LOADERS
        if not safe:
            return f"{name} without a safe Loader"
    if name in ("__import__", "importlib.import_module") and call.args:
        arg = call.args[0]
        if isinstance(arg, ast.Constant) and str(arg.value).split(".")[0] in UNPICKLING_MODULES:
            return f"imports {arg.value}"
    if _is_true(_keyword(call, "allow_pickle")):
        return "allow_pickle=True"
    return None


def find_unsafe(source: str, filename: str = "<string>") -> list[str]:
    """``file:line: finding`` for every unsafe construct in ``source`` (rules in the module docstring)."""
    findings = []
    for node in ast.walk(ast.parse(source, filename)):
        problem = None
        if isinstance(node, ast.Import):
            hit = [a.name for a in node.names if a.name.split(".")[0] in UNPICKLING_MODULES]
            problem = f"imports {hit[0]}" if hit else None
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNPICKLING_MODULES:
            problem = f"imports from {node.module}"
        elif isinstance(node, ast.ImportFrom) and node.module == "yaml":
            hit = [a.name for a in node.names if a.name in UNSAFE_YAML or a.name == "load"]
            problem = f"imports yaml.{hit[0]}" if hit else None
        elif isinstance(node, ast.Attribute):
            name = _dotted(node)
            if "pickle" in node.attr.lower() or name.split(".")[0] in UNPICKLING_MODULES:
                problem = f"uses {name or node.attr}"
            elif name.startswith("yaml.") and node.attr in UNSAFE_YAML:
                problem = f"uses {name}"
        elif isinstance(node, ast.Call):
            problem = _call_finding(node)
        if problem:
            findings.append(f"{filename}:{node.lineno}: {problem}")
    return findings


def test_package_has_no_unsafe_code():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20  # the package was found
    findings = [f for p in files for f in find_unsafe(p.read_text(), str(p.relative_to(PACKAGE.parent)))]
    assert findings == []


@pytest.mark.parametrize("source", [
    "import pickle",
    "import cPickle as p",
    "from pickle import loads",
    "import dill.settings",
    "x = pickle.loads(b)",
    "df = pd.read_pickle(path)",
    "frame.to_pickle('x.pkl')",
    "np.load('a.npy', allow_pickle=True)",
    "m = __import__('pickle')",
    "m = importlib.import_module('shelve')",
    "eval('1 + 1')",
    "exec(code)",
    "compile(src, 'f', 'exec')",
    "torch.load(path)",
    "torch.load(path, map_location='cpu')",
    "torch.load(path, weights_only=False)",
    "yaml.load(text)",
    "yaml.load(text, Loader=yaml.Loader)",
    "yaml.load(text, yaml.FullLoader)",
    "yaml.load_all(text)",
    "yaml.unsafe_load(text)",
    "yaml.full_load(text)",
    "from yaml import load",
    "from yaml import UnsafeLoader",
])
def test_checker_flags_planted_code(source):
    assert find_unsafe(f"def f():\n    {source}\n"), source


@pytest.mark.parametrize("source", [
    "model.eval()",
    "net.eval(); self.model.eval()",
    "rec = ast.literal_eval(line)",
    "pass  # never pickle: safetensors + JSON",
    "'''Checkpoints are safetensors, never pickle; ``eval()`` mode.'''",
    "torch.load(path, weights_only=True)",
    "torch.load(path, map_location='cpu', weights_only=True)",
    "yaml.safe_load(text)",
    "yaml.load(text, Loader=yaml.SafeLoader)",
    "yaml.load(text, yaml.CSafeLoader)",
    "np.load('a.npy')",
    "np.load('a.npy', allow_pickle=False)",
    "evaluate(x); executor.submit(f)",
    "pickled = 3",
])
def test_checker_passes_safe_code(source):
    assert find_unsafe(f"def f():\n    {source}\n") == [], source
