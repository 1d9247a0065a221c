"""Load a config, validate it against the schema, fill defaults, and expand it into runs.

Used by the Snakemake rules and the CLI alike, so both reject the same mistakes with the same message.
The schema (``relaxbench/config.schema.yaml``, linked from ``workflow/schemas/``) rejects unknown keys and
wrong types; this module adds the checks a schema cannot make (names of tasks, models and methods, the
``module:function`` entries), and resolves one run's full settings.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from relaxbench import layout, registry, sweeps
from relaxbench.errors import UserError, one_line
from relaxbench.methods import MethodError, get_method
from relaxbench.validation import first_error

__all__ = [
    "ConfigError",
    "METRIC_VERSION",
    "RunSpec",
    "SCHEMA_PATH",
    "data_key",
    "expand_runs",
    "grid_hashes",
    "load_config",
    "read_yaml",
    "model_cells",
    "resolve_run",
    "run_hash",
    "validate_config",
]

SCHEMA_PATH = Path(__file__).with_name("config.schema.yaml")

#: How a run's recorded metrics are computed. It is part of every run's settings (and so of its hash): bump it
#: when a metric changes meaning, and Snakemake reruns finished runs instead of mixing old and new values in
#: one leaderboard. 2: the equivariance error on test examples evenly spaced over the split (before: its first
#: examples). 3: the relative equivariance error divides by the RMS of the output's input-dependent part
#: (``Task.input_dependent``; before: by ``||f(x)||``, diluted by constant offsets), and the absolute error is
#: recorded beside it.
METRIC_VERSION = 3


class ConfigError(UserError):
    """A config that does not validate; the message names the key and, where it can, the choices."""


#: Limits of a config file: its size, and the number of values it holds once YAML aliases are expanded (an
#: "alias bomb" of a few hundred bytes otherwise expands to billions of values when anything walks it).
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_VALUES = 100_000
_BOMS = {
    b"\xff\xfe\x00\x00": "UTF-32",
    b"\x00\x00\xfe\xff": "UTF-32",
    b"\xff\xfe": "UTF-16",
    b"\xfe\xff": "UTF-16",
}


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses a key given twice in one mapping (PyYAML keeps the last silently).
    Keys brought in by a ``<<`` merge may be overridden, as YAML intends."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise ConfigError(f"line {line}: key {key!r} given twice (first on line {seen[key]})")
                seen[key] = line
            except TypeError:
                continue  # an unhashable key: the base class reports it
        return super().construct_mapping(node, deep)


def _count_values(obj: Any, limit: int) -> int:
    """The number of values in ``obj`` with shared (aliased) parts counted each time they appear; stops
    counting past ``limit`` (so a recursive or exponential structure costs at most ``limit`` steps)."""
    count, stack = 0, [obj]
    while stack and count <= limit:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return count


def read_yaml(path: str | Path) -> Any:
    """A YAML file read with the safe loader, refusing what a config never needs: more than
    :data:`MAX_CONFIG_BYTES`, text that is not UTF-8, a key given twice, more than :data:`MAX_CONFIG_VALUES`
    values after aliases are expanded. Raises :class:`ConfigError` naming the file."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes; not a relaxbench config")
        data = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config ({err.strerror or err})") from None
    for bom, encoding in _BOMS.items():
        if data.startswith(bom):
            raise ConfigError(f"{path}: the file is {encoding} text; save it as UTF-8")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}); save it as UTF-8"
        ) from None
    try:
        raw = yaml.load(text, Loader=_StrictLoader)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({one_line(err)})") from None
    if _count_values(raw, MAX_CONFIG_VALUES) > MAX_CONFIG_VALUES:
        raise ConfigError(
            f"{path}: more than {MAX_CONFIG_VALUES} values once YAML aliases are expanded (an alias bomb or a "
            "recursive alias?); not a relaxbench config"
        )
    return raw


@lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _fill_defaults(instance: Any, node: Mapping[str, Any], root: Mapping[str, Any]) -> None:
    """Fill ``default`` values of ``node``'s properties into ``instance`` (recursively, through ``$ref``)."""
    while "$ref" in node:
        node = {**_deref(node["$ref"], root), **{k: v for k, v in node.items() if k != "$ref"}}
    if not isinstance(instance, dict):
        return
    for key, sub in node.get("properties", {}).items():
        if key not in instance and "default" in sub:
            instance[key] = copy.deepcopy(sub["default"])
        if key in instance:
            _fill_defaults(instance[key], sub, root)
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        for key in set(instance) - set(node.get("properties", {})):
            _fill_defaults(instance[key], extra, root)


def _deref(ref: str, root: Mapping[str, Any]) -> Mapping[str, Any]:
    target: Any = root
    for part in ref.lstrip("#/").split("/"):
        target = target[part]
    return target


