"""Every public function and method of the package is fully annotated.

Public means: a module-level function whose name does not start with ``_``; and, in a class whose name does not
start with ``_``, a method whose name does not start with ``_``, plus ``__init__``, ``__call__`` and ``forward``.
Fully annotated means: every parameter (``*args`` and ``**kwargs`` included; ``self``/``cls`` excepted) has an
annotation, and so does the return (except on ``__init__``).

The check reads each module's source with ``ast`` (nothing is imported), so it also covers modules that are slow or
heavy to import.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "diffusion_course"
PUBLIC_DUNDERS = {"__init__", "__call__", "forward"}
_FUNCS = (ast.FunctionDef, ast.AsyncFunctionDef)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _top_level(body: list[ast.stmt]) -> list[ast.stmt]:
    """The statements of a module or class body, looking inside ``if``/``try``/``with`` blocks (a definition under
    ``if TYPE_CHECKING:`` or ``try: ... except ImportError:`` is still a top-level definition)."""
    out = []
    for node in body:
        if isinstance(node, ast.If):
            out += _top_level(node.body) + _top_level(node.orelse)
        elif isinstance(node, ast.Try):
            out += _top_level(node.body) + _top_level(node.orelse) + _top_level(node.finalbody)
            for handler in node.handlers:
                out += _top_level(handler.body)
        elif isinstance(node, ast.With):
            out += _top_level(node.body)
        else:
            out.append(node)
    return out


def _is_staticmethod(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    return any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in fn.decorator_list)


def _missing(fn: ast.FunctionDef | ast.AsyncFunctionDef, is_method: bool) -> list[str]:
    """What ``fn`` leaves unannotated: parameter names, and ``return``."""
    args = fn.args
    positional = args.posonlyargs + args.args
    if is_method and not _is_staticmethod(fn) and positional:
        positional = positional[1:]  # self / cls
    params = positional + args.kwonlyargs
    params += [a for a in (args.vararg, args.kwarg) if a is not None]
    missing = [a.arg for a in params if a.annotation is None]
    if fn.returns is None and fn.name != "__init__":
        missing.append("return")
    return missing


def unannotated(source: str, module: str = "<string>") -> list[str]:
    """``module:function`` (``module:Class.method`` for methods), with what is missing, for each public function or
    method in ``source`` that is not fully annotated."""
    offenders = []
    for node in _top_level(ast.parse(source).body):
        if isinstance(node, _FUNCS) and not node.name.startswith("_"):
            missing = _missing(node, is_method=False)
            if missing:
                offenders.append(f"{module}:{node.name} ({', '.join(missing)})")
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            for item in _top_level(node.body):
                if not isinstance(item, _FUNCS):
                    continue
                if item.name.startswith("_") and item.name not in PUBLIC_DUNDERS:
                    continue
                missing = _missing(item, is_method=True)
                if missing:
                    offenders.append(f"{module}:{node.name}.{item.name} ({', '.join(missing)})")
    return offenders


def package_offenders() -> list[str]:
    """The offenders of every module of the package."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        offenders += unannotated(path.read_text(), _module_name(path))
    return offenders


def test_the_checker_flags_what_is_unannotated():
    source = '''
def good(x: int, *args: int, y: str = "a", **kwargs: float) -> None: ...
def no_return(x: int): ...
def bare_param(x, y: int) -> int: ...
def star_args(*args, **kwargs) -> None: ...
def _private(x): ...
class Public:
    def __init__(self, a: int): ...
    def __call__(self, x): ...
    def forward(self, x: int) -> int: ...
    def method(self, x: int): ...
    @classmethod
    def make(cls, n: int) -> "Public": ...
    @staticmethod
    def helper(n) -> int: ...
    def __repr__(self): ...
    def _hidden(self, x): ...
class _Private:
    def method(self, x): ...
if True:
    def under_if(x) -> None: ...
'''
    assert unannotated(source, "m") == [
        "m:no_return (return)",
        "m:bare_param (x)",
        "m:star_args (args, kwargs)",
        "m:Public.__call__ (x, return)",
        "m:Public.method (return)",
        "m:Public.helper (n)",
        "m:under_if (x)",
    ]
    assert unannotated("def f(a: int, /, b: int, *, c: int) -> int: ...") == []
    assert unannotated("def f(a, /, b: int) -> int: ...") == ["<string>:f (a)"]


def test_the_checker_walks_the_whole_package():
    names = {_module_name(p) for p in PACKAGE.rglob("*.py")}
    assert {"diffusion_course.sampling", "diffusion_course.nn.unet", "diffusion_course.records"} <= names


def test_every_public_function_is_annotated():
    offenders = package_offenders()
    assert not offenders, f"{len(offenders)} public functions/methods not fully annotated:\n" + "\n".join(offenders)
