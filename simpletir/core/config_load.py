"""Load an :class:`ExperimentConfig` from YAML and overrides, and check it before heavy work.

Order of precedence (later wins): schema defaults, the YAML file, ``RESUME`` from the
environment, then command-line overrides. Overrides come in two styles, freely mixed::

    rollout.n=4  plugin_config.python.timeout_s=3      # dotted key=value
    --val_only True --max_turns 10  --n_val=32         # the seed's train.sh style

Values are parsed as YAML (``True`` -> bool, ``10`` -> int). Dataset fields accept a
space-separated string (``"aime24 aime25"``) or a YAML list; list fields (``filters``) accept a
YAML list or a space/comma-separated string. Every mistake raises :class:`ConfigError` naming
the file or override, the key, the value and the closest valid key.
"""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from simpletir.core.answers import answer_format
from simpletir.core.components import build_spec, check_components, find_benchmark
from simpletir.core.components import plugin_options as plugin_options  # re-exported (its old home)
from simpletir.core.config import ExperimentConfig
from simpletir.core.config_ranges import check_numeric_ranges
from simpletir.core.errors import ConfigError, DataError, closest, print_warning
from simpletir.core.loggers import check_logger_names, check_wandb_installed

if TYPE_CHECKING:
    from simpletir.core.plugins import SimpletirPluginManager

RESUME_ENV = "RESUME"
_DATASET_FIELDS = ("train_dataset", "valid_dataset")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


# -- schema walking ---------------------------------------------------------------------------


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _is_str_list(tp: Any) -> bool:
    return typing.get_origin(tp) is list and typing.get_args(tp) == (str,)


def schema_keys(cls: type = ExperimentConfig, prefix: str = "") -> list[str]:
    """Every dotted key of the schema (``rollout.n``...), for suggestions and docs checks."""
    keys = []
    for name, tp in _field_types(cls).items():
        keys.append(prefix + name)
        if _is_dataclass_type(tp):
            keys.extend(schema_keys(tp, f"{prefix}{name}."))
    return keys


def _suggest_key(full: str, siblings: list[str]) -> str:
    """A key with the same last part elsewhere (``temperature`` -> ``rollout.temperature``), else closest."""
    leaf = full.rsplit(".", 1)[-1]
    same_leaf = [key for key in schema_keys() if key.rsplit(".", 1)[-1] == leaf and key != full]
    if same_leaf:
        return f" (did you mean {same_leaf[0]!r}?)"
    return closest(full, siblings) or closest(full, schema_keys())


def _check_keys(data: Mapping[str, Any], cls: type, where: str, prefix: str = "") -> None:
    """Reject keys the schema does not have, naming the key and the closest valid one."""
    types = _field_types(cls)
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in types:
            suggestion = _suggest_key(full, [prefix + name for name in types])
            raise ConfigError(f"{where}: unknown key {full!r}{suggestion}")
        if _is_dataclass_type(types[key]):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}: {full!r} must be a mapping of options, got {value!r}")
            _check_keys(value, types[key], where, f"{full}.")


def _normalise(data: dict[str, Any], where: str) -> dict[str, Any]:
    """Accept YAML lists for dataset fields and strings for list fields."""
    types = _field_types(ExperimentConfig)
    out = dict(data)
    for key, value in data.items():
        if key == "plugin_config" and value is not None and not isinstance(value, Mapping):
            raise ConfigError(
                f"{where}: plugin_config must be a mapping of plugin name -> options "
                f"(plugin_config: {{python: {{timeout_s: 3}}}}), got a {type(value).__name__}"
            )
        if key in _DATASET_FIELDS and isinstance(value, list | tuple):
            out[key] = " ".join(str(item) for item in value)
        elif key in types and _is_str_list(types[key]) and isinstance(value, str):
            out[key] = value.replace(",", " ").split()
    return out


def _merge(base: DictConfig, data: Mapping[str, Any], where: str) -> DictConfig:
    try:
        merged = OmegaConf.merge(base, OmegaConf.create(dict(data)))
    except OmegaConfBaseException as exc:
        raise ConfigError(_describe_omegaconf_error(exc, where)) from exc
    except (TypeError, ValueError) as exc:  # e.g. a list where the schema has a mapping
        keys = ", ".join(sorted(str(k) for k in data))
        raise ConfigError(
            f"{where}: {keys}: {exc} (a list or value where the schema has a mapping?)"
        ) from exc
    assert isinstance(merged, DictConfig)
    return merged


