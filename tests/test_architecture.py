"""The house rules: how pipelines are registered, what core/ may import, where settings mistakes land."""

import ast
import os
import re
import types
from pathlib import Path

import pytest
from conftest import PROJECT_ROOT, TINY_CATEGORIES, make_project_copy, run_kedro

SRC = PROJECT_ROOT / "src" / "cutpaste"


def _imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
    return modules


def test_core_imports_neither_kedro_nor_mlflow():
    offending = {
        str(path.relative_to(SRC)): sorted(module for module in _imported_modules(path) if module.split(".")[0] in {"kedro", "kedro_datasets", "mlflow"})
        for path in (SRC / "core").rglob("*.py")
    }
    assert not {path: modules for path, modules in offending.items() if modules}


def test_imports_point_one_way_from_the_kedro_layer_to_core():
    """tracking, serving, registration and namespaces never import a pipeline package (nor does core)."""
    for name in ("tracking.py", "serving.py", "registration.py", "namespaces.py", "hooks.py"):
        assert not [module for module in _imported_modules(SRC / name) if module.startswith("cutpaste.pipelines")], name
    for path in (SRC / "core").rglob("*.py"):
        assert not [module for module in _imported_modules(path) if module.startswith("cutpaste.") and not module.startswith("cutpaste.core")], path


def test_no_private_kedro_attribute_in_the_package():
    """The issue's check, ``grep -R "\\._" src | grep -i pipelines``, finds nothing."""
    hits = [f"{path}:{number}" for path in (PROJECT_ROOT / "src").rglob("*") if path.is_file() and path.suffix in {".py", ".txt", ".yml", ".toml"}
            for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
            if re.search(r"\._", line) and "pipelines" in f"{path}:{line}".lower()]
    assert hits == []


def test_augment_and_study_are_split_by_concern_and_re_exported():
    from cutpaste.core.augment import Cutout, CutPaste3Way, build_task, color_jitter
    from cutpaste.core.study import expand_grid, mean_se, table1

    assert CutPaste3Way.__module__ == "cutpaste.core.augment.cutpaste"
    assert Cutout.__module__ == "cutpaste.core.augment.baselines"
    assert color_jitter.__module__ == "cutpaste.core.augment.jitter"
    assert build_task.__module__ == "cutpaste.core.augment.tasks"
    assert (expand_grid.__module__, mean_se.__module__, table1.__module__) == (
        "cutpaste.core.study.grid", "cutpaste.core.study.statistics", "cutpaste.core.study.tables")
    longest = max((len(path.read_text().splitlines()), path.name) for folder in ("augment", "study") for path in (SRC / "core" / folder).glob("*.py"))
    assert longest[0] < 350, longest


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """``register_pipelines()`` of a project copy for env ``test`` (``edit`` rewrites a config file first)."""
    from kedro.framework.project import pipelines
    from kedro.framework.startup import bootstrap_project

    project = make_project_copy(tmp_path / "project")
    monkeypatch.chdir(project)
    monkeypatch.setenv("KEDRO_ENV", "test")
    bootstrap_project(project)
    pipelines.set_requested(None)  # a previous run in this process may have asked for one pipeline only

    def build(edit: dict[str, str] | None = None):
        from cutpaste.pipeline_registry import register_pipelines

        for name, text in (edit or {}).items():
            (project / "conf" / name).write_text(text)
        return register_pipelines()

    build.project = project
    return build


def test_registry_builds_one_namespace_per_category_of_the_env(registry):
    found = registry()
    assert {"__default__", "detection", "localization", "inference", "transfer", "variants", "cifar"} <= set(found)
    namespaces = {node.namespace.split(".")[0] for node in found["detection"].nodes if node.namespace}
    assert namespaces == set(TINY_CATEGORIES)  # conf/test/categories.yml
    assert "build_detection_report" in {node.name for node in found["__default__"].nodes}
    variant_categories = {node.namespace.split(".")[1] for node in found["variants"].nodes if node.namespace}
    assert variant_categories == {"brick"}  # conf/test study.categories


def test_categories_file_auto_discovers_the_data_root(registry):
    for name in ("alpha", "beta"):
        (registry.project / "data" / "mine" / name / "train" / "good").mkdir(parents=True)
    found = registry({"test/categories.yml": "categories: auto\n",
                      "test/parameters.yml": (PROJECT_ROOT / "conf/test/parameters.yml").read_text() + "data_root: data/mine\n"})
    assert {node.namespace for node in found["detection"].nodes if node.namespace} == {"alpha", "beta"}


def test_a_settings_mistake_breaks_only_its_own_pipeline(registry, caplog):
    cifar = (PROJECT_ROOT / "conf/test/parameters_cifar.yml").read_text()
    broken = re.sub(r"tasks:.*", "tasks: [rotation, no_such_task]", cifar, count=1)
    assert broken != cifar
    found = registry({"test/parameters_cifar.yml": broken})
    assert {node.name for node in found["cifar"].nodes} == {"cifar_settings_check"}
    assert len(found["detection"].nodes) > 10 and len(found["variants"].nodes) > 10
    assert "no_such_task" in caplog.text
    from cutpaste.registration import PipelineSettingsError

    with pytest.raises(PipelineSettingsError, match=r"cifar.*no_such_task"):
        found["cifar"].nodes[0].run({})


def test_an_unknown_category_list_is_a_clear_error(registry):
    found = registry({"test/categories.yml": "categories: [brick, brick]\n"})
    with pytest.raises(ValueError, match=r"categories.yml.*distinct"):
        found["detection"].nodes[0].run({})


def test_env_given_on_the_command_line_reaches_the_registry(monkeypatch):
    from cutpaste.hooks import RunEnvironmentHook

    monkeypatch.setenv("KEDRO_ENV", "local")
    RunEnvironmentHook().after_context_created(types.SimpleNamespace(env="paper"))
    assert os.environ["KEDRO_ENV"] == "paper"


def test_namespaces_select_categories_of_a_run(project_copy):
    """``kedro run --namespaces=brick`` trains brick only (no report: it needs every category)."""
    run_kedro(project_copy, namespaces=["brick"], to_outputs=["brick.model"])
    assert (project_copy / "data/06_models/brick/model.pt").exists()
    assert not (project_copy / "data/06_models/gravel").exists()


def test_run_parameters_that_would_change_the_grid_stop_the_run_with_the_reason(project_copy):
    with pytest.raises(ValueError, match=r"built for .*parameters_variants.yml"):
        run_kedro(project_copy, runtime_params={"study": {"seeds": [5]}}, pipeline_names=["variants"], node_names=["variants_grid"])
