"""Every numeric key is range-checked before any heavy work (table-driven over the schema)."""

from __future__ import annotations

from typing import Any

import pytest

from simpletir.core.config_docs import iter_fields
from simpletir.core.config_load import load_config
from simpletir.core.config_ranges import NUMERIC_RULES
from simpletir.core.errors import ConfigError

NUMERIC = [f.key for f in iter_fields() if f.type in ("int", "float", "int | None", "float | None")]

# Bad values per key, by the kind of rule it has; NaN and infinities for every float.
BAD: dict[str, list[str]] = {
    "seed": [],
    "grad_clip": ["0", "-1"],
    "start_clip_step": ["-1"],
    "val_sample_size": ["0", "-2"],
    "save_freq": ["0", "-2"],
    "test_freq": ["0", "-2"],
    "rollout.temperature": ["-1", "-0.1"],
    "rollout.val_temperature": ["-1"],
    "rollout.top_p": ["0", "2", "-0.5"],
    "rollout.val_top_p": ["0", "2"],
    "rollout.top_k": ["0", "-5"],
    "rollout.val_top_k": ["0", "-5"],
    "rollout.gpu_memory_utilization": ["0", "1.5"],
    "algorithm.clip_ratio_low": ["-0.1"],
    "algorithm.clip_ratio_high": ["-0.1"],
    "algorithm.clip_ratio_c": ["1", "0.5"],
    "algorithm.kl_coef": ["-1"],
    "algorithm.entropy_coeff": ["-1"],
    "algorithm.lr": ["0", "-0.5"],
    "algorithm.weight_decay": ["-0.1"],
    "algorithm.warmup_steps": ["-1"],
    "algorithm.tis_cap": ["-1"],
    "algorithm.overlong_buffer_len": ["-1"],
    "algorithm.overlong_penalty_factor": ["-1"],
    "trainer.micro_batch_tokens": ["-1"],
    "trainer.wandb_init_timeout_s": ["0", "-1"],
    "rollout.max_trajectory_retries": ["-1"],
    "ray.object_store_mb": ["0", "63"],
    "ray.engine_cpus": ["-1"],
    "ray.engine_gpus": ["-2"],
    "ray.sandbox_cpus": ["-0.5"],
    "ray.reward_cpus": ["-1"],
    "ray.trainer_cpus": ["-1"],
    "ray.trainer_gpus": ["-2"],
    "ray.actor_restarts": ["-1"],
}
FLOATS = {f.key for f in iter_fields() if f.type.startswith("float")}
CASES = [
    (key, value)
    for key in NUMERIC
    for value in BAD.get(key, ["0", "-3"]) + (["nan", "inf", "-inf"] if key in FLOATS else [])
]


def test_every_numeric_key_has_a_range_rule() -> None:
    assert NUMERIC and set(NUMERIC) <= set(NUMERIC_RULES), set(NUMERIC) - set(NUMERIC_RULES)
    assert set(NUMERIC_RULES) <= set(NUMERIC), "rules for keys the schema does not have"


@pytest.mark.parametrize(("key", "value"), CASES, ids=[f"{k}={v}" for k, v in CASES])
def test_out_of_range_values_are_one_error_naming_the_key(key: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [f"{key}={value}", "val_only=true"])
    message = str(info.value)
    assert message.startswith(f"{key} ") and value.lstrip("-") in message.lower()


def test_every_default_is_in_range() -> None:
    load_config(None, [])
    load_config(None, ["val_only=true"])


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["rollout.dtype=int3"], "rollout.dtype must be one of auto, float32, bfloat16, float16"),
        (["tool_use=true", "tools=[]"], "tool_use=true but tools is empty"),
        (["train_batch_size=6", "algorithm.ppo_mini_batch_size=4"], "must divide train_batch_size=6"),
        (["algorithm.betas=[0.9]"], "algorithm.betas must be two numbers"),
        (["algorithm.betas=[0.9,1.0]"], "algorithm.betas must be two numbers"),
    ],
)
def test_cross_key_and_set_checks(overrides: list[str], expected: str) -> None:
    with pytest.raises(ConfigError, match=expected.replace("[", r"\[")):
        load_config(None, overrides)


def test_boundaries_are_allowed() -> None:
    load_config(
        None,
        [
            "rollout.temperature=0",
            "rollout.top_p=1",
            "rollout.top_k=1",
            "val_sample_size=-1",
            "save_freq=-1",
            "algorithm.tis_cap=0",
            "train_batch_size=4",
            "algorithm.ppo_mini_batch_size=8",  # larger than the batch: one mini-batch
        ],
    )


@pytest.mark.parametrize(
    "name", ["../../x", "/abs/path", "", ".", "..", "a/b", "tab\tname", "new\nline", "x" * 101]
)
def test_experiment_name_must_be_a_plain_name(name: str) -> None:
    with pytest.raises(ConfigError, match="must be a plain name"):
        load_config(None, [f"experiment_name={name}"])


@pytest.mark.parametrize("name", ["run", "run-2", "qwen2.5_7b", "A.b-c_d"])
def test_plain_names_pass(name: str) -> None:
    assert load_config(None, [f"experiment_name={name}"]).experiment_name == name


def _show(tmp_path: Any, text: bytes | None, *overrides: str, name: str = "c.yaml") -> str:
    from simpletir.cli import main

    path = tmp_path / name
    if text is None:
        path.mkdir()
    else:
        path.write_bytes(text)
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["config", "show", "--check", "none", str(path), *overrides])
    assert code == 2, err.getvalue()
    lines = err.getvalue().strip().splitlines()
    assert len(lines) == 1, lines  # one line, no traceback
    return lines[0]


def test_bad_config_files_are_one_line(tmp_path: Any) -> None:
    assert "not UTF-8 text" in _show(tmp_path, b"experiment_name: caf\xe9\n", name="latin1.yaml")
    assert "appears twice" in _show(tmp_path, b"seed: 1\nseed: 2\n", name="dup.yaml")
    assert "is a folder" in _show(tmp_path, None, name="folder.yaml")
    assert "plugin_config must be a mapping" in _show(tmp_path, b"plugin_config: [a, b]\n", name="list.yaml")
    assert "plugin_config" in _show(tmp_path, b"seed: 1\n", "plugin_config=[1,2]", name="ok.yaml")