def _describe_omegaconf_error(exc: OmegaConfBaseException, where: str) -> str:
    key = getattr(exc, "full_key", None) or "?"
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"{where}: key {key!r}: {reason}"


# -- loading ----------------------------------------------------------------------------------

DEFAULT_CONFIG_NAME = "quickstart_cpu"
CONFIG_NAME_ENV = "CONFIG_NAME"


def config_search_dirs() -> list[Path]:
    """Where a bare config name (``simpletir_trainer``) is looked up: ./configs, then the configs
    shipped inside the package (``simpletir/configs``; the checkout's ``configs/`` links there),
    so an installed wheel has them too."""
    packaged = Path(__file__).resolve().parents[1] / "configs"
    return list(dict.fromkeys([Path.cwd() / "configs", packaged]))


def resolve_config_path(name_or_path: str | None, environ: Mapping[str, str] | None = None) -> Path:
    """A config file from a path, or a bare name like the seed's ``CONFIG_NAME=simpletir_trainer``.

    ``None`` means ``$CONFIG_NAME`` or, failing that, the CPU quickstart.
    """
    environ = os.environ if environ is None else environ
    name = name_or_path or environ.get(CONFIG_NAME_ENV) or DEFAULT_CONFIG_NAME
    path = Path(name).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        raise ConfigError(f"config {str(path)!r} is a folder, not a YAML file")
    if path.suffix in ("", ".yaml", ".yml") and len(path.parts) == 1:
        stem = path.stem if path.suffix else path.name
        for folder in config_search_dirs():
            candidate = folder / f"{stem}.yaml"
            if candidate.is_file():
                return candidate
        known = sorted(
            {p.stem for folder in config_search_dirs() if folder.is_dir() for p in folder.glob("*.yaml")}
        )
        looked = ", ".join(str(folder) for folder in config_search_dirs())
        raise ConfigError(
            f"config {name!r} is neither a file nor a known config name{closest(stem, known)} "
            f"(looked in {looked}; known: {', '.join(known) or 'none'})"
        )
    raise ConfigError(f"config file {str(path)!r} does not exist")


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses a key given twice in one mapping (plain YAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(
                    f"key {key!r} appears twice in one mapping (line {key_node.start_mark.line + 1}); "
                    "keep one"
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> dict[str, Any]:
    if path.is_dir():
        raise ConfigError(f"config {str(path)!r} is a folder, not a YAML file")
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8"
        ) from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror or exc}") from exc
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def parse_overrides(args: Sequence[str]) -> list[tuple[str, str]]:
    """``["a.b=1", "--c", "2", "--d=x"]`` -> ``[("a.b", "1"), ("c", "2"), ("d", "x")]``."""
    pairs: list[tuple[str, str]] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            body = arg[2:]
            if "=" in body:
                key, value = body.split("=", 1)
            elif i + 1 < len(args) and not args[i + 1].startswith("--"):
                key, value = body, args[i + 1]
                i += 1
            else:
                raise ConfigError(f"override {arg!r} has no value (write '{arg} VALUE' or '{body}=VALUE')")
        elif "=" in arg:
            key, value = arg.split("=", 1)
        else:
            raise ConfigError(f"override {arg!r} is not key=value or --key value")
        # Keys under plugin_config / plugin_priority hold plugin names, where '-' is allowed.
        plugin_key = key.startswith(("plugin_config.", "plugin_priority."))
        key = key.strip() if plugin_key else key.strip().replace("-", "_")
        if not key:
            raise ConfigError(f"override {arg!r} has an empty key")
        pairs.append((key, value))
        i += 1
    return pairs


def _parse_value(raw: str) -> Any:
    try:
        return yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        return raw  # not YAML: keep the text as given (e.g. an unbalanced bracket in a name)


def _nest(key: str, value: Any) -> dict[str, Any]:
    head, _, rest = key.partition(".")
    return {head: _nest(rest, value) if rest else value}


def _schema_type(parts: Sequence[str]) -> Any:
    """The declared type of a dotted key, or None when the schema does not fix it."""
    cls: Any = ExperimentConfig
    tp: Any = None
    for part in parts:
        if not _is_dataclass_type(cls):
            return None
        tp = _field_types(cls).get(part)
        cls = tp
    return tp


