"""Config validation: bad input names the key and the choices."""

import copy
import importlib
import inspect
import subprocess
import sys

import pytest
import yaml

from relaxbench import registry
from relaxbench.config import (
    ConfigError,
    RunSpec,
    expand_runs,
    load_config,
    resolve_run,
    run_hash,
    validate_config,
)


def test_valid_config_fills_defaults(tiny_config):
    cfg = validate_config(tiny_config)
    assert cfg["threads"] == 1 and cfg["models"]["tfn"]["arch"] == "tfn"
    runs = expand_runs(cfg)
    assert runs == [RunSpec("tetris", "tfn", "equivariant", 0), RunSpec("tetris", "tfn", "relaxed", 0)]
    resolved = resolve_run(cfg, runs[1])
    assert resolved["training"]["epochs"] == 2 and resolved["training"]["lr"] == 0.001
    assert resolved["method_params"]["schedule"] == "triangle"
    assert cfg["statistics"] == {"effect": 0.05, "power": 0.8}
    assert validate_config({**tiny_config, "statistics": {"effect": 0.1}})["statistics"]["power"] == 0.8


def test_model_training_overrides_and_hash_changes_only_for_that_model(tiny_config):
    tiny_config["models"]["other"] = {"arch": "tfn", "tasks": ["tetris"]}
    base = validate_config(tiny_config)
    changed = copy.deepcopy(tiny_config)
    changed["models"]["tfn"]["training"] = {"epochs": 3}
    changed = validate_config(changed)
    h = lambda cfg, m: run_hash(resolve_run(cfg, RunSpec("tetris", m, "relaxed", 0)))  # noqa: E731
    assert h(base, "tfn") != h(changed, "tfn")
    assert h(base, "other") == h(changed, "other")
    assert resolve_run(changed, RunSpec("tetris", "tfn", "relaxed", 0))["training"]["epochs"] == 3


def test_per_model_method_params_override_the_top_level_method(tiny_config):
    tiny_config["models"]["other"] = {
        "arch": "tfn",
        "tasks": ["tetris"],
        "method_params": {"relaxed": {"lambda_lie": 0.0005, "penalty_times_theta": True}},
    }
    cfg = validate_config(tiny_config)
    other = resolve_run(cfg, RunSpec("tetris", "other", "relaxed", 0))["method_params"]
    tfn = resolve_run(cfg, RunSpec("tetris", "tfn", "relaxed", 0))["method_params"]
    assert (other["lambda_lie"], other["penalty_times_theta"], other["lambda_norm"]) == (0.0005, True, 0.01)
    assert (tfn["lambda_lie"], tfn["penalty_times_theta"]) == (0.01, False)


def test_a_model_entry_with_its_own_seeds_runs_those_and_leaves_the_others_alone(tiny_config):
    tiny_config["seeds"] = [0, 1]
    tiny_config["models"]["other"] = {"arch": "tfn", "tasks": ["tetris"], "seeds": [5, 7, 9]}
    cfg = validate_config(tiny_config)
    seeds = {}
    for run in expand_runs(cfg):
        seeds.setdefault((run.model, run.method), []).append(run.seed)
    assert seeds == {
        ("tfn", "equivariant"): [0, 1],
        ("tfn", "relaxed"): [0, 1],
        ("other", "equivariant"): [5, 7, 9],
        ("other", "relaxed"): [5, 7, 9],
    }
    path = RunSpec("tetris", "other", "relaxed", 7).path(cfg["name"])
    assert path.parts[-4:] == ("tetris", "other", "relaxed", "seed7")


