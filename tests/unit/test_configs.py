"""Every option of every Hydra config group composes, and its `_target_`s can be imported.

The options are discovered from the yaml files under fisheye/conf, so a new config file is
tested without editing this module. Nothing is instantiated (no trainers, no models).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from importlib import resources
from typing import Any

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class, get_method
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from fisheye.monitoring.fitting import FitOptions

CONFIG_MODULE = "fisheye.conf"
PRIMARY = "train"


def _options(group: str) -> list[str]:
    folder = resources.files(CONFIG_MODULE) / group
    return sorted(
        p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")
    )


def _groups_in_defaults() -> list[str]:
    """The config groups train.yaml's `defaults:` list composes (data, model, trainer, ...)."""
    primary = OmegaConf.load(str(resources.files(CONFIG_MODULE) / f"{PRIMARY}.yaml"))
    return sorted(
        key for entry in primary.defaults if isinstance(entry, DictConfig) for key in entry
    )


def _groups_on_disk() -> list[str]:
    root = resources.files(CONFIG_MODULE)
    return sorted(p.name for p in root.iterdir() if p.is_dir() and _options(p.name))


GROUP_OPTIONS = [(group, option) for group in _groups_on_disk() for option in _options(group)]


@pytest.fixture
def hydra_module() -> Iterator[None]:
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        yield
    GlobalHydra.instance().clear()


def _targets(node: Any, where: str = "") -> Iterator[tuple[str, str]]:
    """(config path, `_target_` string) for every `_target_` in a plain config tree."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "_target_":
                yield where or "<root>", value
            else:
                yield from _targets(value, f"{where}.{key}" if where else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _targets(value, f"{where}[{i}]")


def _resolve_target(target: str) -> Any:
    """The class or function a `_target_` names (ImportError/ValueError if it has none)."""
    try:
        return get_class(target)
    except ValueError:  # not a class: a function is fine too
        return get_method(target)


def _compose(overrides: list[str]) -> DictConfig:
    """The composed config, with the run folder a Hydra run would set (for `${hydra:...}`)."""
    cfg = compose(PRIMARY, overrides=overrides, return_hydra_config=True)
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.runtime.output_dir = "runs/test"
    HydraConfig.instance().set_config(cfg)
    return cfg


def test_the_config_groups_are_the_ones_train_yaml_composes() -> None:
    # Every group folder is tested below; this catches one train.yaml does not compose.
    groups = _groups_in_defaults()
    assert _groups_on_disk() == groups
    assert {"data", "model", "trainer", "callbacks", "logger", "paths", "hydra"} <= set(groups)
    assert {"experiment", "hparams_search"} <= set(groups)


def test_default_config_composes(hydra_module: None) -> None:
    cfg = _compose([])
    assert cfg.task_name == PRIMARY
    assert {"data", "model", "trainer", "callbacks", "logger", "paths", "drift"} <= set(cfg)


@pytest.mark.parametrize(
    ("group", "option"), GROUP_OPTIONS, ids=[f"{g}={o}" for g, o in GROUP_OPTIONS]
)
def test_config_option_composes_and_its_targets_resolve(
    hydra_module: None, group: str, option: str
) -> None:
    cfg = _compose([f"{group}={option}"])
    chosen = cfg.hydra.runtime.choices.get(group)
    assert chosen == option, f"{group}={option} composed as {group}={chosen}"

    # Every interpolation of what the task receives resolves.
    task = OmegaConf.to_container(
        OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True
    )
    assert isinstance(task, dict)

    # Hydra's own section (sweeper, launcher) holds `_target_`s too; left unresolved there.
    hydra_section = OmegaConf.to_container(cfg.hydra, resolve=False)
    targets = list(_targets(task)) + list(_targets(hydra_section, "hydra"))
    for where, target in targets:
        assert isinstance(target, str) and target, f"{where}._target_ is {target!r}"
        assert callable(_resolve_target(target)), f"{where}._target_ {target} is not callable"
    if group in ("data", "model", "trainer"):
        assert any(where == group for where, _ in targets), f"{group} has no _target_"


def test_drift_section_matches_fit_options_defaults(hydra_module: None) -> None:
    """conf/train.yaml's `drift:` and FitOptions' defaults are one set of numbers."""
    drift = OmegaConf.to_container(_compose([]).drift, resolve=True)
    assert isinstance(drift, dict)
    assert isinstance(drift.pop("enabled"), bool)
    fields = {f.name: f.default for f in dataclasses.fields(FitOptions)}
    # Training builds FitOptions(seed=cfg.seed, **drift): every key must be a FitOptions field.
    assert set(drift) <= set(fields), set(drift) - set(fields)
    assert {"sample", "reference_size", "false_alarm_rate"} <= set(drift)
    assert drift == {name: fields[name] for name in drift}
    assert FitOptions() == FitOptions(**{**drift, "seed": fields["seed"]})


def test_the_pipeline_depends_on_code_that_exists() -> None:
    """dvc.yaml names source files as stage dependencies: each must exist (moves break it)."""
    import yaml

    from tests.helpers.paths import REPO_ROOT

    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    deps = [d for stage in stages.values() for d in stage.get("deps", []) if d.startswith("src/")]
    assert deps
    missing = [d for d in deps if not (REPO_ROOT / d).exists()]
    assert not missing, f"dvc.yaml depends on missing files: {missing}"
