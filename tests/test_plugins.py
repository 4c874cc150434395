"""The plugin manager: discovery, registry, collisions, blocking, load failures, lifecycle hooks."""

from __future__ import annotations

import importlib.metadata as importlib_metadata
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from _plugin_fakes import FAKE_OVERRIDES, Built, EchoToolOptions, FakeComponents

from simpletir import hookimpl
from simpletir.core import plugins as plugins_module
from simpletir.core.config_load import load_config
from simpletir.core.errors import ConfigError, PluginError
from simpletir.core.plugins import (
    BLOCK_ENV,
    KINDS,
    PluginSource,
    make_plugin_manager,
)
from simpletir.core.run import report_step, run_experiment
from simpletir.core.specs import BenchmarkSpec, RewardSpec
from simpletir.core.types import StepReport


def fake_pm(*extra: tuple[str, Any], **kwargs: Any):  # type: ignore[no-untyped-def]
    return make_plugin_manager(
        load_entry_points=False, plugins=[("fakes", FakeComponents()), *extra], **kwargs
    )


# -- discovery and registry -------------------------------------------------------------------


def test_each_call_builds_a_fresh_manager() -> None:
    a, b = fake_pm(), make_plugin_manager(load_entry_points=False)
    assert a is not b
    assert a.registry().names("tool") == ["echo"]
    assert b.registry().names("tool") == []


def test_register_hooks_collect_every_kind() -> None:
    registry = fake_pm().registry()
    assert registry.names("tool") == ["echo"]
    assert registry.names("reward") == ["exact"]
    assert registry.names("filter") == ["keep_all"]
    assert registry.names("benchmark") == ["checked", "tiny", "tiny_file"]
    assert registry.tool("echo").config_cls is EchoToolOptions
    assert registry.entry("reward", "exact").plugin == "fakes"


def test_lookup_suggests_the_closest_name() -> None:
    registry = fake_pm().registry()
    with pytest.raises(
        PluginError, match=r"unknown tool 'ecko' \(did you mean 'echo'\?\); available tools: echo"
    ):
        registry.tool("ecko")
    with pytest.raises(PluginError, match=r"unknown filter 'keepall'.*'keep_all'"):
        registry.filter("keepall")


def test_benchmark_aliases_resolve() -> None:
    registry = fake_pm().registry()
    assert registry.benchmark("tiny/test").name == "tiny"
    assert registry.find_benchmark("tiny/test") is registry.benchmark("tiny")
    assert registry.find_benchmark("deepscaler/aime") is None


class _Clash:
    @hookimpl
    def register_rewards(self) -> list[RewardSpec]:
        return [RewardSpec("exact", lambda o, e: None)]


class _AliasClash:
    @hookimpl
    def register_benchmarks(self) -> list[BenchmarkSpec]:
        return [BenchmarkSpec("other", lambda o, e: None, aliases=("tiny",))]


def test_two_plugins_claiming_one_name_names_both_distributions() -> None:
    pm = fake_pm(("clash", _Clash()))
    pm.sources["fakes"] = PluginSource("fake-dist", "1.0")
    pm.sources["clash"] = PluginSource("clash-dist", "2.3")
    registry = pm.registry()  # collecting never fails: only choosing the contested name does
    with pytest.raises(PluginError) as info:
        registry.reward("exact")
    message = str(info.value)
    assert "reward 'exact' is claimed by two plugins" in message
    assert "fake-dist 1.0" in message and "clash-dist 2.3" in message
    assert "plugin_priority" in message and "--block" in message


def test_alias_may_not_shadow_another_benchmark() -> None:
    registry = fake_pm(("alias_clash", _AliasClash())).registry()
    with pytest.raises(
        PluginError, match=r"benchmark 'tiny' is claimed by two plugins.*as an alias of 'other'"
    ):
        registry.benchmark("tiny")
    assert registry.benchmark("other").name == "other"  # its own name is not contested
    assert registry.benchmark("tiny/test").name == "tiny"  # nor is tiny's other alias


def test_registry_records_collisions_as_problems() -> None:
    registry = fake_pm(("clash", _Clash())).registry()
    assert registry.names("reward") == ["exact"]
    assert len(registry.problems) == 1 and "exact" in registry.problems[0]
    assert [(e.plugin, e.spec.name) for e in registry.all() if e.spec.kind == "reward"] == [
        ("clash", "exact"),
        ("fakes", "exact"),
    ]


