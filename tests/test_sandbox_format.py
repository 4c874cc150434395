"""SimpleTIR formatting, the code-block regex, config validation and plugin registration
(none of these need nsjail)."""

from __future__ import annotations

import pytest

from simpletir.core.errors import ConfigError
from simpletir.core.specs import Tool, ToolSpec
from simpletir.core.types import ToolResult
from simpletir.plugins.tools.python_sandbox import PythonTool, SandboxConfig, register_tools
from simpletir.plugins.tools.python_sandbox.formatting import (
    ends_inside_block,
    find_code,
    observation,
    output_text,
    truncate,
)

PATTERN = SandboxConfig().code_pattern
FENCE = "```"


def block(code: str, tag: str = "python") -> str:
    return f"{FENCE}{tag}\n{code}\n{FENCE}"


@pytest.mark.parametrize("tag", ["python", "py", ""])
def test_regex_accepts_simpletir_tags(tag: str) -> None:
    assert find_code(f"Let me compute.\n{block('print(1)', tag)}\n", PATTERN) == "print(1)"


def test_last_complete_block_wins_and_unclosed_blocks_do_not_count() -> None:
    text = f"{block('a = 1')}\ntext\n{block('b = 2')}\nmore\n{FENCE}python\nc = 3\n"
    assert find_code(text, PATTERN) == "b = 2"
    assert find_code(f"{FENCE}python\nprint(1)\n", PATTERN) is None
    assert find_code("no code here", PATTERN) is None
    assert find_code(f"{FENCE}output\n2\n{FENCE}", PATTERN) is None  # only py/python/bare


def test_multiline_code_is_kept_verbatim() -> None:
    code = "def f(x):\n    return x + 1\n\nprint(f(1))"
    assert find_code(block(code), PATTERN) == code


def test_tool_parse_call_and_stop_strings() -> None:
    tool = PythonTool()
    call = tool.parse_call(f"Compute.\n{block('print(2)')}\n")
    assert call is not None and call.tool == "python" and call.code == "print(2)"
    assert tool.parse_call(f"{FENCE}python\nprint(2)") is None
    assert tool.stop_strings == ("```\n",)
    # The stop string must match right after a closing fence.
    text = f"{block('print(2)')}\n"
    assert text.endswith(tool.stop_strings[0])
    assert isinstance(tool, Tool)


def test_ends_inside_block() -> None:
    assert ends_inside_block(f"ok\n{FENCE}\n")  # a bare opening fence: keep generating
    assert ends_inside_block(f"{FENCE}python\nx = 1\n")
    assert not ends_inside_block(f"{block('x = 1')}\n")
    assert not ends_inside_block("plain text")


def test_truncation_keeps_first_and_last_256() -> None:
    cfg = SandboxConfig()
    text = "a" * 300 + "b" * 100 + "c" * 300
    out = truncate(text, cfg)
    assert out.startswith("a" * 256) and out.endswith("c" * 256)
    assert "(output truncated: 188 characters omitted)" in out
    assert truncate("x" * 512, cfg) == "x" * 512  # exactly at the limit: untouched
    assert truncate("x" * 513, SandboxConfig(max_chars=0)) == "x" * 513


def test_observation_format_and_default_stderr_policy() -> None:
    cfg = SandboxConfig()
    res = ToolResult(stdout="4\n", stderr="Traceback ...\nZeroDivisionError: division by zero\n", exit_code=1)
    assert observation(res, cfg) == (
        "\nCode execution result: 4\nTraceback ...\nZeroDivisionError: division by zero\n\n"
    )
    assert observation(ToolResult(stdout="2\n"), cfg) == "\nCode execution result: 2\n\n"
    assert observation(ToolResult(), cfg) == "\nCode execution result: \n"


def test_simpletir_last_line_policy_replaces_stdout() -> None:
    cfg = SandboxConfig(stderr_policy="last_line")
    res = ToolResult(
        stdout="4\n", stderr="Traceback ...\nZeroDivisionError: division by zero\n\n", exit_code=1
    )
    assert output_text(res, cfg) == "ZeroDivisionError: division by zero"
    assert output_text(ToolResult(stdout="4\n"), cfg) == "4\n"
    assert output_text(res, SandboxConfig(stderr_policy="stdout_only")) == "4\n"


