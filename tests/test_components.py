"""Building components from the config: options errors as one line, resolved options, unchosen
options, contested names and plugin_priority, single-component blocks (issue 13, items 4-5)."""

from __future__ import annotations

import importlib.metadata as importlib_metadata
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import yaml
from _plugin_fakes import FAKE_OVERRIDES, STRICT_CHOICES, Built, FakeComponents, Rival, StrictComponents

from simpletir import cli
from simpletir.core import plugins as plugins_module
from simpletir.core.components import build_component, check_components, release
from simpletir.core.config_load import load_config, validate_config
from simpletir.core.errors import ConfigError, PluginError
from simpletir.core.plugins import BLOCK_ENV, PluginSource, make_plugin_manager
from simpletir.core.run import CONFIG_FILE, run_experiment


def pm_with(*extra: tuple[str, Any], **kwargs: Any):  # type: ignore[no-untyped-def]
    return make_plugin_manager(
        load_entry_points=False, plugins=[("fakes", FakeComponents()), *extra], **kwargs
    )


def strict_config(kind: str, *overrides: str) -> Any:
    """A training config choosing the strict component of ``kind`` (the fakes for the rest)."""
    _, choose = STRICT_CHOICES[kind]
    return load_config(None, [*FAKE_OVERRIDES, choose, *overrides], environ={})


# -- item 4: a plugin refusing its options is one line naming the option -------------------------


@pytest.mark.parametrize("kind", list(STRICT_CHOICES))
def test_options_class_refusal_names_the_option_for_every_kind(kind: str) -> None:
    name, _ = STRICT_CHOICES[kind]
    config = strict_config(kind, f"plugin_config.{name}.level=0")
    with pytest.raises(ConfigError) as info:
        validate_config(config, pm_with(("strict", StrictComponents())), check_data=False)
    message = str(info.value)
    assert message.startswith(f"plugin_config.{name}.level = 0: ")
    assert "level must be at least 1, got 0" in message and "\n" not in message


@pytest.mark.parametrize("kind", list(STRICT_CHOICES))
def test_factory_refusal_names_the_option_for_every_kind(kind: str) -> None:
    name, _ = STRICT_CHOICES[kind]
    pm = pm_with(("strict", StrictComponents()))
    with pytest.raises(ConfigError, match=rf"^plugin_config\.{name}\.mode = 'explode': .*not supported$"):
        validate_config(strict_config(kind, f"plugin_config.{name}.mode=explode"), pm, check_data=False)
    # a message naming no option names the component's section
    with pytest.raises(ConfigError, match=rf"^plugin_config\.{name}: {kind} '{name}': something is wrong$"):
        validate_config(strict_config(kind, f"plugin_config.{name}.mode=vague"), pm, check_data=False)


def test_a_message_naming_a_config_key_is_kept() -> None:
    from simpletir.core.components import refusal
    from simpletir.core.specs import FilterSpec

    spec = FilterSpec("f", lambda o, e: None)
    text = "algorithm.overlong_buffer_len=-1 must be >= 0"
    assert str(refusal(ConfigError(text), spec)) == text
    assert str(refusal(ValueError("plugin_config.f.x is bad"), spec)) == "plugin_config.f.x is bad"


def test_pm_build_reports_the_same_line() -> None:
    config = strict_config("reward", "plugin_config.strict_reward.mode=explode")
    with pytest.raises(ConfigError, match=r"^plugin_config\.strict_reward\.mode = 'explode'"):
        pm_with(("strict", StrictComponents())).build("reward", "strict_reward", config)