def test_wrong_record_type_is_a_plugin_error() -> None:
    class Bad:
        @hookimpl
        def register_tools(self) -> list[Any]:
            return [RewardSpec("oops", lambda o, e: None)]

    with pytest.raises(
        PluginError, match="plugin 'bad': register_tools\\(\\) must yield ToolSpec records, got RewardSpec"
    ):
        make_plugin_manager(load_entry_points=False, plugins=[("bad", Bad())]).registry()


def test_register_hook_that_raises_is_named() -> None:
    class Crashy:
        @hookimpl
        def register_filters(self) -> list[Any]:
            raise RuntimeError("boom")

    with pytest.raises(
        PluginError, match="plugin 'crashy': register_filters\\(\\) raised RuntimeError: boom"
    ):
        make_plugin_manager(load_entry_points=False, plugins=[("crashy", Crashy())]).registry()


def test_registry_is_rebuilt_after_register() -> None:
    pm = make_plugin_manager(load_entry_points=False)
    assert pm.registry().names("tool") == []
    pm.register(FakeComponents(), name="late")
    assert pm.registry().names("tool") == ["echo"]


def test_build_passes_typed_options_and_experiment() -> None:
    pm = fake_pm()
    config = load_config(None, [*FAKE_OVERRIDES, "plugin_config.echo.timeout_s=3"])
    built = pm.build("tool", "echo", config)
    assert isinstance(built, Built)
    assert built.options == EchoToolOptions(timeout_s=3.0, workers=2)
    assert built.experiment is config


def test_plugin_infos_list_hooks() -> None:
    info = {i.name: i for i in fake_pm().plugin_infos()}["fakes"]
    assert set(info.hooks) == {
        "register_tools",
        "register_rewards",
        "register_filters",
        "register_benchmarks",
        "register_advantage_estimators",
        "register_policy_losses",
    }
    assert info.distribution == "in-process" and info.version == ""


# -- entry points: built-ins, blocking, load failures ----------------------------------------


def test_builtins_come_through_the_entry_point_group() -> None:
    names = {ep.name: ep for ep in importlib_metadata.entry_points(group="simpletir")}
    for name in ("python_tool", "math_verify", "filters", "benchmarks"):
        assert name in names and names[name].dist is not None
        assert names[name].dist.metadata["Name"] == "simpletir"


def test_builtins_provide_all_four_kinds() -> None:
    pm = make_plugin_manager()
    registry = pm.registry()
    for kind in KINDS:
        assert registry.names(kind), f"no built-in {kind} registered"
        assert all(
            e.distribution == "simpletir"
            for e in registry.entries[kind].values()
            if e.distribution != "simpletir-example-plugin"
        )
    assert {"python_tool", "math_verify", "filters", "benchmarks"} <= {i.name for i in pm.plugin_infos()}


def test_block_by_argument_and_environment() -> None:
    pm = make_plugin_manager(block=["filters"], environ={BLOCK_ENV: "math_verify, benchmarks"})
    assert pm.blocked_names == ("filters", "math_verify", "benchmarks")
    registry = pm.registry()
    assert (
        registry.names("filter") == []
        and registry.names("reward") == []
        and registry.names("benchmark") == []
    )
    assert pm.is_blocked("filters")


def test_block_applies_to_in_process_plugins() -> None:
    assert fake_pm(block=["fakes"]).registry().names("tool") == []


def _broken_entry_point() -> importlib_metadata.EntryPoint:
    return importlib_metadata.EntryPoint(
        name="broken", value="simpletir_no_such_module_xyz", group="simpletir"
    )


def test_plugin_failing_to_import_stops_a_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plugins_module, "_entry_points", lambda: [_broken_entry_point()])
    with pytest.raises(
        PluginError, match=r"plugin 'broken' .*failed to load: ModuleNotFoundError.*--block broken"
    ):
        make_plugin_manager()


def test_plugin_failing_to_import_is_collected_when_listing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plugins_module, "_entry_points", lambda: [_broken_entry_point()])
    pm = make_plugin_manager(on_load_error="collect")
    assert [f.name for f in pm.load_failures] == ["broken"]
    assert "simpletir_no_such_module_xyz" in pm.load_failures[0].error
    assert make_plugin_manager(block=["broken"]).load_failures == []


