"""The plugin manager factory and the registry of components plugins provide.

:func:`make_plugin_manager` builds a fresh :class:`SimpletirPluginManager` (never a module
global, so every test gets its own): it adds the hookspecs, loads every entry point of the
group ``simpletir`` (the built-ins come through that very group, as a third party's do), and
skips blocked names (``--block NAME`` / ``$SIMPLETIR_BLOCK_PLUGINS=a,b``).

``pm.registry()`` collects the spec records of the ``register_*`` hooks into a
:class:`Registry`: lookups by name with closest-name suggestions, benchmark alias resolution,
and a loud :class:`PluginError` when two plugins claim one name (naming both distributions).
"""

from __future__ import annotations

import importlib.metadata as importlib_metadata
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, cast

import pluggy

from simpletir import hookspecs
from simpletir.core.errors import PluginError, closest
from simpletir.core.specs import (
    AdvantageEstimatorSpec,
    BenchmarkSpec,
    ComponentKind,
    ComponentSpec,
    FilterSpec,
    PolicyLossSpec,
    RewardSpec,
    ToolSpec,
)

if TYPE_CHECKING:
    from simpletir.core.config import ExperimentConfig

ENTRY_POINT_GROUP = hookspecs.PROJECT_NAME
BLOCK_ENV = "SIMPLETIR_BLOCK_PLUGINS"
KINDS: tuple[ComponentKind, ...] = (
    "tool",
    "reward",
    "filter",
    "benchmark",
    "advantage_estimator",
    "policy_loss",
)
_HOOK_OF_KIND: dict[ComponentKind, str] = {
    "tool": "register_tools",
    "reward": "register_rewards",
    "filter": "register_filters",
    "benchmark": "register_benchmarks",
    "advantage_estimator": "register_advantage_estimators",
    "policy_loss": "register_policy_losses",
}
_SPEC_CLASS_OF_KIND: dict[ComponentKind, type[ComponentSpec]] = {
    "tool": ToolSpec,
    "reward": RewardSpec,
    "filter": FilterSpec,
    "benchmark": BenchmarkSpec,
    "advantage_estimator": AdvantageEstimatorSpec,
    "policy_loss": PolicyLossSpec,
}
LOCAL_DISTRIBUTION = "in-process"  # registered by code, not from an installed distribution


@dataclass(frozen=True)
class PluginSource:
    """Which installed distribution a plugin came from."""

    distribution: str
    version: str
    entry_point: str = ""


@dataclass(frozen=True)
class LoadFailure:
    name: str
    distribution: str
    error: str

    def message(self) -> str:
        return f"plugin {self.name!r} from {self.distribution} failed to load: {self.error}"


@dataclass(frozen=True)
class Registered:
    """One component spec and the plugin that provided it."""

    spec: ComponentSpec
    plugin: str
    source: PluginSource | None

    @property
    def distribution(self) -> str:
        return self.source.distribution if self.source else LOCAL_DISTRIBUTION

    @property
    def version(self) -> str:
        return self.source.version if self.source else ""

    def provider(self) -> str:
        """'plugin X from distribution Y' for collision messages."""
        if self.source is None:
            return f"plugin {self.plugin!r} (registered in-process)"
        return f"plugin {self.plugin!r} from distribution {self.source.distribution} {self.source.version}"