def validate_config(cfg: Mapping[str, Any], source: str = "config") -> dict[str, Any]:
    """Validate ``cfg``, fill defaults and check names; returns a new dict or raises :class:`ConfigError`."""
    if _count_values(cfg, MAX_CONFIG_VALUES) > MAX_CONFIG_VALUES:
        raise ConfigError(
            f"{source}: more than {MAX_CONFIG_VALUES} values (YAML aliases?); not a relaxbench config"
        )
    cfg = copy.deepcopy(dict(cfg))
    problem = first_error(cfg, schema())
    if problem:
        raise ConfigError(f"{source}: {problem}")
    _fill_defaults(cfg, schema(), schema())
    _check_folder_names(cfg, source)
    for method, overrides in cfg["methods"].items():
        try:
            get_method(method, overrides)
        except MethodError as err:
            raise ConfigError(f"{source}: at 'methods.{method}': {err}") from None
    known_tasks = registry.task_names()
    for task in cfg["tasks"]:
        if task not in known_tasks:
            raise ConfigError(f"{source}: at 'tasks.{task}': unknown task {task!r}; choices: {known_tasks}")
    for key, model in cfg["models"].items():
        where = f"{source}: at 'models.{key}'"
        model.setdefault("arch", key)
        if ":" in model["arch"]:
            try:
                registry.get_model(model["arch"], model.get("family"))
            except registry.RegistryError as err:
                raise ConfigError(f"{where}: {err}") from None
        elif model["arch"] not in registry.model_names():
            raise ConfigError(
                f"{where}: unknown model {model['arch']!r}; choices: {registry.model_names()} "
                "or a 'package.module:function' entry with a 'family'"
            )
        for task in model["tasks"]:
            if task not in known_tasks:
                raise ConfigError(f"{where}.tasks: unknown task {task!r}; choices: {known_tasks}")
        _check_task_kinds(model, key, where, known_tasks)
        for method in [*model.get("methods", []), *model.get("method_params", {})]:
            if method not in cfg["methods"]:
                raise ConfigError(
                    f"{where}.methods: method {method!r} is not configured; choices: {sorted(cfg['methods'])}"
                )
        for method, params in model.get("method_params", {}).items():
            try:
                get_method(method, {**cfg["methods"][method], **params})
            except MethodError as err:
                raise ConfigError(f"{where}.method_params.{method}: {err}") from None
        _check_sweeps(cfg, key, source)
        check_method_pairs(cfg, key, where)
    for task in sorted(set(cfg["tasks"]) | {t for m in cfg["models"].values() for t in m["tasks"]}):
        try:
            registry.get_task_class(task).check_params(cfg["tasks"].get(task))
        except UserError as err:
            message = str(err).removeprefix(f"task {task!r}: ")
            raise ConfigError(f"{source}: at 'tasks.{task}': {message}") from None
    return cfg


def _check_folder_names(cfg: Mapping[str, Any], source: str) -> None:
    """Every name that becomes a folder (:func:`relaxbench.layout.path_component`), and no two model keys
    that differ only in case (one folder on case-insensitive file systems)."""
    names = [("name", cfg["name"])]
    names += [(f"tasks.{task}", task) for task in cfg["tasks"]]
    names += [(f"methods.{method}", method) for method in cfg["methods"]]
    names += [(f"models.{key}", key) for key in cfg["models"]]
    names += [
        (f"models.{key}.tasks", task) for key, model in cfg["models"].items() for task in model["tasks"]
    ]
    names += [
        (f"models.{key}.methods", m) for key, model in cfg["models"].items() for m in model.get("methods", [])
    ]
    for where, value in names:
        try:
            layout.path_component(value, where)
        except layout.PathComponentError as err:
            raise ConfigError(f"{source}: {err}") from None
    folded: dict[str, str] = {}
    for key in cfg["models"]:
        other = folded.setdefault(key.casefold(), key)
        if other != key:
            raise ConfigError(
                f"{source}: at 'models.{key}': differs from model {other!r} only in case (one folder on "
                "case-insensitive file systems); rename one"
            )


def _check_task_kinds(model: Mapping[str, Any], key: str, where: str, known_tasks: list[str]) -> None:
    """Refuse a task whose kind the model does not declare (``TASK_KINDS``, read without importing a built-in)."""
    kinds = registry.task_kinds(model["arch"], model.get("family"))
    if kinds is None:
        return
    for task in model["tasks"]:
        kind = registry.get_task_class(task).kind
        if kind not in kinds:
            fitting = [t for t in known_tasks if registry.get_task_class(t).kind in kinds]
            raise ConfigError(
                f"{where}.tasks: model {key!r} does not support task {task!r} (kind {kind!r}); "
                f"it supports kinds {sorted(kinds)}: tasks {fitting}"
            )


