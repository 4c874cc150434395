"""Loading, overriding and checking the experiment config; every bad input gets a named error."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from _plugin_fakes import FAKE_OVERRIDES, EchoToolOptions, ExactOptions, FakeComponents

from simpletir.core.config import ExperimentConfig
from simpletir.core.config_docs import iter_fields, render_into
from simpletir.core.config_load import (
    load_config,
    parse_overrides,
    plugin_options,
    resolve_config_path,
    schema_keys,
    to_yaml,
    validate_config,
)
from simpletir.core.errors import ConfigError, DataError, PluginError
from simpletir.core.plugins import make_plugin_manager

REPO = Path(__file__).resolve().parents[1]
SHIPPED = ["quickstart_cpu", "eval_cpu", "simpletir_trainer", "single_turn_math", "eval"]


def write(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def fake_pm():  # type: ignore[no-untyped-def]
    return make_plugin_manager(load_entry_points=False, plugins=[("fakes", FakeComponents())])


# -- loading ----------------------------------------------------------------------------------


def test_defaults_match_the_seed_workflow() -> None:
    config = load_config(None, environ={})
    assert isinstance(config, ExperimentConfig)
    assert (config.max_turns, config.oversample, config.max_prompt_length, config.max_response_length) == (
        5,
        3,
        16000,
        8000,
    )
    assert (config.grad_clip, config.start_clip_step, config.resume) == (1.0, 20, False)


def test_yaml_file_and_lists(tmp_path: Path) -> None:
    path = write(tmp_path, "valid_dataset: [aime24, aime25]\nfilters: void_turn, group\nrollout:\n  n: 4\n")
    config = load_config(path, environ={})
    assert config.valid_dataset == "aime24 aime25" and config.valid_datasets == ["aime24", "aime25"]
    assert config.filters == ["void_turn", "group"]
    assert config.rollout.n == 4


def test_unknown_key_names_key_file_and_closest(tmp_path: Path) -> None:
    path = write(tmp_path, "max_turn: 3\n")
    with pytest.raises(
        ConfigError, match=rf"{re.escape(str(path))}: unknown key 'max_turn' \(did you mean 'max_turns'\?\)"
    ):
        load_config(path, environ={})
    nested = write(tmp_path, "rollout:\n  temprature: 0.5\n", "nested.yaml")
    with pytest.raises(
        ConfigError,
        match=r"nested\.yaml: unknown key 'rollout\.temprature' \(did you mean 'rollout\.temperature'",
    ):
        load_config(nested, environ={})


def test_wrong_type_names_key_and_value(tmp_path: Path) -> None:
    path = write(tmp_path, "max_turns: ten\n")
    with pytest.raises(ConfigError, match=r"exp\.yaml: key 'max_turns': Value 'ten'"):
        load_config(path, environ={})
    with pytest.raises(ConfigError, match=r"key 'rollout\.engine': Invalid value 'sglang'"):
        load_config(None, ["rollout.engine=sglang"], environ={})
    with pytest.raises(ConfigError, match="'rollout' must be a mapping"):
        load_config(write(tmp_path, "rollout: 3\n", "r.yaml"), environ={})


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml", environ={})
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "a: [\n"), environ={})
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- 1\n", "list.yaml"), environ={})


def test_both_override_styles() -> None:
    assert parse_overrides(["a.b=1", "--c", "2", "--d=x", "--e-f", "y"]) == [
        ("a.b", "1"),
        ("c", "2"),
        ("d", "x"),
        ("e_f", "y"),
    ]
    config = load_config(
        None,
        [
            "--val_only",
            "True",
            "--max_turns",
            "10",
            "rollout.n=4",
            "--n_val=32",
            "experiment_name=1e5",
            "plugin_config.python.timeout_s=3",
            "plugin_config.python.workers=2",
            "filters=[void_turn]",
        ],
        environ={},
    )
    assert config.val_only is True and config.max_turns == 10 and config.rollout.n == 4 and config.n_val == 32
    assert config.experiment_name == "1e5"  # names stay the text typed
    assert config.plugin_config == {"python": {"timeout_s": 3, "workers": 2}}  # deep-merged, both kept
    assert config.filters == ["void_turn"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["--val_only"], "'--val_only' has no value"),
        (["max_turns"], "not key=value"),
        (["max_turn=3"], r"override max_turn=3: unknown key 'max_turn' \(did you mean 'max_turns'"),
        (["temperature=0.5"], r"did you mean 'rollout\.temperature'"),
        (["max_turns=0"], "max_turns must be at least 1, got 0"),
        (["rollout.gpu_memory_utilization=1.5"], r"gpu_memory_utilization must be in \(0, 1\]"),
        (["val_sample_size=0"], "val_sample_size must be -1"),
        (["rollout.prompt_template=no placeholder"], "must contain '{question}'"),
        (["val_only=True", "valid_dataset="], "valid_dataset is empty"),
    ],
)
def test_bad_overrides(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides, environ={})


def test_later_override_wins_and_beats_file(tmp_path: Path) -> None:
    path = write(tmp_path, "max_turns: 3\n")
    assert load_config(path, ["max_turns=4", "--max_turns", "6"], environ={}).max_turns == 6


def test_resume_from_environment(tmp_path: Path) -> None:
    assert load_config(None, environ={"RESUME": "True"}).resume is True
    assert load_config(None, environ={"RESUME": "false"}).resume is False
    assert load_config(None, ["resume=False"], environ={"RESUME": "True"}).resume is False  # CLI wins
    with pytest.raises(ConfigError, match="RESUME='maybe'"):
        load_config(None, environ={"RESUME": "maybe"})


def test_resolved_yaml_round_trips(tmp_path: Path) -> None:
    config = load_config(
        None, ["rollout.n=3", "valid_dataset=aime24 aime25", "plugin_config.x.y=1"], environ={}
    )
    again = load_config(write(tmp_path, to_yaml(config), "resolved.yaml"), environ={})
    assert again == config


# -- the seed's three commands, translated -----------------------------------------------------

SEED_COMMANDS = {
    "eval": (
        "simpletir_trainer",
        "--val_only True --model_name SimpleTIR-Qwen2.5-7B --valid_dataset deepscaler/aime --max_turns 10 "
        "--n_val 32 --val_sample_size 500 --output_acc_to_file True",
        {
            "val_only": True,
            "model_name": "SimpleTIR-Qwen2.5-7B",
            "valid_dataset": "deepscaler/aime",
            "max_turns": 10,
            "n_val": 32,
            "val_sample_size": 500,
            "output_acc_to_file": True,
        },
    ),
    "single_turn": (
        "single_turn_math",
        "--model_name Qwen2.5-7B --train_dataset simplelr_math_35/train|deepscaler/train --tool_use False "
        "--mask_void_turns False --train_batch_size 512 --total_epochs 20",
        {
            "model_name": "Qwen2.5-7B",
            "train_dataset": "simplelr_math_35/train deepscaler/train",
            "tool_use": False,
            "mask_void_turns": False,
            "train_batch_size": 512,
            "total_epochs": 20,
        },
    ),
    "multi_turn": (
        "simpletir_trainer",
        "--model_name Qwen2.5-7B --max_turns 5 --train_batch_size 512 "
        "--train_dataset simplelr_math_35/train|deepscaler/train "
        "--total_epochs 100 --save_freq 20 --test_freq 10",
        {
            "model_name": "Qwen2.5-7B",
            "max_turns": 5,
            "train_batch_size": 512,
            "train_dataset": "simplelr_math_35/train deepscaler/train",
            "total_epochs": 100,
            "save_freq": 20,
            "test_freq": 10,
        },
    ),
}


def seed_argv(args: str) -> list[str]:
    # '|' stands for the space inside the seed's quoted "a b" argument
    return [part.replace("|", " ") for part in args.split()]


@pytest.mark.parametrize("case", sorted(SEED_COMMANDS))
def test_seed_commands_carry_every_flag(case: str) -> None:
    name, args, expected = SEED_COMMANDS[case]
    config = load_config(resolve_config_path(name, environ={}), seed_argv(args), environ={})
    for key, value in expected.items():
        assert getattr(config, key) == value, key


def test_seed_resume_command() -> None:
    config = load_config(
        resolve_config_path("simpletir_trainer", environ={}),
        ["--experiment_name", "x"],
        environ={"RESUME": "True"},
    )
    assert config.resume is True


# -- shipped configs and name resolution -------------------------------------------------------


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_load(name: str) -> None:
    path = resolve_config_path(name, environ={})
    # ./configs first (the checkout's configs/ links to the packaged simpletir/configs)
    assert path.resolve() == REPO / "simpletir" / "configs" / f"{name}.yaml"
    load_config(path, environ={})


def test_single_turn_config_is_single_turn() -> None:
    config = load_config(resolve_config_path("single_turn_math", environ={}), environ={})
    assert config.tool_use is False and config.mask_void_turns is False
    assert "```python" not in config.rollout.prompt_template
    assert config.rollout.prompt_template.format(question="Q").startswith("Q")


def test_quickstart_is_small_and_cpu_friendly() -> None:
    config = load_config(resolve_config_path(None, environ={}), environ={})
    assert config.experiment_name == "quickstart_cpu" and not config.val_only  # the main job trains
    assert config.model_name == "smollm2-135m" and config.rollout.gpu_memory_utilization <= 0.3
    assert config.total_training_steps is not None and config.total_training_steps <= 5
    assert config.train_batch_size * config.rollout.n <= 64 and config.max_response_length <= 512
    assert config.train_datasets == ["arith_train"] and config.valid_datasets == ["arith"]  # held out


def test_eval_quickstart_is_small_and_cpu_friendly() -> None:
    config = load_config(resolve_config_path("eval_cpu", environ={}), environ={})
    assert config.experiment_name == "eval_cpu" and config.val_only
    assert 0 < config.val_sample_size <= 8 and config.max_response_length <= 512


def test_config_name_resolution_errors() -> None:
    with pytest.raises(ConfigError, match=r"'simpletir_trainr'.*did you mean 'simpletir_trainer'"):
        resolve_config_path("simpletir_trainr", environ={})
    assert resolve_config_path(None, environ={"CONFIG_NAME": "eval"}).stem == "eval"


# -- plugin options and cross-checks -----------------------------------------------------------


def test_plugin_options_are_typed() -> None:
    registry = fake_pm().registry()
    config = load_config(
        None, ["plugin_config.echo.timeout_s=2.5", "plugin_config.exact.tags=[a,b]"], environ={}
    )
    assert plugin_options(config, registry.tool("echo")) == EchoToolOptions(timeout_s=2.5, workers=2)
    assert plugin_options(config, registry.reward("exact")) == ExactOptions(strip=True, tags=["a", "b"])
    assert dataclasses.is_dataclass(plugin_options(config, registry.filter("keep_all")))


def test_plugin_options_errors() -> None:
    registry = fake_pm().registry()
    bad_key = load_config(None, ["plugin_config.echo.timeout=2"], environ={})
    with pytest.raises(
        ConfigError, match=r"unknown option plugin_config\.echo\.timeout \(did you mean 'timeout_s'\?\)"
    ):
        plugin_options(bad_key, registry.tool("echo"))
    bad_type = load_config(None, ["plugin_config.echo.workers=many"], environ={})
    with pytest.raises(ConfigError, match=r"plugin_config\.echo\.workers = 'many'"):
        plugin_options(bad_type, registry.tool("echo"))
    no_options = load_config(None, ["plugin_config.keep_all.x=1"], environ={})
    with pytest.raises(ConfigError, match="takes no options"):
        plugin_options(no_options, registry.filter("keep_all"))


def test_validate_accepts_a_good_config() -> None:
    validate_config(load_config(None, FAKE_OVERRIDES, environ={}), fake_pm())


@pytest.mark.parametrize(
    ("override", "error", "message"),
    [
        ("tools=[ecko]", PluginError, r"unknown tool 'ecko' \(did you mean 'echo'\?\)"),
        ("reward=exakt", PluginError, r"unknown reward 'exakt' \(did you mean 'exact'\?\)"),
        ("filters=[keep_al]", PluginError, r"unknown filter 'keep_al' \(did you mean 'keep_all'\?\)"),
        (
            "plugin_config.ech.timeout_s=1",
            ConfigError,
            r"plugin_config\.ech: no installed component .*'echo'",
        ),
        ("plugin_config.echo.timeout=1", ConfigError, r"plugin_config\.echo\.timeout"),
    ],
)
def test_validate_names_the_bad_choice(override: str, error: type[Exception], message: str) -> None:
    config = load_config(None, [*FAKE_OVERRIDES, override], environ={})
    with pytest.raises(error, match=message):
        validate_config(config, fake_pm(), check_data=False)


def test_tools_are_not_checked_without_tool_use() -> None:
    config = load_config(None, [*FAKE_OVERRIDES, "tools=[nope]", "tool_use=False"], environ={})
    validate_config(config, fake_pm())


def test_validate_datasets(shared_data_dir: Path, tmp_path: Path) -> None:
    base = [*FAKE_OVERRIDES, f"data_dir={shared_data_dir}", "val_only=True"]
    # a raw SimpleTIR name with its file present, and a plugin benchmark reading a present file
    validate_config(
        load_config(None, [*base, "valid_dataset=deepscaler/aime tiny_file"], environ={}), fake_pm()
    )
    with pytest.raises(DataError, match=r"unknown dataset 'tinny' \(did you mean 'tiny'\?\)"):
        validate_config(load_config(None, [*base, "valid_dataset=tinny"], environ={}), fake_pm())
    with pytest.raises(DataError, match=r"deepscaler/train\.parquet"):
        validate_config(
            load_config(None, [*base, "val_only=False", "train_dataset=deepscaler/train"], environ={}),
            fake_pm(),
        )
    empty = [*FAKE_OVERRIDES, f"data_dir={tmp_path}", "val_only=True", "valid_dataset=tiny_file"]
    with pytest.raises(DataError, match=r"benchmark 'tiny_file' needs .*aime\.parquet"):
        validate_config(load_config(None, empty, environ={}), fake_pm())


def test_benchmark_check_data_has_the_last_word(tmp_path: Path) -> None:
    base = [*FAKE_OVERRIDES, f"data_dir={tmp_path}", "val_only=True", "valid_dataset=checked"]
    validate_config(load_config(None, base, environ={}), fake_pm())
    with pytest.raises(DataError, match="checked: its data is not available"):
        validate_config(
            load_config(None, [*base, "plugin_config.checked.available=False"], environ={}), fake_pm()
        )


def test_train_datasets_ignored_for_val_only(shared_data_dir: Path) -> None:
    overrides = [
        *FAKE_OVERRIDES,
        f"data_dir={shared_data_dir}",
        "val_only=True",
        "train_dataset=deepscaler/train",
    ]
    validate_config(load_config(None, overrides, environ={}), fake_pm())


# -- docs ----------------------------------------------------------------------------------------


def test_every_field_is_documented() -> None:
    docs = (REPO / "docs" / "config.md").read_text(encoding="utf-8")
    missing = [key for key in schema_keys() if f"`{key}`" not in docs]
    assert not missing, f"docs/config.md lacks {missing}"
    assert render_into(docs) == docs, (
        "docs/config.md is stale: python -m simpletir.core.config_docs docs/config.md"
    )


def test_every_field_has_help() -> None:
    assert all(doc.help for doc in iter_fields()), [doc.key for doc in iter_fields() if not doc.help]
