"""The scripts in benchmarks/ and research/ against the package they use — statically: no script is run (they train
and sample for minutes to hours).

Each script is parsed with ``ast``. Every name it binds from ``diffusion_course`` (``from diffusion_course import
consistency as C``, ``import diffusion_course as dc``, ``from diffusion_course.nn.dit import DiT``) is resolved in the
real, imported package; every attribute chain on such a name (``C.sample``, ``dc.gmm.GaussianMixture.ring``) must exist,
and every call of a resolved function or class must bind to its signature (``sampling.ddim_sample(m, x, s, 50)`` fails:
``steps`` is keyword-only). An import from a sibling script (``from unet_throughput import _Wrap``) must name something
that script defines; no path is computed from where the package is installed (``records.FOLDER``, ``dc.__file__``:
``records.load`` and ``pretrained.load`` know). Every script needs a module docstring and an
``if __name__ == "__main__":`` guard, and every ``benchmarks/NAME.py`` / ``research/NAME.py`` a script mentions must
exist (usage lines go stale when scripts move), as must a README in each folder listing its scripts.
"""
from __future__ import annotations

import ast
import importlib
import inspect
import re
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("benchmarks", "research")
SCRIPTS = sorted(p for folder in FOLDERS for p in (ROOT / folder).glob("*.py"))
PACKAGE = "diffusion_course"
# attributes that locate the installed package: a script computes no path from them (records.load and
# pretrained.path_for know where things live)
INSTALL_LOCATION = {"__file__", "__path__", "FOLDER"}
_MISSING = object()


# --------------------------------------------------------------------------- resolving names in the real package
def _import(dotted: str):
    """The module ``dotted``, or _MISSING if it does not exist."""
    try:
        return importlib.import_module(dotted)
    except ModuleNotFoundError as err:
        if err.name is not None and (dotted == err.name or dotted.startswith(err.name + ".")):
            return _MISSING
        raise


def _attr(obj, name: str):
    """``obj.name`` — a submodule counts for a package — or _MISSING."""
    value = getattr(obj, name, _MISSING)
    if value is _MISSING and isinstance(obj, types.ModuleType) and hasattr(obj, "__path__"):
        value = _import(f"{obj.__name__}.{name}")
    return value


def _declared_on_class(cls: type, name: str) -> bool:
    """An instance attribute a class declares without a class-level value (a dataclass field without default)."""
    return any(name in getattr(k, "__annotations__", {}) for k in cls.__mro__) or \
        name in getattr(cls, "__dataclass_fields__", {})


def _bindings(tree: ast.AST) -> tuple[dict[str, object], list[str]]:
    """Names bound by imports from the package (anywhere in the file) → the real objects; and the problems found."""
    bound, problems = {}, []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name != PACKAGE and not alias.name.startswith(PACKAGE + "."):
                    continue
                module = _import(alias.name)
                if module is _MISSING:
                    problems.append(f"line {node.lineno}: no module {alias.name}")
                elif alias.asname:
                    bound[alias.asname] = module
                else:
                    bound[PACKAGE] = importlib.import_module(PACKAGE)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and \
                (node.module == PACKAGE or node.module.startswith(PACKAGE + ".")):
            module = _import(node.module)
            if module is _MISSING:
                problems.append(f"line {node.lineno}: no module {node.module}")
                continue
            for alias in node.names:
                value = _attr(module, alias.name)
                if value is _MISSING:
                    problems.append(f"line {node.lineno}: {node.module} has no {alias.name!r}")
                else:
                    bound[alias.asname or alias.name] = value
    return bound, problems


def _rebound(tree: ast.AST) -> set[str]:
    """Names the file also assigns or takes as a parameter (anything but an import)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
    return names


def _chain(node: ast.expr) -> tuple[str, list[str]] | None:
    """``a.b.c`` → ("a", ["b", "c"]); None if the chain does not start at a plain name."""
    attrs = []
    while isinstance(node, ast.Attribute):
        attrs.append(node.attr)
        node = node.value
    return (node.id, attrs[::-1]) if isinstance(node, ast.Name) else None


def _resolve(bound: dict, base: str, attrs: list[str], lineno: int, problems: list[str]):
    """Follow ``base.attrs…`` in the real package. Reports a missing attribute; returns the object (or _MISSING once
    the chain reaches what only an instance has)."""
    obj, path = bound[base], base
    for name in attrs:
        value = _attr(obj, name)
        if value is _MISSING:
            if isinstance(obj, type) and _declared_on_class(obj, name):
                return _MISSING
            problems.append(f"line {lineno}: {path}.{name} does not exist"
                            + (f" ({getattr(obj, '__name__', path)} is {type(obj).__name__})"
                               if not isinstance(obj, types.ModuleType) else ""))
            return _MISSING
        obj, path = value, f"{path}.{name}"
    return obj


def _check_call(fn, call: ast.Call, what: str, problems: list[str]) -> None:
    """Does the call bind to ``fn``'s signature (argument count, keyword-only arguments, keyword names)?"""
    if not callable(fn):
        return
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):     # builtins and C types without a signature
        return
    starred = any(isinstance(a, ast.Starred) for a in call.args)
    double = any(k.arg is None for k in call.keywords)
    args = [None] * sum(not isinstance(a, ast.Starred) for a in call.args)
    kwargs = {k.arg: None for k in call.keywords if k.arg is not None}
    try:
        if starred or double:
            sig.bind_partial(*([] if starred else args), **kwargs)
        else:
            sig.bind(*args, **kwargs)
    except TypeError as err:
        problems.append(f"line {call.lineno}: {what}(...) does not match {what}{sig}: {err}")