def test_config_show_reports_a_tool_factory_error_in_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _entry_points(monkeypatch, fakes="FAKES", strict="STRICT")
    code = cli.main(
        [
            "config",
            "show",
            "--check",
            "plugins",
            empty_config(tmp_path),
            *FAKE_OVERRIDES,
            "tools=[strict_tool]",
            "plugin_config.strict_tool.mode=explode",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    line = "plugin_config.strict_tool.mode = 'explode': tool 'strict_tool': mode 'explode' is not supported"
    assert err == f"simpletir: error: {line}\n"


def test_a_run_refusing_options_leaves_no_run_folder(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _entry_points(monkeypatch, fakes="FAKES", strict="STRICT")
    code = cli.main(
        [
            "run",
            empty_config(tmp_path / "config"),
            *FAKE_OVERRIDES,
            "val_only=True",
            "reward=strict_reward",
            "plugin_config.strict_reward.level=0",
            f"runs_dir={tmp_path}",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "plugin_config.strict_reward.level = 0" in err
    assert [p.name for p in tmp_path.iterdir()] == ["config"]


def test_check_builds_and_releases_the_chosen_components() -> None:
    closed: list[str] = []

    class Closing:
        def close(self) -> None:
            closed.append("sync")

    class AClosing:
        async def aclose(self) -> None:
            closed.append("async")

    release(Closing())
    release(AClosing())
    release(object())
    assert closed == ["sync", "async"]
    check = check_components(load_config(None, FAKE_OVERRIDES, environ={}), pm_with())
    assert sorted(e.spec.name for e in check.chosen) == [
        "echo",
        "exact",
        "fake_adv",
        "fake_loss",
        "keep_all",
        "tiny",
    ]


# -- item 4: resolved options, unchosen options ---------------------------------------------------


def test_validate_returns_the_chosen_options_resolved() -> None:
    config = load_config(None, [*FAKE_OVERRIDES, "plugin_config.echo.workers=4"], environ={})
    resolved = validate_config(config, pm_with(), check_data=False)
    assert resolved.plugin_config == {
        "echo": {"timeout_s": 5.0, "workers": 4},
        "exact": {"strip": True, "tags": []},
    }  # keep_all, tiny and the algorithms take no options: left out
    assert config.plugin_config == {"echo": {"workers": 4}}  # the input is not changed
    # the resolved config loads back to the same thing
    assert validate_config(resolved, pm_with(), check_data=False) == resolved


def test_a_runs_config_yaml_records_resolved_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("simpletir.core.evaluate")
    module.run_evaluation = lambda config, pm: {"seen": config.plugin_config}  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "simpletir.core.evaluate", module)
    config = load_config(
        None,
        [
            *FAKE_OVERRIDES,
            "val_only=True",
            f"runs_dir={tmp_path}",
            f"logs_dir={tmp_path}",
            "experiment_name=r",
        ],
    )
    result = run_experiment(config, pm_with())
    saved = yaml.safe_load((tmp_path / "r" / CONFIG_FILE).read_text())
    assert saved["plugin_config"]["exact"] == {"strip": True, "tags": []}
    assert saved["plugin_config"]["echo"] == {"timeout_s": 5.0, "workers": 2}
    assert result["seen"] == saved["plugin_config"]  # the stage gets what was recorded


def test_options_for_an_unchosen_component_warn_and_are_still_checked(
    capsys: pytest.CaptureFixture[str],
) -> None:
    pm = pm_with(("strict", StrictComponents()))
    config = load_config(None, [*FAKE_OVERRIDES, "plugin_config.strict_reward.level=2"], environ={})
    resolved = validate_config(config, pm, check_data=False)
    err = capsys.readouterr().err
    assert (
        "simpletir: warning: plugin_config.strict_reward: this config does not choose reward 'strict_reward' "
        "(choose it with reward: strict_reward); its options are checked but not used"
    ) in err
    assert resolved.plugin_config["strict_reward"] == {"level": 2}  # kept as given, not resolved
    typo = load_config(None, [*FAKE_OVERRIDES, "plugin_config.strict_reward.levle=2"], environ={})
    with pytest.raises(
        ConfigError, match=r"unknown option plugin_config\.strict_reward\.levle \(did you mean 'level'\?\)"
    ):
        validate_config(typo, pm, check_data=False)


def test_options_of_mentioned_but_inactive_components_do_not_warn(capsys: pytest.CaptureFixture[str]) -> None:
    config = load_config(
        None, [*FAKE_OVERRIDES, "tool_use=False", "plugin_config.echo.workers=3"], environ={}
    )
    resolved = validate_config(config, pm_with(), check_data=False)
    assert capsys.readouterr().err == ""
    assert resolved.plugin_config["echo"] == {"workers": 3}  # checked, kept as given


def test_options_under_a_benchmark_alias_are_refused() -> None:
    config = load_config(None, [*FAKE_OVERRIDES, "plugin_config.tiny/test.x=1"], environ={})
    with pytest.raises(
        ConfigError, match=r"'tiny/test' is an alias of benchmark 'tiny'; .*plugin_config\.tiny"
    ):
        validate_config(config, pm_with(), check_data=False)


def test_help_fields_lists_every_installed_components_options(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["config", "show", "--help-fields"])
    out = capsys.readouterr().out
    assert code == 0 and "rollout.n  (int, default 16)" in out
    assert "plugin_config.python.workers  (int, default 2; tool 'python' from simpletir)" in out
    assert (
        "plugin_config.math_verify.timeout_s  (float, default 3.0; reward 'math_verify' from simpletir)"
        in out
    )
    assert "plugin_config.group.min_std" in out and "plugin_config.arith.size" in out
    assert "plugin_config.void_turn  (no options; filter 'void_turn' from simpletir)" in out
    assert "plugin_config.grpo  (no options; advantage_estimator 'grpo' from simpletir)" in out


def test_config_show_prints_resolved_plugin_options(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(
        [
            "config",
            "show",
            "--check",
            "plugins",
            "eval_cpu",
            "tool_use=False",
            "plugin_config.math_verify.workers=1",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    options = yaml.safe_load(out)["plugin_config"]["math_verify"]
    assert options["workers"] == 1 and options["timeout_s"] == 3.0 and "cache_size" in options
    assert "python" not in yaml.safe_load(out)["plugin_config"]  # not chosen without tool_use


# -- item 5: contested names, plugin_priority ------------------------------------------------------


def rival_pm(**kwargs: Any):  # type: ignore[no-untyped-def]
    pm = pm_with(("rival", Rival()), **kwargs)
    pm.sources["fakes"] = PluginSource("fake-dist", "1.0")
    pm.sources["rival"] = PluginSource("rival_dist", "0.2")
    return pm


def test_a_collision_stops_only_a_config_that_chooses_it(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(PluginError, match=r"reward 'exact' is claimed by two plugins.*fake-dist.*rival_dist"):
        validate_config(load_config(None, FAKE_OVERRIDES, environ={}), rival_pm(), check_data=False)
    capsys.readouterr()
    validate_config(
        load_config(None, [*FAKE_OVERRIDES, "reward=own_reward"], environ={}), rival_pm(), check_data=False
    )
    err = capsys.readouterr().err
    assert (
        "warning: reward 'exact' is claimed by two plugins" in err and "(this config does not use it)" in err
    )


@pytest.mark.parametrize("provider", ["rival", "rival_dist", "Rival-Dist"])
def test_plugin_priority_picks_the_provider(provider: str) -> None:
    config = load_config(None, [*FAKE_OVERRIDES, f"plugin_priority.reward:exact={provider}"], environ={})
    validate_config(config, rival_pm(), check_data=False)
    built = build_component(rival_pm(), "reward", "exact", config)
    assert isinstance(built, Built) and built.name == "rival_exact"
    other = load_config(None, [*FAKE_OVERRIDES, "plugin_priority.reward:exact=fake-dist"], environ={})
    assert rival_pm().build("reward", "exact", other).name == "exact"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "plugin_priority.reward:exact=nobody",
            r"plugin_priority\.reward:exact='nobody': reward 'exact' is provided by",
        ),
        (
            "plugin_priority.rewrd:exact=rival",
            r"'rewrd' is not a kind of component \(did you mean 'reward'\?\)",
        ),
        (
            "plugin_priority.reward:exakt=rival",
            r"no installed reward is named 'exakt' \(did you mean 'exact'\?\)",
        ),
        ("plugin_priority.exact=rival", r"a key is kind:name"),
    ],
)
def test_bad_plugin_priority_is_named(override: str, message: str) -> None:
    config = load_config(None, [*FAKE_OVERRIDES, override], environ={})
    with pytest.raises(ConfigError, match=message):
        validate_config(config, rival_pm(), check_data=False)


def test_plugin_priority_in_yaml(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text("plugin_priority: {reward:exact: rival_dist}\n")
    config = load_config(path, FAKE_OVERRIDES, environ={})
    assert config.plugin_priority == {"reward:exact": "rival_dist"}
    validate_config(config, rival_pm(), check_data=False)


# -- item 5: blocking one component, unknown blocks, "unknown X" when blocked --------------------


def test_block_a_single_component_by_flag_or_environment() -> None:
    for pm in (pm_with(block=["benchmark:tiny"]), pm_with(environ={BLOCK_ENV: "benchmark:tiny"})):
        registry = pm.registry()
        assert registry.names("benchmark") == ["checked", "tiny_file"]
        assert registry.names("tool") == ["echo"]  # the rest of the plugin stays
        with pytest.raises(
            PluginError,
            match=r"benchmark 'tiny' is blocked \((--block |\$SIMPLETIR_BLOCK_PLUGINS=)benchmark:tiny\)",
        ):
            registry.benchmark("tiny")
        with pytest.raises(PluginError, match=r"benchmark 'tiny/test' is blocked"):  # its aliases go too
            registry.benchmark("tiny/test")


def test_blocking_one_provider_resolves_a_collision() -> None:
    config = load_config(None, FAKE_OVERRIDES, environ={})
    pm = make_plugin_manager(
        load_entry_points=False, plugins=[("fakes", FakeComponents()), ("rival", Rival())], block=["rival"]
    )
    validate_config(config, pm, check_data=False)


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ("fakse", r"--block fakse: no installed plugin has this name \(did you mean 'fakes'\?\)"),
        (
            "benchmark:tinny",
            r"--block benchmark:tinny: no installed benchmark is named 'tinny' \(did you mean 'tiny'\?\)",
        ),
        ("benchmrk:tiny", r"'benchmrk' is not a kind of component \(did you mean 'benchmark'\?\)"),
        ("echo", r"'echo' is a tool: block it alone with --block tool:echo"),
    ],
)
def test_a_block_naming_nothing_is_an_error(block: str, message: str) -> None:
    with pytest.raises(PluginError, match=message):
        validate_config(
            load_config(None, FAKE_OVERRIDES, environ={}), pm_with(block=[block]), check_data=False
        )


def test_unknown_name_says_which_plugins_are_blocked() -> None:
    pm = make_plugin_manager(
        load_entry_points=False, plugins=[("fakes", FakeComponents()), ("rival", Rival())], block=["fakes"]
    )
    with pytest.raises(
        PluginError, match=r"unknown tool 'echo'.*blocked plugins, which may provide it: fakes"
    ):
        pm.registry().tool("echo")


def test_cli_blocks_a_component_and_warns_about_collisions(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _entry_points(monkeypatch, fakes="FAKES", rival="RIVAL")
    show = ["config", "show", "--check", "plugins", empty_config(tmp_path), *FAKE_OVERRIDES]
    assert cli.main(["plugins"]) == 0
    assert "warning: reward 'exact' is claimed by two plugins" in capsys.readouterr().err
    code = cli.main([*show, "reward=own_reward", "--block", "benchmark:tiny"])
    assert code == 2 and "benchmark 'tiny' is blocked (--block benchmark:tiny)" in capsys.readouterr().err
    code = cli.main([*show, "plugin_priority.reward:exact=rival"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert yaml.safe_load(out)["plugin_priority"] == {"reward:exact": "rival"}
    code = cli.main([*show, "--block=nosuch"])
    assert code == 2 and "--block nosuch: no installed plugin has this name" in capsys.readouterr().err


def empty_config(folder: Path) -> str:
    """An empty config file: schema defaults only (the shipped ones choose built-in components)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "empty.yaml"
    path.write_text("")
    return str(path)


def _entry_points(monkeypatch: pytest.MonkeyPatch, **objects: str) -> None:
    """Make the 'installed' entry points ``name = _plugin_fakes:OBJECT`` and nothing else."""
    eps = [
        importlib_metadata.EntryPoint(name=name, value=f"_plugin_fakes:{attr}", group="simpletir")
        for name, attr in objects.items()
    ]
    monkeypatch.setattr(plugins_module, "_entry_points", lambda: eps)


def test_unknown_dataset_names_the_blocked_plugins(tmp_path: Path) -> None:
    from simpletir.core.errors import DataError

    pm = make_plugin_manager(
        load_entry_points=False, plugins=[("fakes", FakeComponents()), ("rival", Rival())], block=["rival"]
    )
    config = load_config(
        None, [*FAKE_OVERRIDES, "val_only=True", "valid_dataset=aime24", f"data_dir={tmp_path}"]
    )
    with pytest.raises(
        DataError, match=r"unknown dataset 'aime24'.*blocked plugins, which may provide it: rival"
    ):
        validate_config(config, pm)
