"""The plugin manager factory and the registry of components plugins provide.

:func:`make_plugin_manager` builds a fresh :class:`SimpletirPluginManager` (never a module
global, so every test gets its own): it adds the hookspecs, loads every entry point of the
group ``simpletir`` (the built-ins come through that very group, as a third party's do), and
skips blocked names (``--block NAME`` / ``$SIMPLETIR_BLOCK_PLUGINS=a,b``: a whole plugin by its
entry-point name, or one component as ``kind:name``).

``pm.registry()`` collects the spec records of the ``register_*`` hooks into a
:class:`Registry`: lookups by name with closest-name suggestions, benchmark alias resolution,
and, when two plugins claim one name, a :class:`PluginError` naming both distributions for a
config that chooses it (unless its ``plugin_priority`` picks one); a contested name nobody
chooses is only a warning. Building a chosen component from a config lives in
:mod:`simpletir.core.components`.
"""

from __future__ import annotations

import importlib.metadata as importlib_metadata
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, cast

import pluggy

from simpletir import hookspecs
from simpletir.core.components import build_component
from simpletir.core.errors import PluginError, closest
from simpletir.core.errors import print_warning as print_warning  # re-exported: cli and plugins use it
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

    def provided_by(self, provider: str) -> bool:
        """Whether ``provider`` (an entry-point name or a distribution name) is where this came from."""
        return self.plugin == provider or (
            self.source is not None and _normal(self.source.distribution) == _normal(provider)
        )


@dataclass
class Registry:
    """Components by kind and name, plus benchmark aliases. Built by ``pm.registry()``.

    A name (or alias) two plugins claim is *contested*: listing it works, choosing it is an
    error naming both providers unless the config's ``plugin_priority`` picks one. A contested
    name no config chooses costs nothing but a warning.
    """

    entries: dict[ComponentKind, dict[str, Registered]] = field(
        default_factory=lambda: {k: {} for k in KINDS}
    )
    aliases: dict[str, str] = field(default_factory=dict)  # benchmark alias -> benchmark name
    # Every claimant of every name and alias, in collection order (two or more: contested).
    claims: dict[ComponentKind, dict[str, list[Registered]]] = field(
        default_factory=lambda: {k: {} for k in KINDS}
    )
    # Component names removed by a component block (--block benchmark:aime24) -> that block.
    blocked: dict[tuple[ComponentKind, str], str] = field(default_factory=dict)
    blocked_plugins: tuple[str, ...] = ()  # whole plugins skipped (--block NAME)
    unknown_blocks: list[str] = field(default_factory=list)  # component blocks matching nothing
    _added: list[Registered] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        """One message per contested name (what ``simpletir plugins`` warns about)."""
        return [self.collision_message(kind, claim) for kind, claim in self.contested()]

    def names(self, kind: ComponentKind) -> list[str]:
        return sorted(self.entries[kind])

    def all(self) -> list[Registered]:
        """Every registered component, each claimant of a contested name included."""
        order = {kind: i for i, kind in enumerate(KINDS)}
        return sorted(self._added, key=lambda e: (order[e.spec.kind], e.spec.name, e.plugin))

    def contested(self) -> list[tuple[ComponentKind, str]]:
        return [
            (kind, claim)
            for kind in KINDS
            for claim, held in sorted(self.claims[kind].items())
            if len(held) > 1
        ]

    def entry(self, kind: ComponentKind, name: str, priority: Mapping[str, str] | None = None) -> Registered:
        """The registered component ``name`` of ``kind`` (benchmarks also by alias).

        ``priority`` (the config's ``plugin_priority``: ``{"kind:name": plugin or distribution}``)
        picks the provider of a contested name.
        """
        held = self.claims[kind].get(name, [])
        if len(held) == 1:
            return held[0]
        if not held:
            raise PluginError(self._unknown_message(kind, name))
        key = f"{kind}:{name}"
        wanted = (priority or {}).get(key)
        if wanted is not None:
            preferred = [e for e in held if e.provided_by(wanted)]
            if len(preferred) == 1:
                return preferred[0]
            raise PluginError(
                f"plugin_priority.{key}={wanted!r} names none of the plugins claiming it "
                f"({'; '.join(_claimant(e, name) for e in held)})"
            )
        raise PluginError(self.collision_message(kind, name))

    def get(self, kind: ComponentKind, name: str, priority: Mapping[str, str] | None = None) -> ComponentSpec:
        return self.entry(kind, name, priority).spec

    def tool(self, name: str) -> ToolSpec:
        return cast(ToolSpec, self.get("tool", name))

    def reward(self, name: str) -> RewardSpec:
        return cast(RewardSpec, self.get("reward", name))

    def filter(self, name: str) -> FilterSpec:
        return cast(FilterSpec, self.get("filter", name))

    def benchmark(self, name: str) -> BenchmarkSpec:
        """A benchmark by name or alias (``aime24`` or ``deepscaler/aime``)."""
        return cast(BenchmarkSpec, self.get("benchmark", name))

    def find_benchmark(self, name: str, priority: Mapping[str, str] | None = None) -> BenchmarkSpec | None:
        """Like :meth:`benchmark` but None when no plugin provides ``name`` (e.g. a raw parquet name).

        A blocked benchmark is an error saying so, not a raw name."""
        if not self.claims["benchmark"].get(name) and ("benchmark", name) not in self.blocked:
            return None
        return cast(BenchmarkSpec, self.get("benchmark", name, priority))

    def collision_message(self, kind: ComponentKind, claim: str) -> str:
        held = self.claims[kind][claim]
        providers = [_claimant(e, claim) for e in held]
        who = (
            f"two plugins: {providers[0]} and {providers[1]}"
            if len(providers) == 2
            else f"{len(providers)} plugins: {', '.join(providers[:-1])} and {providers[-1]}"
        )
        example = held[-1].plugin
        return (
            f"{kind} {claim!r} is claimed by {who}; a config choosing it must pick one with "
            f"plugin_priority: {{'{kind}:{claim}': {example}}} (or the override "
            f"plugin_priority.{kind}:{claim}={example}), or block one (--block PLUGIN)"
        )

    def _unknown_message(self, kind: ComponentKind, name: str) -> str:
        how = self.blocked.get((kind, name))
        if how is not None:
            return f"{kind} {name!r} is blocked ({how}); remove that block to use it"
        known = sorted(self.claims[kind])
        listing = ", ".join(self.names(kind)) or "none installed"
        message = f"unknown {kind} {name!r}{closest(name, known)}; available {_plural(kind)}: {listing}"
        if self.blocked_plugins:
            message += (
                f" (blocked plugins, which may provide it: {', '.join(self.blocked_plugins)}; "
                "see --block and $SIMPLETIR_BLOCK_PLUGINS)"
            )
        return message

    # -- building ---------------------------------------------------------------------------
    def _add(self, registered: Registered) -> None:
        spec = registered.spec
        kind = spec.kind
        self._added.append(registered)
        for claim in [spec.name, *(spec.aliases if isinstance(spec, BenchmarkSpec) else ())]:
            self.claims[kind].setdefault(claim, []).append(registered)
        if spec.name not in self.entries[kind]:
            self.entries[kind][spec.name] = registered
        if isinstance(spec, BenchmarkSpec):
            for alias in spec.aliases:
                self.aliases.setdefault(alias, spec.name)