def _return_annotation(fn) -> str:
    """A function's return annotation as text ('' if it has none or no signature)."""
    try:
        ann = inspect.signature(fn).return_annotation
    except (TypeError, ValueError):
        return ""
    if ann is inspect.Signature.empty:
        return ""
    return ann if isinstance(ann, str) else getattr(ann, "__name__", str(ann))


def _sibling_imports(tree: ast.AST, folder: Path | None, problems: list[str]) -> None:
    """``from other_script import name`` (a script in the same folder): the script exists and defines the name."""
    if folder is None:
        return
    for node in ast.walk(tree):
        if not (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module):
            continue
        sibling = folder / f"{node.module}.py"
        if not sibling.exists():
            continue
        defined = set()
        for top in ast.parse(sibling.read_text()).body:
            if isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                defined.add(top.name)
            elif isinstance(top, (ast.Assign, ast.AnnAssign)):
                for target in (top.targets if isinstance(top, ast.Assign) else [top.target]):
                    defined |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
            elif isinstance(top, (ast.Import, ast.ImportFrom)):
                defined |= {(a.asname or a.name).split(".")[0] for a in top.names}
        for alias in node.names:
            if alias.name not in defined:
                problems.append(f"line {node.lineno}: {sibling.name} defines no {alias.name!r}")


def check_source(source: str, folder: Path | None = None) -> list[str]:
    """Every problem the static check finds in one script's source (empty: it uses the package as it is)."""
    tree = ast.parse(source)
    bound, problems = _bindings(tree)
    shadowed = _rebound(tree) & set(bound)
    for name in sorted(shadowed):
        problems.append(f"{name!r} is imported from {PACKAGE} and also assigned in the script: rename one")
    bound = {k: v for k, v in bound.items() if k not in shadowed}
    inner = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    resolved = {}
    for node in ast.walk(tree):     # longest chains only: a.b.c, not also a.b
        if isinstance(node, ast.Attribute) and id(node) not in inner:
            chain = _chain(node)
            if chain and chain[0] in bound:
                resolved[id(node)] = _resolve(bound, chain[0], chain[1], node.lineno, problems)
                if set(chain[1]) & INSTALL_LOCATION:
                    problems.append(f"line {node.lineno}: {ast.unparse(node)} is where the package is installed: "
                                    "read a record with records.load(name), a checkpoint with pretrained.load(name)")
    callee = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        if isinstance(node.func, ast.Name) and node.func.id in bound:
            callee[id(node)] = bound[node.func.id]
        elif id(node.func) in resolved and resolved[id(node.func)] is not _MISSING:
            callee[id(node)] = resolved[id(node.func)]
        else:
            continue
        _check_call(callee[id(node)], node, ast.unparse(node.func), problems)
    for node in ast.walk(tree):     # `model, schedule = pretrained.load(...)` of a function that returns one thing
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], (ast.Tuple, ast.List)) \
                and id(node.value) in callee \
                and not any((k.arg or "").startswith("return_") for k in node.value.keywords):  # return_info=True
            returns = _return_annotation(callee[id(node.value)])
            if returns and not re.search(r"tuple|list|sequence|iter|generator|any", returns, re.I):
                problems.append(f"line {node.lineno}: unpacks {ast.unparse(node.value.func)}(...), which returns "
                                f"{returns}")
        if isinstance(node, ast.Subscript) and id(node.value) in callee \
                and re.search(r"\bModule$", _return_annotation(callee[id(node.value)])):
            problems.append(f"line {node.lineno}: indexes {ast.unparse(node.value.func)}(...), which returns "
                            f"{_return_annotation(callee[id(node.value)])}")
    _sibling_imports(tree, folder, problems)
    return sorted(problems, key=lambda p: int(m.group(1)) if (m := re.match(r"line (\d+)", p)) else 0)


def _has_main_guard(tree: ast.Module) -> bool:
    for node in tree.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Compare) and len(node.test.ops) == 1 \
                and isinstance(node.test.ops[0], ast.Eq):
            sides = [node.test.left, *node.test.comparators]
            if any(isinstance(s, ast.Name) and s.id == "__name__" for s in sides) and \
                    any(isinstance(s, ast.Constant) and s.value == "__main__" for s in sides):
                return True
    return False


