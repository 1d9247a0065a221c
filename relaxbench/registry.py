"""Names -> factories for tasks and models, and ``module:function`` entries for user models.

Built-ins follow one convention, so adding one edits no central table:

- task ``NAME`` is the class ``TASK`` in module ``relaxbench.tasks.NAME``;
- model ``NAME`` is the function ``build(spec, relaxed=False, **params) -> nn.Module`` in module
  ``relaxbench.models.NAME``, which also sets ``FAMILY`` (a string), ``TASK_KINDS`` (a dict literal: each task
  kind it supports, ``Task.kind``, -> the group it respects there, e.g. ``{"nbody": "E(3) x permutations"}``)
  and may define
  ``build_unconstrained(spec, **params)`` (a non-equivariant model of similar size). A built model may offer
  ``export_for_eval() -> nn.Module``, a faster module computing the same function, which the trainer then
  uses for the final evaluation.

A user model is a config entry ``arch: "package.module:function"`` with the same signature as ``build``,
plus ``family:``; only modules named in the config are imported. Its module may set ``TASK_KINDS`` too.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import pkgutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

import relaxbench.models
import relaxbench.tasks
from relaxbench.errors import UserError

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "BuildParameters",
    "ModelEntry",
    "RegistryError",
    "build_parameters",
    "get_model",
    "get_task_class",
    "model_family",
    "model_names",
    "task_kinds",
    "task_names",
]

_PRIVATE = {"base"}


class RegistryError(UserError):
    """An unknown name or an entry that does not import (the message lists the choices)."""


def _names(package) -> list[str]:
    return sorted(
        m.name
        for m in pkgutil.iter_modules(package.__path__)
        if not m.name.startswith("_") and m.name not in _PRIVATE
    )


def task_names() -> list[str]:
    """Names of the built-in tasks."""
    return _names(relaxbench.tasks)


def model_names() -> list[str]:
    """Names of the built-in models."""
    return _names(relaxbench.models)


def get_task_class(name: str):
    """The task class registered as ``name``."""
    if name not in task_names():
        raise RegistryError(f"unknown task {name!r}; choices: {task_names()}")
    return importlib.import_module(f"relaxbench.tasks.{name}").TASK


@dataclass(frozen=True)
class ModelEntry:
    """A model factory: ``build(spec, relaxed, **params)``, its family, and an optional unconstrained twin."""

    arch: str
    family: str
    build: Callable[..., nn.Module]
    build_unconstrained: Callable[..., nn.Module] | None


def _import_entry(arch: str) -> Callable[..., Any]:
    module_name, _, func_name = arch.partition(":")
    if not module_name or not func_name:
        raise RegistryError(f"model entry {arch!r} must look like 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise RegistryError(f"model entry {arch!r}: cannot import module {module_name!r} ({err})") from err
    func = getattr(module, func_name, None)
    if not callable(func):
        raise RegistryError(f"model entry {arch!r}: module {module_name!r} has no function {func_name!r}")
    return func


def get_model(arch: str, family: str | None = None) -> ModelEntry:
    """The factory for a built-in model name or a ``module:function`` entry (which then needs ``family``)."""
    if ":" in arch:
        if not family:
            raise RegistryError(f"model entry {arch!r} needs a 'family' (e.g. 'gnn', 'steerable_cnn')")
        return ModelEntry(arch, family, _import_entry(arch), None)
    if arch not in model_names():
        raise RegistryError(
            f"unknown model {arch!r}; choices: {model_names()} or a 'package.module:function' entry"
        )
    module = importlib.import_module(f"relaxbench.models.{arch}")
    return ModelEntry(
        arch, family or module.FAMILY, module.build, getattr(module, "build_unconstrained", None)
    )


def model_family(arch: str, family: str | None = None) -> str:
    """The family of a model entry: ``family`` if the config gives one, else a built-in module's ``FAMILY``, read
    from its source when it is a plain string assignment (no escnn / e3nn import), else imported."""
    if family:
        return family
    if arch in model_names():
        spec = importlib.util.find_spec(f"relaxbench.models.{arch}")
        source = spec.loader.get_source(spec.name) if spec is not None and spec.loader is not None else None
        for node in ast.parse(source or "").body:
            if (
                isinstance(node, ast.Assign)
                and [getattr(t, "id", None) for t in node.targets] == ["FAMILY"]
                and isinstance(node.value, ast.Constant)
            ):
                return str(node.value.value)
    return get_model(arch, family).family


@dataclass(frozen=True)
class BuildParameters:
    """The model parameters a ``build`` function takes (besides ``spec`` and ``relaxed``)."""

    names: tuple[str, ...]
    any_keyword: bool  # ``build`` has a ``**params`` catch-all


def build_parameters(arch: str, family: str | None = None) -> BuildParameters:
    """The keyword parameters of a model's ``build`` (what ``models.<name>.params`` may set).

    A built-in model's signature is read from its module's source when ``build`` is a plain top-level
    ``def`` (``ast``), so checking a config's ``params`` imports no model library (escnn and e3nn take
    seconds to import, which every Snakemake invocation would pay; a broken install of one then shows in
    the training jobs, not when the Snakefile is parsed). Anything else (a decorated or re-exported
    ``build``, a module without source) and every ``module:function`` entry is imported and inspected.
    """
    if arch in model_names():
        read = _source_build_parameters(f"relaxbench.models.{arch}")
        if read is not None:
            return read
    params = inspect.signature(get_model(arch, family).build).parameters.values()  # names unknown models
    return BuildParameters(
        tuple(
            p.name
            for p in params
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in ("spec", "relaxed")
        ),
        any(p.kind is p.VAR_KEYWORD for p in params),
    )


def task_kinds(arch: str, family: str | None = None) -> dict[str, str] | None:
    """The task kinds a model supports, each with the group it respects there (its module's ``TASK_KINDS``);
    ``None`` for a ``module:function`` entry whose module declares none (then any task is allowed).

    A built-in model's declaration is read from its module's source when it is a literal (no model library is
    imported, see :func:`build_parameters`); a built-in model without one is a :class:`RegistryError`.
    """
    if arch in model_names():
        module = f"relaxbench.models.{arch}"
        read = _declaration(module, "TASK_KINDS")
        if not isinstance(read, dict):
            raise RegistryError(f"model {arch!r} declares no TASK_KINDS dict in {module}")
        return read
    build = get_model(arch, family).build
    return getattr(sys.modules.get(build.__module__), "TASK_KINDS", None)


def relaxable(arch: str, family: str | None = None) -> bool:
    """Whether a model has equivariant layers to relax (its module's ``RELAXABLE``, default ``True``): the config
    check refuses the ``relaxed`` methods on a model that declares ``RELAXABLE = False`` (a plain CNN), before
    any job starts. Read from a built-in model's source when it is a literal, like :func:`task_kinds`."""
    if arch in model_names():
        read = _declaration(f"relaxbench.models.{arch}", "RELAXABLE")
        return True if read is None else bool(read)
    build = get_model(arch, family).build
    return bool(getattr(sys.modules.get(build.__module__), "RELAXABLE", True))


def _declaration(module: str, name: str) -> Any:
    """A built-in module's top-level ``name``: read from its source when a literal binds it, imported when it is
    bound otherwise, ``None`` when the module does not bind it (then nothing is imported)."""
    read = _source_literal(module, name)
    if read is not None:
        return read
    tree = _module_tree(module)
    if tree is None or any(_binds(node, name) for node in _module_scope(tree.body)):
        return getattr(importlib.import_module(module), name, None)
    return None


@cache
def _module_tree(module: str) -> ast.Module | None:
    """The parsed source of an importable module (without importing it), or ``None`` without source."""
    spec = importlib.util.find_spec(module)
    source = spec.loader.get_source(module) if spec is not None and spec.loader is not None else None
    return None if source is None else ast.parse(source, filename=spec.origin or module)


def _single_binder(tree: ast.Module, name: str) -> ast.AST | None:
    """The node binding ``name`` if the module binds it exactly once, at top level; else ``None``."""
    binders = [node for node in _module_scope(tree.body) if _binds(node, name)]
    if len(binders) != 1:
        return None
    node = binders[0]
    if isinstance(node, ast.Name):  # the target of a top-level assignment
        return next((stmt for stmt in tree.body if node in ast.walk(stmt)), None)
    return node if node in tree.body else None


def _source_literal(module: str, name: str) -> Any:
    """The value of ``name = <literal>`` in the module's source, or ``None`` unless bound once by such a line."""
    tree = _module_tree(module)
    stmt = None if tree is None else _single_binder(tree, name)
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
        try:
            return ast.literal_eval(stmt.value)
        except ValueError:
            return None
    return None


def _source_build_parameters(module: str) -> BuildParameters | None:
    """``build``'s parameters from the module's source, or ``None`` unless the module binds ``build`` exactly
    once, by an undecorated top-level ``def``."""
    tree = _module_tree(module)
    build = None if tree is None else _single_binder(tree, "build")
    if not (isinstance(build, ast.FunctionDef) and not build.decorator_list):
        return None
    args = build.args
    names = [a.arg for a in (*args.args, *args.kwonlyargs)]  # positional-only ones cannot be given by name
    return BuildParameters(tuple(n for n in names if n not in ("spec", "relaxed")), args.kwarg is not None)


def _module_scope(nodes) -> Iterator[ast.AST]:
    """Every node that runs in the module's own scope: statements at any depth of ``if`` / ``try`` / ``for``
    ..., and their expressions, but not the bodies of functions, classes and lambdas."""
    for node in nodes:
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            yield from _module_scope(ast.iter_child_nodes(node))


def _binds(node: ast.AST, name: str) -> bool:
    """Whether ``node`` (re)binds or deletes ``name`` (a ``*`` import counts: it may)."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return node.name == name
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return any(a.name == "*" or (a.asname or a.name).split(".")[0] == name for a in node.names)
    return isinstance(node, ast.Name) and node.id == name and isinstance(node.ctx, (ast.Store, ast.Del))