def test_long_stdout_and_stderr_are_each_truncated() -> None:
    cfg = SandboxConfig()
    res = ToolResult(stdout="o" * 2000, stderr="e" * 2000 + "\nValueError: bad", exit_code=1)
    text = output_text(res, cfg)
    assert text.count("output truncated") == 2
    assert text.endswith("ValueError: bad") and text.startswith("o" * 256)


def test_timeout_is_reported_to_the_model() -> None:
    res = ToolResult(stdout="partial\n", exit_code=-9, timed_out=True, killed_by="timeout", duration_ms=5003)
    assert output_text(res, SandboxConfig()) == "partial\nTimeoutError: execution timed out after 5 s"
    assert output_text(res, SandboxConfig(stderr_policy="last_line")) == (
        "TimeoutError: execution timed out after 5 s"
    )


def test_custom_templates() -> None:
    cfg = SandboxConfig(observation_template="\n```output\n{output}\n```\n", empty_output="(no output)")
    assert observation(ToolResult(), cfg) == "\n```output\n(no output)\n```\n"


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"workrs": 2}, "plugin_config.python.workrs: unknown option (did you mean 'workers'?)"),
        ({"workers": 0}, "plugin_config.python.workers=0"),
        ({"workers": "two"}, "plugin_config.python.workers='two': must be of type int"),
        ({"timeout_s": -1}, "plugin_config.python.timeout_s=-1"),
        ({"timeout_s": float("inf")}, "plugin_config.python.timeout_s=inf: must be > 0 and finite"),
        ({"backend": "docker"}, "plugin_config.python.backend='docker'"),
        ({"stderr_policy": "hide"}, "plugin_config.python.stderr_policy='hide'"),
        ({"code_pattern": "(unclosed"}, "plugin_config.python.code_pattern"),
        ({"code_pattern": "```"}, "must have a capture group"),
        ({"python": "/root/.pyenv/bin/python3"}, "outside /root"),
        ({"observation_template": "{nope}"}, "plugin_config.python.observation_template"),
        ({"preload": ["numpy", "os; rm"]}, "plugin_config.python.preload"),
        ({"max_output_bytes": 10}, "plugin_config.python.max_output_bytes=10"),
    ],
)
def test_bad_options_name_the_key(options: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        SandboxConfig.from_mapping(options)
    assert needle in str(err.value)


def test_from_mapping_accepts_dicts_and_omegaconf() -> None:
    from omegaconf import OmegaConf

    cfg = SandboxConfig.from_mapping(OmegaConf.create({"workers": 3, "timeout_s": 2}))
    assert cfg.workers == 3 and cfg.timeout_s == 2
    assert SandboxConfig.from_mapping(None) == SandboxConfig()


def test_plugin_registers_the_python_tool() -> None:
    specs = list(register_tools())
    assert len(specs) == 1 and isinstance(specs[0], ToolSpec)
    spec = specs[0]
    assert spec.name == "python" and spec.config_cls is SandboxConfig
    tool = spec.factory(SandboxConfig(workers=1), None)
    assert isinstance(tool, PythonTool) and tool.cfg.workers == 1
    assert spec.factory({"max_chars": 100}, None).cfg.max_chars == 100


def test_entry_point_points_at_this_package() -> None:
    from importlib.metadata import entry_points

    eps = {ep.name: ep.value for ep in entry_points(group="simpletir")}
    assert eps.get("python_tool") == "simpletir.plugins.tools.python_sandbox"


@pytest.mark.parametrize(
    ("text", "inside"),
    [
        (f"Compute it: {block('print(1)')}", False),  # opened mid-line: still a complete call
        (f"{block('print(1)')}\n{FENCE}\n", True),  # then a bare opening fence
        (f"{block(f'{FENCE}x = 1')}\n", False),  # a fence-like line inside the code
        (f"{block('x = 1')}\nsee {FENCE}python\nprint(2)\n", True),
    ],
)
def test_ends_inside_block_agrees_with_parse_call(text: str, inside: bool) -> None:
    tool = PythonTool(SandboxConfig())
    assert tool.ends_inside_block(text) is inside
    if not inside:
        assert tool.parse_call(text) is not None