# --------------------------------------------------------------------------- the checker itself
GOOD = '''"""doc"""
import diffusion_course as dc
from diffusion_course import consistency as C, sampling
from diffusion_course.nn.dit import DiT


def main():
    s = dc.schedules.NoiseSchedule.cosine(1000)
    x = sampling.ddim_sample(None, None, s, steps=10, eta=0.0)
    y = C.sample(None, x, steps=2, clip_denoised=True)
    return DiT(input_size=7, patch=1), C.DistillConfig.__dataclass_fields__, C.DistillConfig.steps


if __name__ == "__main__":
    main()
'''


def test_checker_accepts_correct_use():
    assert check_source(GOOD) == []


@pytest.mark.parametrize("line, needle", [
    ("consistency.no_such_function_xyz(1)", "consistency.no_such_function_xyz does not exist"),
    ("consistency.sample_timesteps(None, 2)", "consistency.sample_timesteps does not exist"),
    ("consistency.DistillConfig.no_such_field_xyz", "DistillConfig.no_such_field_xyz does not exist"),
    ("sampling.ddim_sample(None, None, None, 50)", "does not match"),
    ("consistency.sample(None, None, 2)", "does not match"),
    ("consistency.sample(None, None, steps=2, schedule=None)", "does not match"),
    ("pretrained.load('fmnist-ddpm', train_if_missing=True)", "does not match"),
])
def test_checker_flags_made_up_or_removed_api(line, needle):
    src = f"from diffusion_course import consistency, pretrained, sampling\n\ndef main():\n    return {line}\n"
    problems = check_source(src)
    assert any(needle in p for p in problems), problems


@pytest.mark.parametrize("src, needle", [
    ("from diffusion_course import pretrained\nmodel, schedule = pretrained.load('fmnist-ddpm')\n",
     "unpacks pretrained.load(...), which returns"),
    ("from diffusion_course import pretrained\nmodel = pretrained.load('fmnist-ddpm')[0]\n",
     "indexes pretrained.load(...), which returns"),
    ("from diffusion_course.consistency import distill_recipe\n", "has no 'distill_recipe'"),
    ("from diffusion_course import no_such_module_xyz\n", "has no 'no_such_module_xyz'"),
    ("import diffusion_course.no_such_module_xyz as m\n", "no module diffusion_course.no_such_module_xyz"),
    ("import diffusion_course as dc\nx = dc.gmm.NoSuchMixtureXyz\n", "dc.gmm.NoSuchMixtureXyz does not exist"),
    ("from diffusion_course import data\ndata = 1\n", "also assigned"),
    ("import diffusion_course as dc\nfrom pathlib import Path\np = Path(dc.__file__).parent / 'records'\n",
     "is where the package is installed"),
    ("from diffusion_course import records\np = records.FOLDER / 'consistency_nfe.json'\n",
     "is where the package is installed"),
])
def test_checker_flags_bad_imports(src, needle):
    problems = check_source(src)
    assert any(needle in p for p in problems), problems


def test_checker_flags_missing_sibling_name(tmp_path):
    (tmp_path / "helper.py").write_text("def there():\n    pass\n")
    assert check_source("from helper import there\n", tmp_path) == []
    assert any("defines no 'gone'" in p for p in check_source("from helper import gone\n", tmp_path))


# --------------------------------------------------------------------------- the scripts
def test_scripts_found():
    names = {p.name for p in SCRIPTS}
    assert {"consistency_nfe.py", "dit_vs_unet.py", "consistency_stage.py", "teacher_screen.py"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_script_uses_the_package_as_it_is(script):
    problems = check_source(script.read_text(), script.parent)
    assert not problems, f"{script.relative_to(ROOT)}:\n" + "\n".join(problems)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_script_has_docstring_and_main_guard(script):
    tree = ast.parse(script.read_text())
    assert ast.get_docstring(tree), f"{script.relative_to(ROOT)} has no module docstring"
    assert _has_main_guard(tree), f"{script.relative_to(ROOT)} has no `if __name__ == \"__main__\":` guard"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_scripts_named_in_a_script_exist(script):
    """Usage lines and cross-references: ``python research/X.py`` must be where the file is."""
    text = script.read_text()
    missing = sorted({m for m in re.findall(r"\b((?:benchmarks|research)/\w+\.py)\b", text) if not (ROOT / m).exists()})
    assert not missing, f"{script.relative_to(ROOT)} names scripts that are not there: {missing}"


@pytest.mark.parametrize("folder", FOLDERS)
def test_readme_lists_every_script(folder):
    readme = (ROOT / folder / "README.md").read_text()
    absent = [p.name for p in SCRIPTS if p.parent.name == folder and p.name not in readme]
    assert not absent, f"{folder}/README.md does not list {absent}"