@dataclass
class Registry:
    """Components by kind and name, plus benchmark aliases. Built by ``pm.registry()``."""

    entries: dict[ComponentKind, dict[str, Registered]] = field(
        default_factory=lambda: {k: {} for k in KINDS}
    )
    aliases: dict[str, str] = field(default_factory=dict)  # benchmark alias -> benchmark name
    problems: list[str] = field(default_factory=list)  # collisions recorded in lenient mode

    def names(self, kind: ComponentKind) -> list[str]:
        return sorted(self.entries[kind])

    def all(self) -> list[Registered]:
        return [self.entries[kind][name] for kind in KINDS for name in sorted(self.entries[kind])]

    def entry(self, kind: ComponentKind, name: str) -> Registered:
        """The registered component ``name`` of ``kind`` (benchmarks also by alias)."""
        if kind == "benchmark" and name not in self.entries[kind] and name in self.aliases:
            name = self.aliases[name]
        found = self.entries[kind].get(name)
        if found is None:
            known = self.names(kind) + (sorted(self.aliases) if kind == "benchmark" else [])
            listing = ", ".join(self.names(kind)) or "none installed"
            raise PluginError(f"unknown {kind} {name!r}{closest(name, known)}; available {kind}s: {listing}")
        return found

    def get(self, kind: ComponentKind, name: str) -> ComponentSpec:
        return self.entry(kind, name).spec

    def tool(self, name: str) -> ToolSpec:
        return cast(ToolSpec, self.get("tool", name))

    def reward(self, name: str) -> RewardSpec:
        return cast(RewardSpec, self.get("reward", name))

    def filter(self, name: str) -> FilterSpec:
        return cast(FilterSpec, self.get("filter", name))

    def benchmark(self, name: str) -> BenchmarkSpec:
        """A benchmark by name or alias (``aime24`` or ``deepscaler/aime``)."""
        return cast(BenchmarkSpec, self.get("benchmark", name))

    def find_benchmark(self, name: str) -> BenchmarkSpec | None:
        """Like :meth:`benchmark` but None when no plugin provides ``name`` (e.g. a raw parquet name)."""
        resolved = self.aliases.get(name, name)
        found = self.entries["benchmark"].get(resolved)
        return cast(BenchmarkSpec, found.spec) if found else None

    # -- building ---------------------------------------------------------------------------
    def _add(self, registered: Registered, *, strict: bool) -> None:
        spec = registered.spec
        kind = spec.kind
        claims = [spec.name, *(spec.aliases if isinstance(spec, BenchmarkSpec) else ())]
        for claim in claims:
            holder = self._holder(kind, claim)
            if holder is not None:
                first = f"{holder.provider()}{_role(holder.spec, claim)}"
                second = f"{registered.provider()}{_role(spec, claim)}"
                message = (
                    f"{kind} {claim!r} is claimed by two plugins: {first} and {second}; "
                    "uninstall one or block it (--block NAME)"
                )
                if strict:
                    raise PluginError(message)
                self.problems.append(message)
                return
        self.entries[kind][spec.name] = registered
        if isinstance(spec, BenchmarkSpec):
            for alias in spec.aliases:
                self.aliases[alias] = spec.name

    def _holder(self, kind: ComponentKind, claim: str) -> Registered | None:
        if claim in self.entries[kind]:
            return self.entries[kind][claim]
        if kind == "benchmark" and claim in self.aliases:
            return self.entries[kind][self.aliases[claim]]
        return None


def _role(spec: ComponentSpec, claim: str) -> str:
    return "" if claim == spec.name else f" (as an alias of {spec.name!r})"


@dataclass(frozen=True)
class PluginInfo:
    """What ``simpletir plugins`` shows for one loaded plugin."""

    name: str
    distribution: str
    version: str
    hooks: tuple[str, ...]


class SimpletirPluginManager(pluggy.PluginManager):
    """A pluggy manager that also knows where plugins came from and what they provide."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT_NAME)
        self.add_hookspecs(hookspecs)
        self.sources: dict[str, PluginSource] = {}
        self.load_failures: list[LoadFailure] = []
        self.blocked_names: tuple[str, ...] = ()
        self._registry: dict[bool, Registry] = {}

    # Any change to the set of plugins invalidates the collected registry.
    def register(self, plugin: Any, name: str | None = None) -> str | None:
        self._registry.clear()
        return super().register(plugin, name)

    def unregister(self, plugin: Any = None, name: str | None = None) -> Any:
        self._registry.clear()
        return super().unregister(plugin, name)

    def registry(self, *, strict: bool = True) -> Registry:
        """Collect every plugin's specs. ``strict=False`` records collisions instead of raising."""
        if strict not in self._registry:
            self._registry[strict] = self._collect(strict=strict)
        return self._registry[strict]

    def _collect(self, *, strict: bool) -> Registry:
        registry = Registry()
        for kind in KINDS:
            hook_name = _HOOK_OF_KIND[kind]
            impls = sorted(getattr(self.hook, hook_name).get_hookimpls(), key=lambda impl: impl.plugin_name)
            for impl in impls:
                for spec in self._specs_from(impl.plugin_name, hook_name, impl.function, kind):
                    registered = Registered(spec, impl.plugin_name, self.sources.get(impl.plugin_name))
                    registry._add(registered, strict=strict)
        return registry

    def _specs_from(
        self, plugin_name: str, hook_name: str, impl: Any, kind: ComponentKind
    ) -> list[ComponentSpec]:
        # Called per plugin (not through pm.hook fan-out) so every spec is attributed to its
        # provider, which collision messages need.
        expected = _SPEC_CLASS_OF_KIND[kind]
        try:
            specs = list(impl() or ())
        except Exception as exc:
            raise PluginError(
                f"plugin {plugin_name!r}: {hook_name}() raised {type(exc).__name__}: {exc}"
            ) from exc
        for spec in specs:
            if not isinstance(spec, expected):
                raise PluginError(
                    f"plugin {plugin_name!r}: {hook_name}() must yield {expected.__name__} records, "
                    f"got {type(spec).__name__}"
                )
        return specs

    def plugin_infos(self) -> list[PluginInfo]:
        infos = []
        for name, plugin in sorted(self.list_name_plugin(), key=lambda item: item[0]):
            if plugin is None:
                continue
            source = self.sources.get(name)
            hooks = tuple(sorted(caller.name for caller in self.get_hookcallers(plugin) or ()))
            infos.append(
                PluginInfo(
                    name=name,
                    distribution=source.distribution if source else LOCAL_DISTRIBUTION,
                    version=source.version if source else "",
                    hooks=hooks,
                )
            )
        return infos

    def build(self, kind: ComponentKind, name: str, config: ExperimentConfig) -> Any:
        """Build the chosen component: ``spec.factory(plugin_options(config, spec), config)``."""
        from simpletir.core.config_load import plugin_options  # config_load imports this module

        spec = self.registry().get(kind, name)
        return spec.factory(plugin_options(config, spec), config)