def _model_training(cfg: Mapping[str, Any], model: Mapping[str, Any]) -> dict[str, Any]:
    """A model entry's training settings: the schema's defaults, the config's, the entry's own."""
    return {**schema()["properties"]["training"]["default"], **cfg["training"], **model.get("training", {})}


def _task_defaults(tasks: list[str]) -> dict[str, dict[str, Any]]:
    return {task: registry.get_task_class(task).defaults for task in tasks}


def _check_sweeps(cfg: Mapping[str, Any], key: str, source: str) -> None:
    """A model entry's sweep axes and values (:func:`relaxbench.sweeps.check_axes`; every value of a
    ``training.*`` axis also against the schema), and its cells' folder names."""
    model, where = cfg["models"][key], f"{source}: at 'models.{key}.sweeps'"
    training_schema = schema()["definitions"]["training"]
    try:
        sweeps.check_axes(
            model,
            _model_training(cfg, model),
            list(training_schema["properties"]),
            _task_defaults(model["tasks"]),
            cfg["tasks"],
        )
    except sweeps.SweepError as err:
        raise ConfigError(f"{where}: {err}") from None
    validator = jsonschema.Draft202012Validator(training_schema)
    for sweep in model.get("sweeps", []):
        for name, values in sweep.items():
            head, _, setting = name.partition(".")
            for value in values if head == "training" else []:
                error = next(iter(validator.iter_errors({setting: value})), None)
                if error is not None:
                    raise ConfigError(f"{where}: axis {name!r}: value {value!r}: {error.message}")
    for task in model["tasks"] if model.get("sweeps") else []:
        for cell in model_cells(cfg, key, task):
            try:
                layout.path_component(sweeps.folder(key, cell.label), f"models.{key}.sweeps")
            except layout.PathComponentError as err:
                raise ConfigError(f"{source}: {err}") from None


def check_method_pairs(cfg: Mapping[str, Any], key: str, where: str) -> None:
    """Raise :class:`ConfigError` if model entry ``key`` runs a method that does not apply to its family (the
    method's ``families``), a relaxed method on a model without equivariant layers (``RELAXABLE = False``), or, for
    ``symmetrised``, to one of its tasks (a task without a frame, ``Task.frame``),
    naming the pair and the reason."""
    model = cfg["models"][key]
    family = None
    for method in model.get("methods") or list(cfg["methods"]):
        declared = get_method(method)
        if declared.variant == "symmetrised":
            for task in model["tasks"]:
                if registry.get_task_class(task)(task_params(cfg, task), "").frame is None:
                    raise ConfigError(
                        f"{where}.methods: method {method!r} does not apply to task {task!r}: the task declares no "
                        "frame to average over (Task.frame); drop it from this model's 'methods'"
                    )
        if declared.variant == "relaxed" and not registry.relaxable(model["arch"], model.get("family")):
            raise ConfigError(
                f"{where}.methods: method {method!r} trains a relaxed model, and model {key!r} has no equivariant "
                "layer to relax (its module declares RELAXABLE = False); it takes the methods "
                f"{[m for m in sorted(cfg['methods']) if get_method(m).variant != 'relaxed']}; drop it from this "
                "model's 'methods'"
            )
        if declared.families is None:
            continue
        family = family or registry.model_family(model["arch"], model.get("family"))
        reason = declared.refuses(family)
        if reason:
            raise ConfigError(f"{where}.methods: {reason}; drop it from this model's 'methods'")


def check_model_params(cfg: Mapping[str, Any], source: str = "config") -> None:
    """Raise :class:`ConfigError` for a ``models.<name>.params`` key that the model's ``build`` does not take.

    Reads built-in models' signatures from their source and imports ``module:function`` entries
    (:func:`relaxbench.registry.build_parameters`); the workflow calls it once when it reads the config,
    before any job starts.
    """
    for key, model in cfg["models"].items():
        build = registry.build_parameters(model["arch"], model.get("family"))
        unknown = sorted(set(model.get("params", {})) - set(build.names))
        if unknown and not build.any_keyword:
            raise ConfigError(
                f"{source}: at 'models.{key}.params': unknown parameter(s) {unknown}; "
                f"choices: {sorted(build.names)}"
            )
        axes = {name for sweep in model.get("sweeps", []) for name in sweep if name.startswith("params.")}
        unknown = sorted(name for name in axes if name.partition(".")[2] not in build.names)
        if unknown and not build.any_keyword:
            raise ConfigError(
                f"{source}: at 'models.{key}.sweeps': unknown axis {unknown[0]!r}: {model['arch']!r} takes no "
                f"parameter {unknown[0].partition('.')[2]!r}; choices: {sorted(build.names)}"
            )


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML config (:func:`read_yaml`), validate it and fill defaults."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return validate_config(raw, str(path))