def _plural(kind: str) -> str:
    return f"{kind}es" if kind.endswith("s") else f"{kind}s"


def _claimant(entry: Registered, claim: str) -> str:
    return f"{entry.provider()}{_role(entry.spec, claim)}"


def _role(spec: ComponentSpec, claim: str) -> str:
    return "" if claim == spec.name else f" (as an alias of {spec.name!r})"


def _normal(name: str) -> str:
    """A distribution name in its canonical form (PEP 503): ``My_Dist`` == ``my-dist``."""
    return re.sub(r"[-_.]+", "-", name).lower()


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
        # Every block as given (whole plugins and kind:name components), and where it came from.
        self.blocked_names: tuple[str, ...] = ()
        self.block_sources: dict[str, str] = {}
        # Names of every plugin offered (installed entry points and in-process ones), blocked or not.
        self.offered_names: set[str] = set()
        self._registry: Registry | None = None

    # Any change to the set of plugins invalidates the collected registry.
    def register(self, plugin: Any, name: str | None = None) -> str | None:
        self._registry = None
        return super().register(plugin, name)

    def unregister(self, plugin: Any = None, name: str | None = None) -> Any:
        self._registry = None
        return super().unregister(plugin, name)

    @property
    def blocked_plugins(self) -> tuple[str, ...]:
        """Blocked whole plugins (entry-point names)."""
        return tuple(name for name in self.blocked_names if ":" not in name)

    @property
    def blocked_components(self) -> tuple[str, ...]:
        """Blocked single components, as ``kind:name``."""
        return tuple(name for name in self.blocked_names if ":" in name)

    def registry(self) -> Registry:
        """Every plugin's specs, collected once (until a plugin is registered or unregistered).

        Never fails for a contested name (only choosing one does) nor for an unknown block
        (see :func:`block_problems`); a ``register_*`` hook that raises or yields the wrong
        record is a :class:`PluginError` naming the plugin.
        """
        if self._registry is None:
            self._registry = self._collect()
        return self._registry

    def _collect(self) -> Registry:
        registry = Registry(blocked_plugins=self.blocked_plugins)
        wanted: dict[tuple[str, str], str] = {}  # (kind, name) -> the block as given
        for token in self.blocked_components:
            kind, _, name = token.partition(":")
            wanted[(kind, name)] = token
        matched: set[str] = set()
        for kind in KINDS:
            hook_name = _HOOK_OF_KIND[kind]
            impls = sorted(getattr(self.hook, hook_name).get_hookimpls(), key=lambda impl: impl.plugin_name)
            for impl in impls:
                for spec in self._specs_from(impl.plugin_name, hook_name, impl.function, kind):
                    claims = [spec.name, *(spec.aliases if isinstance(spec, BenchmarkSpec) else ())]
                    hits = [wanted[(kind, c)] for c in claims if (kind, c) in wanted]
                    if hits:  # a component block removes the component under all its names
                        matched.update(hits)
                        for claim in claims:
                            registry.blocked[(kind, claim)] = self._describe_block(hits[0])
                        continue
                    registry._add(Registered(spec, impl.plugin_name, self.sources.get(impl.plugin_name)))
        for (kind, name), token in wanted.items():
            if token in matched:
                continue
            if kind not in KINDS:
                registry.unknown_blocks.append(
                    f"{self._describe_block(token)}: {kind!r} is not a kind of component"
                    f"{closest(kind, KINDS)}; kinds: {', '.join(KINDS)}"
                )
                continue
            known = sorted(registry.claims[kind]) if kind in registry.claims else []
            registry.unknown_blocks.append(
                f"{self._describe_block(token)}: no installed {kind} is named {name!r}"
                f"{closest(name, known)}; {_plural(kind)}: {', '.join(registry.names(kind)) or 'none'}"
            )
        return registry

    def block_problems(self) -> list[str]:
        """See :func:`block_problems`."""
        return block_problems(self)

    def _describe_block(self, token: str) -> str:
        source = self.block_sources.get(token, "--block")
        return f"--block {token}" if source == "--block" else f"{source}={token}"

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
        """Build the chosen component from ``config`` (:func:`.components.build_component`)."""
        return build_component(self, kind, name, config)


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

    ``block`` (plus ``$SIMPLETIR_BLOCK_PLUGINS``) names what to skip: an entry-point name skips
    that whole plugin (never imported), ``kind:name`` (``benchmark:aime24``) skips one component
    of every plugin. Names matching nothing are reported by :func:`block_problems`. ``plugins``
    adds ``(name, object)`` pairs registered in-process (tests, embedding). A plugin that fails
    to import raises :class:`PluginError` (``on_load_error="raise"``, what runs use) or is
    recorded in ``pm.load_failures`` for the caller to warn about (``"collect"``, what
    ``simpletir plugins`` uses).
    """
    pm = SimpletirPluginManager()
    sources = {name: "--block" for name in block} | {
        name: f"${BLOCK_ENV}" for name in blocked_from_env(environ) if name not in block
    }
    pm.block_sources = {name.strip(): source for name, source in sources.items() if name.strip()}
    pm.blocked_names = tuple(pm.block_sources)
    for name in pm.blocked_plugins:
        pm.set_blocked(name)
    if load_entry_points:
        for ep in _entry_points():
            pm.offered_names.add(ep.name)
            _load_entry_point(pm, ep, on_load_error)
    for name, plugin in plugins:
        pm.offered_names.add(name)
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
    """Blocked plugin names matching no installed entry point or in-process plugin."""
    known = pm.offered_names | {ep.name for ep in _entry_points()}
    return [name for name in pm.blocked_plugins if name not in known]


def block_problems(pm: SimpletirPluginManager) -> list[str]:
    """One message per block that matches nothing, with the closest name: runs and ``config
    show`` refuse them (a typo would silently block nothing); ``simpletir plugins`` warns."""
    problems = []
    known = sorted(pm.offered_names | {ep.name for ep in _entry_points()})
    registry = pm.registry()
    for name in unknown_blocked_names(pm):
        message = (
            f"{pm._describe_block(name)}: no installed plugin has this name{closest(name, known)}; "
            f"plugins: {', '.join(known) or 'none'}"
        )
        kinds = [kind for kind in KINDS if name in registry.claims[kind]]
        if kinds:
            message += f" ({name!r} is a {kinds[0]}: block it alone with --block {kinds[0]}:{name})"
        problems.append(message)
    return problems + registry.unknown_blocks