def blocked_from_env(environ: dict[str, str] | None = None) -> list[str]:
    raw = (environ if environ is not None else os.environ).get(BLOCK_ENV, "")
    return [name.strip() for name in raw.split(",") if name.strip()]


def _entry_points() -> list[importlib_metadata.EntryPoint]:
    return sorted(importlib_metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)


def make_plugin_manager(
    *,
    block: Iterable[str] = (),
    load_entry_points: bool = True,
    plugins: Sequence[tuple[str, Any]] = (),
    on_load_error: Literal["raise", "collect"] = "raise",
    environ: dict[str, str] | None = None,
) -> SimpletirPluginManager:
    """A fresh plugin manager with every installed plugin loaded.

    ``block`` (plus ``$SIMPLETIR_BLOCK_PLUGINS``) names entry points to skip. ``plugins`` adds
    ``(name, object)`` pairs registered in-process (tests, embedding). A plugin that fails to
    import raises :class:`PluginError` (``on_load_error="raise"``, what runs use) or is recorded
    in ``pm.load_failures`` for the caller to warn about (``"collect"``, what ``simpletir
    plugins`` uses).
    """
    pm = SimpletirPluginManager()
    blocked = [*block, *blocked_from_env(environ)]
    pm.blocked_names = tuple(dict.fromkeys(blocked))
    for name in pm.blocked_names:
        pm.set_blocked(name)
    if load_entry_points:
        for ep in _entry_points():
            _load_entry_point(pm, ep, on_load_error)
    for name, plugin in plugins:
        if pm.is_blocked(name):
            continue
        _register(pm, plugin, name, None)
    return pm


def _load_entry_point(
    pm: SimpletirPluginManager, ep: importlib_metadata.EntryPoint, on_load_error: Literal["raise", "collect"]
) -> None:
    if pm.is_blocked(ep.name):
        return
    dist = ep.dist
    source = PluginSource(
        distribution=dist.metadata["Name"] if dist is not None else "?",
        version=dist.version if dist is not None else "?",
        entry_point=ep.value,
    )
    try:
        plugin = ep.load()
    except Exception as exc:  # any import-time failure of third-party code
        failure = LoadFailure(
            ep.name, f"{source.distribution} {source.version}", f"{type(exc).__name__}: {exc}"
        )
        if on_load_error == "raise":
            raise PluginError(
                f"{failure.message()}; fix or uninstall it, or skip it with --block {ep.name} "
                f"(or {BLOCK_ENV}={ep.name})"
            ) from exc
        pm.load_failures.append(failure)
        return
    _register(pm, plugin, ep.name, source)


def _register(pm: SimpletirPluginManager, plugin: Any, name: str, source: PluginSource | None) -> None:
    existing = pm.get_plugin(name)
    if existing is not None:
        other = pm.sources.get(name)
        other_text = f"{other.distribution} {other.version}" if other else "in-process code"
        this_text = f"{source.distribution} {source.version}" if source else "in-process code"
        raise PluginError(
            f"two plugins are named {name!r}: one from {other_text}, one from {this_text}; "
            "entry-point names must be unique in the 'simpletir' group"
        )
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        raise PluginError(
            f"plugin {name!r} ({source.distribution if source else 'in-process'}): {exc}"
        ) from exc
    except ValueError as exc:  # the same module object registered under two entry-point names
        raise PluginError(f"plugin {name!r}: {exc}") from exc
    if source is not None:
        pm.sources[name] = source


def unknown_blocked_names(pm: SimpletirPluginManager) -> list[str]:
    """Blocked names matching no installed entry point: usually a typo worth a warning."""
    # list_name_plugin() also lists every blocked name (with plugin None): skip those.
    known = {ep.name for ep in _entry_points()} | {name for name, plugin in pm.list_name_plugin() if plugin}
    return [name for name in pm.blocked_names if name not in known]


def print_warning(message: str) -> None:
    print(f"simpletir: warning: {message}", file=sys.stderr)