def _override_to_data(key: str, raw: str) -> dict[str, Any]:
    """One override as a nested mapping, shaped like the YAML would be."""
    value = _parse_value(raw)
    parts = key.split(".")
    target = _schema_type(parts)
    if len(parts) == 1 and parts[0] in _DATASET_FIELDS:
        value = " ".join(map(str, value)) if isinstance(value, list) else raw.strip()
    elif _is_str_list(target) and isinstance(value, str):
        value = value.replace(",", " ").split()
    elif target in (str, str | None) and not isinstance(value, str):
        # A text field keeps the text typed (a name like 1e5, True or "a: b"); null clears it.
        value = None if target == str | None and value is None else raw.strip()
    return _nest(key, value)


def _env_resume(environ: Mapping[str, str]) -> dict[str, Any]:
    raw = environ.get(RESUME_ENV)
    if raw is None:
        return {}
    text = raw.strip().lower()
    if text in _TRUE:
        return {"resume": True}
    if text in _FALSE:
        return {}
    raise ConfigError(f"environment {RESUME_ENV}={raw!r} is not a boolean (use True or False)")


def load_config(
    path: str | Path | None,
    overrides: Sequence[str] = (),
    *,
    environ: Mapping[str, str] | None = None,
) -> ExperimentConfig:
    """The typed experiment config from ``path`` (None = schema defaults), env and overrides.

    Checks only what the schema knows (keys, types, ranges). Plugin names, plugin options and
    datasets are checked by :func:`validate_config`, which needs the plugin manager.
    """
    environ = os.environ if environ is None else environ
    cfg = OmegaConf.structured(ExperimentConfig)
    if path is not None:
        file_path = Path(path)
        data = _normalise(read_yaml(file_path), str(file_path))
        _check_keys(data, ExperimentConfig, str(file_path))
        cfg = _merge(cfg, data, str(file_path))
    resume = _env_resume(environ)
    if resume:
        cfg = _merge(cfg, resume, f"environment {RESUME_ENV}")
    for key, raw in parse_overrides(overrides):
        where = f"override {key}={raw}"
        data = _override_to_data(key, raw)
        _check_keys(data, ExperimentConfig, where)
        # A deep merge, so plugin_config.python.timeout_s=3 keeps python's other options.
        cfg = _merge(cfg, data, where)
    try:
        config = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as exc:
        raise ConfigError(_describe_omegaconf_error(exc, str(path or "config"))) from exc
    assert isinstance(config, ExperimentConfig)
    check_ranges(config)
    return config


DTYPES = ("auto", "float32", "bfloat16", "float16")


NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,100}")


def check_experiment_name(name: str) -> None:
    """``experiment_name`` names folders and files (runs/<name>, logs/<name>_*.json): a plain name."""
    if not NAME_PATTERN.fullmatch(name) or name in (".", ".."):
        raise ConfigError(
            f"experiment_name={name!r} must be a plain name: 1 to 100 letters, digits, '.', '_' or '-', "
            "not '.' or '..' (it becomes runs/<name>, logs/<name>_*.json and checkpoints/<name>)"
        )


def check_ranges(config: ExperimentConfig) -> None:
    """Values the types allow but the run cannot use, and keys that must agree."""
    check_experiment_name(config.experiment_name)
    check_numeric_ranges(config)
    if config.rollout.dtype not in DTYPES:
        raise ConfigError(f"rollout.dtype must be one of {', '.join(DTYPES)}, got {config.rollout.dtype!r}")
    if config.tool_use and not config.tools:
        raise ConfigError(
            "tool_use=true but tools is empty: name a tool (tools=[python]) or set tool_use=false"
        )
    if (
        not config.val_only
        and config.algorithm.ppo_mini_batch_size < config.train_batch_size
        and config.train_batch_size % config.algorithm.ppo_mini_batch_size
    ):
        raise ConfigError(
            f"algorithm.ppo_mini_batch_size={config.algorithm.ppo_mini_batch_size} must divide "
            f"train_batch_size={config.train_batch_size} (both count prompts)"
        )
    if len(config.algorithm.betas) != 2 or not all(0.0 <= b < 1.0 for b in config.algorithm.betas):
        raise ConfigError(
            f"algorithm.betas must be two numbers in [0, 1), got {list(config.algorithm.betas)}"
        )
    if config.val_only and not config.valid_datasets:
        raise ConfigError("val_only is set but valid_dataset is empty")
    if not config.val_only and not config.train_datasets:
        raise ConfigError("train_dataset is empty (set val_only=True to only evaluate)")
    check_logger_names(config.trainer.loggers)
    answer_format(config.rollout.answer_format)  # a ConfigError with did-you-mean
    check_prompt_template(config.rollout.prompt_template)