BAD = [
    (lambda c: c.update(colour="red"), "unknown key(s) ['colour']; choices"),
    (lambda c: c["training"].update(epochs="ten"), "training.epochs"),
    (lambda c: c["training"].update(lr=-1), "training.lr"),
    (lambda c: c["training"].update(learning_rate=1), "unknown key(s) ['learning_rate']"),
    (lambda c: c.update(seeds=[0, 0]), "seeds"),
    (lambda c: c.update(seeds=[-1]), "seeds.0"),
    (lambda c: c["models"]["tfn"].update(seeds=[1, 1]), "models.tfn.seeds"),
    (
        lambda c: c["models"]["tfn"].update(seeds=[0.5]),
        "at 'models.tfn.seeds.0': 0.5 is not of type 'integer'",
    ),
    (lambda c: c["models"]["tfn"].update(seeds=[]), "models.tfn.seeds"),
    (lambda c: c.update(device="tpu"), "device"),
    (lambda c: c["models"]["tfn"].update(arch="resnet"), "unknown model 'resnet'; choices"),
    (lambda c: c["models"]["tfn"].update(arch="nowhere.module:build", family="gnn"), "cannot import module"),
    (lambda c: c["models"]["tfn"].update(arch="relaxbench.models.tfn:nothing", family="gnn"), "no function"),
    (lambda c: c["models"]["tfn"].update(arch="relaxbench.models.tfn:build"), "needs a 'family'"),
    (lambda c: c["models"]["tfn"].update(tasks=["imagenet"]), "unknown task 'imagenet'; choices"),
    (lambda c: c["models"]["tfn"].update(methods=["relaxed_v2"]), "not configured; choices"),
    (lambda c: c["methods"].update(magic={}), "unknown method 'magic'; choices"),
    (lambda c: c["models"]["tfn"].update(method_params={"rpp": {}}), "method 'rpp' is not configured"),
    (
        lambda c: c["models"]["tfn"].update(method_params={"relaxed": {"lamda": 1}}),
        "models.tfn.method_params",
    ),
    (lambda c: c["methods"].update(relaxed={"lamda": 1}), "methods.relaxed"),
    (lambda c: c["tasks"].update(mnist3d={}), "unknown task 'mnist3d'"),
    (
        lambda c: c["tasks"]["tetris"].update(n_trian=3),
        "at 'tasks.tetris': unknown parameter(s) ['n_trian']; choices",
    ),
    (lambda c: c.pop("models"), "'models' is a required property"),
    (
        lambda c: c["models"].update(egnn={"tasks": ["tetris"]}),
        "at 'models.egnn'.tasks: model 'egnn' does not support task 'tetris' (kind 'point_classification'); "
        "it supports kinds ['nbody']: tasks ['nbody']",
    ),
    (
        lambda c: c["models"].update(steerable_cnn={"tasks": ["tetris"]}),
        "does not support task 'tetris' (kind 'point_classification'); it supports kinds ['image_classification']",
    ),
    (lambda c: c.update(statistics={"effect": 0}), "statistics.effect"),
    (lambda c: c.update(statistics={"power": 1.0}), "statistics.power"),
    (lambda c: c.update(statistics={"alpha": 0.1}), "unknown key(s) ['alpha']; choices: ['effect', 'power']"),
    (lambda c: c["methods"].update(dual_ascent={"dual": "approximate"}), "methods.dual_ascent.dual"),
    (lambda c: c["methods"].update(equivariant={"dual": "exact"}), "dual ascent needs"),
    (
        lambda c: (
            c["methods"].update(relaxed_published_lie={}),
            c["models"].update(steerable_cnn={"tasks": ["rotdigits"]}),
        ),
        "at 'models.steerable_cnn'.methods: method 'relaxed_published_lie' does not apply to family "
        "'steerable_cnn': the published reshape",
    ),
    (lambda c: c["methods"].update(symmetrised={"families": ["gnn"]}), "unknown key(s) ['families']"),
    (
        lambda c: (
            c["methods"].update(dual_ascent={}),
            c["models"].update(cnn={"tasks": ["rotdigits"], "methods": ["equivariant", "dual_ascent"]}),
        ),
        "at 'models.cnn'.methods: method 'dual_ascent' trains a relaxed model, and model 'cnn' has no "
        "equivariant layer to relax",
    ),
    (
        lambda c: c["models"].update(conv={"tasks": ["plume"], "methods": ["relaxed"]}),
        "method 'relaxed' trains a relaxed model, and model 'conv' has no equivariant layer to relax",
    ),
    (
        lambda c: (
            c["methods"].update(symmetrised={}),
            c["tasks"].update(plume={"symmetry": "scale"}),
            c["models"].update(equiv={"tasks": ["plume"], "methods": ["symmetrised"]}),
        ),
        "method 'symmetrised' does not apply to task 'plume': the task declares no frame",
    ),
]


@pytest.mark.parametrize("mutate, message", BAD)
def test_bad_configs_are_rejected_naming_the_key(tiny_config, mutate, message):
    mutate(tiny_config)
    with pytest.raises(ConfigError) as err:
        validate_config(tiny_config, "cfg.yaml")
    assert message in str(err.value)
    assert str(err.value).startswith("cfg.yaml")


