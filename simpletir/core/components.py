"""Build a component from the experiment config, and check every chosen one before a run.

One formula, used by the run, the evaluation, the trainer, ``simpletir config show`` and
``pm.build``::

    entry   = registry.entry(kind, name, config.plugin_priority)  # a contested name resolved
    options = plugin_options(config, entry.spec)                  # plugin_config.<name>, typed
    built   = entry.spec.factory(options, config)

A :class:`ConfigError` or ``ValueError`` raised by the options class (its ``__post_init__``) or
by the factory becomes one :class:`ConfigError` line naming ``plugin_config.<name>.<option>``
(or ``plugin_config.<name>`` when the message names no option).

**Factories must be cheap.** :func:`check_components` calls the factory of every component a
run will use (``simpletir config show``, and a run before its run folder exists), then releases
what it built (``close()``, else ``aclose()``). A factory validates and stores its options;
workers, models and connections start on first use or in ``start()`` / ``warm_up()``, as the
built-ins do (the python sandbox's pool and math_verify's worker pool start lazily).
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from simpletir.core.config import ExperimentConfig
from simpletir.core.errors import ConfigError, PluginError, closest
from simpletir.core.options import NoOptions
from simpletir.core.specs import BenchmarkSpec, ComponentKind, ComponentSpec

if TYPE_CHECKING:
    from simpletir.core.plugins import Registered, Registry, SimpletirPluginManager

KINDS: tuple[ComponentKind, ...] = typing.get_args(ComponentKind)


# -- options ----------------------------------------------------------------------------------


def plugin_options(config: ExperimentConfig, spec: ComponentSpec) -> Any:
    """The typed options of ``spec`` from ``plugin_config.<spec.name>`` (defaults when absent).

    Raises :class:`ConfigError` naming ``plugin_config.<name>.<key>`` for unknown keys (with the
    closest option), wrong types, and values the options class refuses (``__post_init__``).
    """
    raw = config.plugin_config.get(spec.name)
    raw = {} if raw is None else raw
    where = f"plugin_config.{spec.name}"
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be a mapping of options, got {raw!r}")
    cls = spec.config_cls
    if not dataclasses.is_dataclass(cls):
        raise ConfigError(
            f"{spec.kind} {spec.name!r}: its config_cls {cls!r} is not a dataclass (plugin bug)"
        )
    fields = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in fields:
            options = ", ".join(sorted(fields)) or "none"
            hint = " (it takes no options)" if cls is NoOptions or not fields else f"; its options: {options}"
            raise ConfigError(f"unknown option {where}.{key}{closest(str(key), fields)}{hint}")
    try:
        typed = OmegaConf.merge(OmegaConf.structured(cls), OmegaConf.create(dict(raw)))
        return OmegaConf.to_object(typed)
    except OmegaConfBaseException as exc:  # before ValueError: OmegaConf's ValidationError is one
        key = getattr(exc, "full_key", None) or "?"
        value = raw.get(str(key).split(".")[0], "?") if isinstance(key, str) else "?"
        reason = str(exc).splitlines()[0]
        raise ConfigError(f"{where}.{key} = {value!r}: {reason}") from exc
    except (ConfigError, ValueError) as exc:  # the options class's __post_init__ refused a value
        raise refusal(exc, spec, values=raw) from exc


def resolved_options(options: Any) -> dict[str, Any]:
    """Options as plain YAML-able values (what ``config show`` and ``config.yaml`` record)."""
    plain = OmegaConf.to_container(OmegaConf.structured(options), resolve=True)
    assert isinstance(plain, dict)
    return {str(key): value for key, value in plain.items()}


def refusal(exc: Exception, spec: ComponentSpec, *, values: Any = None) -> ConfigError:
    """A plugin's ``ConfigError`` / ``ValueError`` as one line naming the option at fault.

    A message that already names a config key (``plugin_config.x.y``, ``algorithm.lr``...) is
    kept as it is; otherwise it is prefixed with ``plugin_config.<name>.<option> = <value>``
    for the first option it mentions, or ``plugin_config.<name>`` when it mentions none.
    """
    text = " ".join(str(exc).split()) or type(exc).__name__
    if _names_a_config_key(text):
        return ConfigError(text)
    where = f"plugin_config.{spec.name}"
    fields = (
        [f.name for f in dataclasses.fields(spec.config_cls)]
        if dataclasses.is_dataclass(spec.config_cls)
        else []
    )
    option = _first_mentioned(text, fields)
    if option is None:
        return ConfigError(f"{where}: {spec.kind} {spec.name!r}: {text}")
    if isinstance(values, Mapping):
        value = values.get(option, _default(spec.config_cls, option))
    else:
        value = getattr(values, option, _default(spec.config_cls, option))
    return ConfigError(f"{where}.{option} = {value!r}: {spec.kind} {spec.name!r}: {text}")


def _first_mentioned(text: str, names: list[str]) -> str | None:
    found = [(m.start(), name) for name in names if (m := re.search(rf"(?<![\w.]){re.escape(name)}\b", text))]
    return min(found)[1] if found else None


def _default(cls: Any, name: str) -> Any:
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
    return None


@cache
def _schema_keys() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(dotted section keys like ``algorithm.lr``, top-level keys) of the experiment schema."""
    dotted: list[str] = []
    top: list[str] = []
    hints = typing.get_type_hints(ExperimentConfig)
    for f in dataclasses.fields(ExperimentConfig):
        tp = hints[f.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            dotted.extend(f"{f.name}.{sub.name}" for sub in dataclasses.fields(tp))
        else:
            top.append(f.name)
    return tuple(dotted), tuple(top)


def _names_a_config_key(text: str) -> bool:
    if "plugin_config." in text:
        return True
    dotted, top = _schema_keys()
    if any(re.search(rf"(?<![\w.]){re.escape(key)}\b", text) for key in dotted):
        return True
    return any(re.search(rf"(?<![\w.]){re.escape(key)}\s*=", text) for key in top)


# -- building ---------------------------------------------------------------------------------


def build_spec(spec: ComponentSpec, config: ExperimentConfig, options: Any = None) -> Any:
    """``spec.factory(options, config)``, options read from the config unless given."""
    if options is None:
        options = plugin_options(config, spec)
    try:
        return spec.factory(options, config)
    except (ConfigError, ValueError) as exc:
        raise refusal(exc, spec, values=options) from exc


def lookup(
    pm: SimpletirPluginManager, kind: ComponentKind, name: str, config: ExperimentConfig
) -> Registered:
    """The component ``name`` of ``kind``, a contested name resolved by ``plugin_priority``."""
    return pm.registry().entry(kind, name, config.plugin_priority)


def build_component(
    pm: SimpletirPluginManager, kind: ComponentKind, name: str, config: ExperimentConfig
) -> Any:
    """Build the chosen component ``name`` of ``kind`` (what ``pm.build`` does)."""
    return build_spec(lookup(pm, kind, name, config).spec, config)


def find_benchmark(pm: SimpletirPluginManager, name: str, config: ExperimentConfig) -> BenchmarkSpec | None:
    """The benchmark a dataset name (or alias) means, or None for a raw parquet name."""
    return pm.registry().find_benchmark(name, config.plugin_priority)


def release(built: Any) -> None:
    """Let go of a component built only to check it: ``close()``, else ``aclose()``."""
    close = getattr(built, "close", None)
    if callable(close):
        close()
        return
    aclose = getattr(built, "aclose", None)
    if callable(aclose):
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            asyncio.run(aclose())
        # Inside a running loop (an embedding caller) it is left alone: a component that was
        # never started holds nothing to release.


# -- what a config chooses --------------------------------------------------------------------


@dataclass(frozen=True)
class Choice:
    """One component name the config mentions; ``active`` when this run uses it."""

    kind: ComponentKind
    name: str
    key: str  # the config key that names it
    active: bool


def choices(config: ExperimentConfig) -> list[Choice]:
    """Every component name ``config`` mentions, in config order."""
    training = not config.val_only
    found = [Choice("tool", name, "tools", config.tool_use) for name in config.tools]
    found.append(Choice("reward", config.reward, "reward", True))
    found += [Choice("filter", name, "filters", True) for name in config.filters]
    found += [Choice("benchmark", name, "valid_dataset", True) for name in config.valid_datasets]
    found += [Choice("benchmark", name, "train_dataset", training) for name in config.train_datasets]
    found.append(
        Choice("advantage_estimator", config.algorithm.adv_estimator, "algorithm.adv_estimator", training)
    )
    found.append(Choice("policy_loss", config.algorithm.policy_loss, "algorithm.policy_loss", training))
    return found


_HOW_TO_CHOOSE: dict[ComponentKind, str] = {
    "tool": "tools: [{name}] with tool_use: true",
    "reward": "reward: {name}",
    "filter": "filters: [..., {name}]",
    "benchmark": "valid_dataset / train_dataset: {name}",
    "advantage_estimator": "algorithm.adv_estimator: {name}",
    "policy_loss": "algorithm.policy_loss: {name}",
}


@dataclass
class ComponentCheck:
    """What :func:`check_components` found: the resolved options and the warnings to show."""

    plugin_config: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    chosen: list[Registered] = field(default_factory=list)  # the components this run uses


def check_components(
    config: ExperimentConfig, pm: SimpletirPluginManager, *, build: bool = True
) -> ComponentCheck:
    """Check every component ``config`` chooses, cheaply, before anything heavy starts.

    * blocks that match nothing, and ``plugin_priority`` entries, are errors;
    * every active choice must resolve (unknown, blocked and contested names are errors);
    * every ``plugin_config.<name>`` must name an installed component; options for one the
      config does not choose are checked, then ignored with a warning;
    * every chosen component's options are read (types, ``__post_init__``) and, with
      ``build``, its factory is called and what it built released;
    * a name two plugins claim that no choice uses is a warning.

    Returns ``plugin_config`` with each chosen component's options resolved (defaults filled
    in; components without options are left out unless given).
    """
    problems = pm.block_problems()
    if problems:
        raise PluginError("; ".join(problems))
    registry = pm.registry()
    priority = dict(config.plugin_priority)
    _check_priority(registry, priority)

    active: dict[int, Registered] = {}
    mentioned: dict[int, Registered] = {}
    used_claims: set[tuple[str, str]] = set()
    for choice in choices(config):
        try:
            if choice.kind == "benchmark" and registry.find_benchmark(choice.name, priority) is None:
                continue  # a raw dataset name: checked with the data files
            entry = registry.entry(choice.kind, choice.name, priority)
        except PluginError:  # unknown, blocked or contested
            if choice.active:
                raise
            continue  # this run does not use it: the name may stay
        if choice.active:
            active.setdefault(id(entry), entry)
            used_claims.add((choice.kind, choice.name))
        mentioned.setdefault(id(entry), entry)

    check = ComponentCheck(plugin_config=dict(config.plugin_config), chosen=list(active.values()))
    mentioned_names = {entry.spec.name for entry in mentioned.values()}
    to_validate = list(mentioned.values())
    for name in config.plugin_config:
        if name in mentioned_names:
            continue
        holders = [entry for entry in registry.all() if entry.spec.name == name]
        if holders:
            what = " or ".join(dict.fromkeys(f"{e.spec.kind} {name!r}" for e in holders))
            how = " or ".join(dict.fromkeys(_HOW_TO_CHOOSE[e.spec.kind].format(name=name) for e in holders))
            check.warnings.append(
                f"plugin_config.{name}: this config does not choose {what} (choose it with {how}); "
                "its options are checked but not used"
            )
            if len(holders) == 1:
                to_validate.append(holders[0])
            continue
        blocked = [
            f"{kind} {name!r} ({how})" for (kind, claim), how in registry.blocked.items() if claim == name
        ]
        if blocked:
            check.warnings.append(f"plugin_config.{name}: {blocked[0]} is blocked; its options are not used")
            continue
        if name in registry.aliases:
            raise ConfigError(
                f"plugin_config.{name}: {name!r} is an alias of benchmark {registry.aliases[name]!r}; "
                f"its options go under plugin_config.{registry.aliases[name]}"
            )
        known = {entry.spec.name for entry in registry.all()}
        raise ConfigError(
            f"plugin_config.{name}: no installed component is named {name!r}{closest(name, known)}"
        )

    options_of: dict[int, Any] = {}
    for entry in to_validate:
        options = plugin_options(config, entry.spec)
        if id(entry) in active:
            options_of[id(entry)] = options
            if dataclasses.fields(options) or entry.spec.name in config.plugin_config:
                check.plugin_config[entry.spec.name] = resolved_options(options)
    if build:
        for key, entry in active.items():
            release(build_spec(entry.spec, config, options_of[key]))

    for kind, claim in registry.contested():
        if (kind, claim) not in used_claims:
            check.warnings.append(f"{registry.collision_message(kind, claim)} (this config does not use it)")
    return check


def _check_priority(registry: Registry, priority: Mapping[str, Any]) -> None:
    """Each ``plugin_priority`` entry must be ``kind:name: provider`` with a real provider."""
    for key, provider in priority.items():
        where = f"plugin_priority.{key}"
        kind, sep, name = str(key).partition(":")
        if not sep or not name:
            raise ConfigError(f"{where}: a key is kind:name (benchmark:aime24), got {key!r}")
        if kind not in KINDS:
            kinds = ", ".join(KINDS)
            raise ConfigError(
                f"{where}: {kind!r} is not a kind of component{closest(kind, KINDS)}; kinds: {kinds}"
            )
        held = registry.claims[kind].get(name, [])
        if not held:
            raise ConfigError(
                f"{where}: no installed {kind} is named {name!r}{closest(name, registry.claims[kind])}"
            )
        if not isinstance(provider, str) or not any(entry.provided_by(provider) for entry in held):
            providers = "; ".join(f"plugin {e.plugin!r} from {e.distribution}" for e in held)
            raise ConfigError(
                f"{where}={provider!r}: {kind} {name!r} is provided by {providers}; "
                "name one of these plugins or distributions"
            )