def check_prompt_template(template: str | None) -> None:
    """An explicit ``rollout.prompt_template`` must hold ``{question}`` and format cleanly.

    None (the default) is assembled from the chosen tools by the rollout, always valid.
    """
    if template is None:
        return
    if "{question}" not in template:
        raise ConfigError("rollout.prompt_template must contain '{question}' where the problem goes")
    try:  # filled with str.format: literal braces must be doubled ({{}})
        template.format(question="")
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(
            f"rollout.prompt_template is not a valid format string ({exc!r}); "
            "write literal braces doubled: {{ }}"
        ) from exc


def to_yaml(config: ExperimentConfig) -> str:
    """The fully resolved config as YAML (what ``simpletir config show`` prints and runs save)."""
    return OmegaConf.to_yaml(OmegaConf.structured(config))


# -- plugin options and cross-checks ----------------------------------------------------------


def validate_config(
    config: ExperimentConfig, pm: SimpletirPluginManager, *, check_data: bool = True
) -> ExperimentConfig:
    """Check every name the config chooses (loggers included), every plugin's options, and the
    dataset files; return the config with the chosen components' options resolved.

    Cheap by design: runs before any model, engine or sandbox starts (and before a run makes its
    folder). Each chosen component's options are read and its factory called, so a plugin that
    refuses its options fails here, in one line naming ``plugin_config.<name>.<option>``
    (:func:`simpletir.core.components.check_components`). Warnings (options for a component
    the config does not choose, a contested name it does not use) go to stderr.
    """
    check_logger_names(config.trainer.loggers)
    check_wandb_installed(config.trainer.loggers)
    checked = check_components(config, pm)
    for warning in checked.warnings:
        print_warning(warning)
    config = dataclasses.replace(config, plugin_config=checked.plugin_config)
    if check_data:
        _check_dataset_files(config, pm)
    return config


def _check_dataset_files(config: ExperimentConfig, pm: SimpletirPluginManager) -> None:
    from simpletir.core.data import DATA_DIR_ENV, dataset_path, describe_data_dir_search, resolve_data_dir

    registry = pm.registry()
    datasets = list(config.valid_datasets)
    if not config.val_only:
        datasets += config.train_datasets
    data_dir = resolve_data_dir(config.data_dir)
    searched = (
        f"data directory {str(data_dir)!r}; set data_dir or ${DATA_DIR_ENV} to use another"
        if data_dir is not None
        else describe_data_dir_search(config.data_dir)
    )
    for name in datasets:
        bench = find_benchmark(pm, name, config)
        if bench is not None:
            # A benchmark whose options can move its data (an explicit path, the hub) says itself
            # whether it can load, through an optional check_data(data_dir) on the built object.
            built = build_spec(bench, config)
            check_data = getattr(built, "check_data", None)
            if callable(check_data):
                check_data(data_dir)
                continue
        for file_name in bench.data_files if bench is not None else (name,):
            if data_dir is None:
                raise DataError(f"dataset {name!r} needs a data directory and none was found ({searched})")
            path = dataset_path(data_dir, file_name)
            if path.is_file():
                continue
            if bench is None:
                names = registry.names("benchmark") + sorted(registry.aliases)
                installed = ", ".join(registry.names("benchmark")) or "none"
                blocked = (
                    f"; blocked plugins, which may provide it: {', '.join(registry.blocked_plugins)}"
                    if registry.blocked_plugins
                    else ""
                )
                raise DataError(
                    f"unknown dataset {name!r}{closest(name, names)}: no benchmark plugin provides it and "
                    f"{str(path)!r} does not exist (benchmarks: {installed}{blocked})"
                )
            raise DataError(
                f"benchmark {bench.name!r} needs {str(path)!r}, which does not exist ({searched})"
            )