@dataclass(frozen=True, order=True)
class RunSpec:
    """One run of the grid: task x model x method x seed, and for a swept model entry its cell.

    ``axes``: the cell's value of every sweep axis of the entry that applies to the task (empty for an
    entry without sweeps); ``sweep``: the cell's label, the axes off the entry's base values
    (:mod:`relaxbench.sweeps`; empty for the base point).
    """

    task: str
    model: str
    method: str
    seed: int
    axes: tuple[tuple[str, Any], ...] = ()
    sweep: str = ""

    @property
    def folder(self) -> str:
        """The model's run folder: the entry's key, ``<key>+<label>`` for a cell off the base."""
        return sweeps.folder(self.model, self.sweep)

    def path(self, config_name: str, results: str | Path = layout.RESULTS) -> Path:
        """``results/<config>/runs/<task>/<folder>/<method>/seed<k>`` (:mod:`relaxbench.layout`)."""
        return layout.run_dir(layout.results_dir(config_name, results), self)


def model_cells(cfg: Mapping[str, Any], key: str, task: str) -> list[sweeps.Cell]:
    """The cells of model entry ``key`` on ``task`` (one empty cell for an entry without sweeps)."""
    model = cfg["models"][key]
    return sweeps.cells(
        model, task, _model_training(cfg, model), _task_defaults(model["tasks"]), cfg["tasks"]
    )


def expand_runs(cfg: Mapping[str, Any]) -> list[RunSpec]:
    """Every (task, model, cell, method, seed) of a validated config, sorted."""
    runs = []
    for key, model in cfg["models"].items():
        methods = model.get("methods") or list(cfg["methods"])
        for task in model["tasks"]:
            runs += [
                RunSpec(task, key, m, s, cell.axes, cell.label)
                for cell in model_cells(cfg, key, task)
                for m in methods
                for s in model.get("seeds", cfg["seeds"])
            ]
    return sorted(runs, key=lambda r: (r.task, r.model, r.sweep, r.method, r.seed))


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def task_params(cfg: Mapping[str, Any], task: str) -> dict[str, Any]:
    return dict(cfg["tasks"].get(task, {}))


def data_key(cfg: Mapping[str, Any], task: str, params: Mapping[str, Any] | None = None) -> str:
    """Cache key of a task's data: hash of its parameters (the config's, or ``params`` for a swept cell) and
    generator version."""
    cls = registry.get_task_class(task)
    params = task_params(cfg, task) if params is None else dict(params)
    return _digest({"task": task, "params": params, "generator": cls.generator_version})


def resolve_run(cfg: Mapping[str, Any], run: RunSpec) -> dict[str, Any]:
    """Every setting one run depends on (the input of ``relaxbench train`` and of the config hash)."""
    model = cfg["models"][run.model]
    task, params, training = sweeps.apply_axes(
        run.axes,
        task_params(cfg, run.task),
        registry.get_task_class(run.task).defaults,
        model.get("params", {}),
        _model_training(cfg, model),
    )
    method = get_method(
        run.method,
        {**cfg["methods"].get(run.method, {}), **model.get("method_params", {}).get(run.method, {})},
    )
    resolved = {
        "config_name": cfg["name"],
        "task": run.task,
        "task_params": task,
        "data_key": data_key(cfg, run.task, task),
        "model": run.model,
        "arch": model["arch"],
        "family": model.get("family"),
        "model_params": params,
        "method": run.method,
        "method_params": method.params(),
        "training": training,
        "seed": run.seed,
        "device": cfg["device"],
        "metric_version": METRIC_VERSION,
    }
    if run.axes:  # a swept cell: its axes and label, for the records (not for the hash: see run_hash)
        resolved["axes"] = {name: list(v) if isinstance(v, tuple) else v for name, v in run.axes}
        resolved["sweep"] = run.sweep
    return resolved


EXECUTION_ONLY = sweeps.EXECUTION_ONLY
#: Resolved keys that only name a cell (its settings are in the rest): adding a sweep to an entry reruns
#: none of its existing runs.
CELL_NAMES = ("axes", "sweep")


def run_hash(resolved: Mapping[str, Any]) -> str:
    """Hash of what a run's results depend on: its resolved settings without the seed (runs that differ only by
    seed share it), without execution details that do not change results (checkpointing, resuming) and
    without a swept cell's names (:data:`CELL_NAMES`; the settings they stand for are hashed)."""
    training = {k: v for k, v in resolved["training"].items() if k not in EXECUTION_ONLY}
    settings = {k: v for k, v in resolved.items() if k != "seed" and k not in CELL_NAMES}
    return _digest({**settings, "training": training})


def grid_hashes(cfg: Mapping[str, Any]) -> dict[RunSpec, str]:
    """Every run of a validated config's grid with its :func:`run_hash` (what ``relaxbench collect`` matches
    records against)."""
    return {run: run_hash(resolve_run(cfg, run)) for run in expand_runs(cfg)}