def test_load_config_reads_yaml_safely(tmp_path, tiny_config):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config))
    assert load_config(path)["name"] == "unit"
    path.write_text("name: !!python/object/apply:os.system ['echo pwned']\nmodels: {}\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_model_params_are_checked_against_the_build_signature(tiny_config):
    from relaxbench.config import check_model_params

    cfg = validate_config(tiny_config)
    check_model_params(cfg)
    tiny_config["models"]["tfn"]["params"]["hiden"] = "4x0e"
    cfg = validate_config(tiny_config)  # the cheap check every job runs does not import the models
    with pytest.raises(
        ConfigError,
        match=r"at 'models.tfn.params': unknown parameter\(s\) \['hiden'\]; choices: \[.*'hidden'",
    ):
        check_model_params(cfg, "cfg.yaml")


@pytest.mark.parametrize("arch", registry.model_names())
def test_build_parameters_read_from_source_match_the_imported_signature(arch):
    """The source-read signature (what the workflow checks) is the one Python sees after importing."""
    params = inspect.signature(registry.get_model(arch).build).parameters.values()
    expected = tuple(
        p.name
        for p in params
        if p.name not in ("spec", "relaxed") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    )
    read = registry.build_parameters(arch)
    assert registry._source_build_parameters(f"relaxbench.models.{arch}") == read  # read, not imported
    assert read.names == expected
    assert read.any_keyword == any(p.kind is p.VAR_KEYWORD for p in params)


@pytest.mark.parametrize("arch", registry.model_names())
def test_task_kinds_read_from_source_are_the_modules_declaration(arch):
    module = importlib.import_module(f"relaxbench.models.{arch}")
    assert registry._source_literal(f"relaxbench.models.{arch}", "TASK_KINDS") == module.TASK_KINDS
    assert registry.task_kinds(arch) == module.TASK_KINDS
    kinds = {registry.get_task_class(t).kind for t in registry.task_names()} | {
        "plume"
    }  # plume: task to come
    assert set(module.TASK_KINDS) <= kinds


def test_checking_model_params_imports_no_model_library(tiny_config):
    """`snakemake` checks every config's params when it parses the Snakefile: that must not import escnn/e3nn."""
    tiny_config["models"]["steerable_cnn"] = {"tasks": ["rotdigits"], "params": {"N": 4, "channels": [4]}}
    code = (
        "import sys; from relaxbench.config import validate_config, check_model_params; import yaml; "
        f"cfg = validate_config(yaml.safe_load({yaml.safe_dump(tiny_config)!r})); check_model_params(cfg); "
        "print(sorted(m for m in ('escnn', 'e3nn') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"


def test_source_read_signature_falls_back_to_import_unless_build_is_one_plain_def(tmp_path, monkeypatch):
    package = tmp_path / "fake_models"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "plain.py").write_text(
        "def build(spec, /, relaxed=False, width=8, *, depth=2, **extra):\n    pass\n"
    )
    (package / "decorated.py").write_text(
        "def wrap(f):\n    def g(spec, relaxed=False, **kw):\n"
        "        return f(spec, relaxed)\n    return g\n\n@wrap\ndef build(spec, relaxed=False, width=8):\n    pass\n"
    )
    (package / "reexport.py").write_text("from fake_models.plain import build\n")
    (package / "redefined.py").write_text("def build(spec, a=1):\n    pass\n\nif True:\n    build = None\n")
    (package / "star.py").write_text("def build(spec, a=1):\n    pass\n\nfrom os.path import *\n")
    (package / "nested.py").write_text("def build(spec, a=1):\n    def helper(build=1):\n        build = 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    read = registry._source_build_parameters
    assert read("fake_models.plain") == registry.BuildParameters(("width", "depth"), True)
    assert read("fake_models.decorated") is None and read("fake_models.reexport") is None
    assert read("fake_models.redefined") is None and read("fake_models.star") is None
    assert read("fake_models.nested") == registry.BuildParameters(
        ("a",), False
    )  # a local name is not the module's
    # the import path sees the decorated signature
    assert registry.build_parameters("fake_models.decorated:build", "toy") == registry.BuildParameters(
        (), True
    )


def test_metric_version_is_part_of_every_run_hash(tiny_config, monkeypatch):
    """Bumping it when a metric changes meaning makes Snakemake rerun finished runs."""
    import relaxbench.config as config

    cfg = validate_config(tiny_config)
    run = expand_runs(cfg)[0]
    before = run_hash(resolve_run(cfg, run))
    monkeypatch.setattr(config, "METRIC_VERSION", config.METRIC_VERSION + 1)
    assert run_hash(resolve_run(cfg, run)) != before