def test_two_entry_points_with_one_name(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("simpletir_dup_plugin_mod")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    ep = importlib_metadata.EntryPoint(name="dup", value=module.__name__, group="simpletir")
    monkeypatch.setattr(plugins_module, "_entry_points", lambda: [ep, ep])
    with pytest.raises(PluginError, match="two plugins are named 'dup'"):
        make_plugin_manager()


# -- lifecycle hooks --------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    @hookimpl
    def configure(self, config: Any) -> None:
        self.calls.append(("configure", config))

    @hookimpl
    def on_step_end(self, report: StepReport) -> None:
        self.calls.append(("on_step_end", report))

    @hookimpl
    def on_validation_end(self, report: StepReport) -> None:
        self.calls.append(("on_validation_end", report))

    @hookimpl
    def on_run_end(self, run_dir: str, metrics: dict[str, float]) -> None:
        self.calls.append(("on_run_end", (run_dir, dict(metrics))))


def test_configure_is_historic() -> None:
    pm = fake_pm()
    config = load_config(None, FAKE_OVERRIDES)
    pm.hook.configure.call_historic(kwargs={"config": config})
    late = Recorder()
    pm.register(late, name="late")  # registered after the call, still configured
    assert late.calls == [("configure", config)]


def test_on_step_end_and_on_validation_end_via_report_step() -> None:
    recorder = Recorder()
    pm = fake_pm(("recorder", recorder))
    train = StepReport(step=3, epoch=0, metrics={"reward/mean": 0.5})
    val = StepReport(step=3, epoch=0, metrics={"val/tiny/pass@1": 1.0}, phase="val")
    report_step(pm, train)
    report_step(pm, val)
    assert recorder.calls == [("on_step_end", train), ("on_validation_end", val)]


def _fake_evaluation(monkeypatch: pytest.MonkeyPatch, result: dict[str, Any]) -> list[Any]:
    seen: list[Any] = []
    module = types.ModuleType("simpletir.core.evaluate")

    def run_evaluation(config: Any, pm: Any) -> dict[str, Any]:
        bench = pm.build("benchmark", config.valid_datasets[0], config)
        seen.append((config, len(bench.load(None))))
        return result

    module.run_evaluation = run_evaluation  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "simpletir.core.evaluate", module)
    return seen


def test_run_calls_configure_validation_and_run_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _fake_evaluation(monkeypatch, {"tiny": {"pass@1": 0.5, "n": 6}, "note": "text is skipped"})
    recorder = Recorder()
    pm = fake_pm(("recorder", recorder))
    config = load_config(
        None,
        [
            *FAKE_OVERRIDES,
            "val_only=True",
            f"runs_dir={tmp_path}",
            f"logs_dir={tmp_path}",
            "experiment_name=t",
        ],
    )
    result = run_experiment(config, pm)
    assert [name for name, _ in recorder.calls] == ["configure", "on_validation_end", "on_run_end"]
    assert recorder.calls[0][1].run_dir == str(tmp_path / "t")
    assert recorder.calls[1][1].metrics == {"tiny/pass@1": 0.5, "tiny/n": 6.0}
    assert recorder.calls[2][1] == (str(tmp_path / "t"), {"tiny/pass@1": 0.5, "tiny/n": 6.0})
    assert seen[0][1] == 6 and result["run_dir"] == str(tmp_path / "t")


def test_configure_may_refuse_a_config_before_any_stage_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _fake_evaluation(monkeypatch, {})

    class Refuser:
        @hookimpl
        def configure(self, config: Any) -> None:
            if config.max_turns > 3:
                raise ConfigError(f"refuser: max_turns {config.max_turns} is above 3")

    pm = fake_pm(("refuser", Refuser()))
    config = load_config(
        None,
        [*FAKE_OVERRIDES, "val_only=True", f"runs_dir={tmp_path}", f"logs_dir={tmp_path}", "max_turns=4"],
    )
    with pytest.raises(ConfigError, match="refuser: max_turns 4 is above 3"):
        run_experiment(config, pm)
    assert seen == []


def test_the_ten_line_plugin_in_the_docs_works() -> None:
    docs = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text(encoding="utf-8")
    source = docs.split("```python\n", 1)[1].split("```", 1)[0]
    module = types.ModuleType("docs_example_plugin")
    exec(compile(source, "docs/plugins.md", "exec"), module.__dict__)
    pm = make_plugin_manager(load_entry_points=False, plugins=[("two_plus_two", module)])
    config = load_config(None, ["valid_dataset=two_plus_two", "val_only=True"])
    problems = pm.build("benchmark", "two_plus_two", config).load(None)
    assert [(p.question, p.ground_truth) for p in problems] == [("What is 2 + 2?", "4")]
