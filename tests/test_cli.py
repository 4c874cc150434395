"""The command line: help, config show, plugins, run dispatch, errors, and a third-party plugin."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import yaml

from simpletir import cli
from simpletir.core import plugins as plugins_module
from simpletir.core.run import CONFIG_FILE, PLUGINS_FILE, RESULT_FILE

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "simpletir-example-plugin"
# Run-path tests are about dispatch, not the sandbox: leave the tool out so they need no nsjail.
NO_TOOLS = ("tool_use=False",)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_help_texts(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for word in ("run", "plugins", "config", "sandbox", "score", "--block", "SIMPLETIR_DATA_DIR"):
        assert word in out
    with pytest.raises(SystemExit):
        cli.run_main(["--help"])
    assert "overrides" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["config", "show", "--help"])
    assert "--help-fields" in capsys.readouterr().out


def test_bare_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys)
    assert code == 2 and "COMMAND" in err


def test_config_show_prints_resolved_yaml(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(
        capsys, "config", "show", "--check", "none", "simpletir_trainer", "--val_only", "True", "rollout.n=4"
    )
    assert code == 0
    shown = yaml.safe_load(out)
    assert shown["val_only"] is True and shown["rollout"]["n"] == 4
    assert shown["algorithm"]["clip_ratio_high"] == 0.28  # defaults are filled in
    assert shown["max_turns"] == 5


def test_config_show_help_fields(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "config", "show", "--help-fields")
    assert code == 0 and "rollout.n  (int, default 16)" in out and "mask_void_turns" in out


def test_user_errors_are_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "config", "show", "--check", "none", "quickstart_cpu", "max_turn=3")
    assert code == 2 and out == ""
    assert (
        err.strip()
        == "simpletir: error: override max_turn=3: unknown key 'max_turn' (did you mean 'max_turns'?)"
    )
    code, _, err = run_cli(capsys, "config", "show", "--check", "bogus")
    assert code == 2 and "argument --check: invalid choice: 'bogus'" in err and err.count("\n") == 1


def test_unknown_plugin_name_through_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(
        capsys, "config", "show", "--check", "plugins", "quickstart_cpu", "reward=math_verfy", *NO_TOOLS
    )
    assert code == 2 and "unknown reward 'math_verfy' (did you mean 'math_verify'?)" in err


def test_plugins_json_lists_components_and_versions(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "plugins", "--json")
    assert code == 0
    payload = json.loads(out)
    assert {"components", "plugins", "load_failures", "problems", "blocked"} <= set(payload)
    for component in payload["components"]:
        assert {"name", "kind", "distribution", "version"} <= set(component)
    by_name = {p["name"]: p for p in payload["plugins"]}
    assert by_name["filters"]["distribution"] == "simpletir" and by_name["filters"]["version"]
    assert "register_filters" in by_name["filters"]["hooks"]


def test_plugins_lists_builtins_of_every_kind(capsys: pytest.CaptureFixture[str]) -> None:
    payload = json.loads(run_cli(capsys, "plugins", "--json")[1])
    kinds = {c["kind"] for c in payload["components"] if c["distribution"] == "simpletir"}
    assert kinds == {"tool", "reward", "filter", "benchmark", "advantage_estimator", "policy_loss"}


def test_plugins_block_flag_and_warning(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "plugins", "--json", "--block", "filters", "--block=nosuchplugin")
    payload = json.loads(out)
    assert code == 0 and payload["blocked"] == ["filters", "nosuchplugin"]
    assert not [c for c in payload["components"] if c["kind"] == "filter"]
    assert "--block nosuchplugin: no installed plugin has this name" in err


def test_broken_plugin_warns_in_listing_but_stops_a_run(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.metadata as md

    broken = md.EntryPoint(name="broken", value="simpletir_no_such_module_xyz", group="simpletir")
    monkeypatch.setattr(plugins_module, "_entry_points", lambda: [broken])
    code, out, err = run_cli(capsys, "plugins", "--json")
    assert code == 0 and json.loads(out)["load_failures"][0]["name"] == "broken"
    assert "warning: plugin 'broken'" in err
    code, _, err = run_cli(capsys, "run", "quickstart_cpu")
    assert code == 2 and "plugin 'broken'" in err and "--block broken" in err


def test_training_says_the_trainer_stage_is_missing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shared_data_dir: Path
) -> None:
    monkeypatch.setitem(sys.modules, "simpletir.core.trainer", None)  # as if the module did not exist
    code, _, err = run_cli(
        capsys,
        "run",
        "single_turn_math",
        f"runs_dir={tmp_path}",
        f"data_dir={shared_data_dir}",
        "train_dataset=simplelr_math_35/train",
        "valid_dataset=simplelr_math_35/test",
    )
    assert code == 2
    assert "the trainer stage is not available yet" in err


def test_run_dispatches_val_only_to_evaluation(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shared_data_dir: Path
) -> None:
    module = types.ModuleType("simpletir.core.evaluate")
    calls: list[Any] = []
    module.run_evaluation = lambda config, pm: calls.append(config) or {"aime24": {"pass@1": 0.25}}  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "simpletir.core.evaluate", module)
    code, out, err = run_cli(
        capsys,
        "run",
        "eval_cpu",
        "--json",
        f"runs_dir={tmp_path}",
        f"logs_dir={tmp_path / 'logs'}",
        f"data_dir={shared_data_dir}",
        "valid_dataset=deepscaler/aime",
        *NO_TOOLS,
    )
    assert code == 0, err
    run_dir = tmp_path / "eval_cpu"
    assert json.loads(out)["run_dir"] == str(run_dir) and calls[0].run_dir == str(run_dir)
    assert yaml.safe_load((run_dir / CONFIG_FILE).read_text())["valid_dataset"] == "deepscaler/aime"
    versions = json.loads((run_dir / PLUGINS_FILE).read_text())
    assert versions["simpletir"] and any(p["name"] == "filters" for p in versions["plugins"])
    assert json.loads((run_dir / RESULT_FILE).read_text())["metrics"] == {"aime24/pass@1": 0.25}
    # a second run never overwrites the first run's folder
    again = run_cli(
        capsys,
        "run",
        "eval_cpu",
        f"runs_dir={tmp_path}",
        f"logs_dir={tmp_path / 'logs'}",
        f"data_dir={shared_data_dir}",
        "valid_dataset=deepscaler/aime",
        *NO_TOOLS,
    )
    assert again[0] == 0, again[2]
    assert (tmp_path / "eval_cpu-2" / CONFIG_FILE).is_file()


def test_missing_evaluation_stage_is_named(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shared_data_dir: Path
) -> None:
    monkeypatch.setitem(sys.modules, "simpletir.core.evaluate", None)
    code, _, err = run_cli(
        capsys,
        "run",
        "eval_cpu",
        f"runs_dir={tmp_path}",
        f"data_dir={shared_data_dir}",
        "valid_dataset=deepscaler/aime",
        *NO_TOOLS,
    )
    assert code == 2 and "evaluation (val_only) stage" in err and "not available yet" in err


def test_missing_delegated_command_is_named(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "simpletir.plugins.rewards.cli", None)
    code, _, err = run_cli(capsys, "score", "--help")
    assert code == 2 and "'simpletir score' is not available yet" in err


def test_delegated_command_gets_its_argv(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    module = types.ModuleType("simpletir.plugins.tools.python_sandbox.cli")
    seen: list[list[str]] = []
    module.main = lambda argv: seen.append(argv) or 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "simpletir.plugins.tools.python_sandbox.cli", module)
    assert run_cli(capsys, "sandbox", "run", "--block", "x")[0] == 0
    assert seen == [["run", "--block", "x"]]


def test_module_and_console_entry_points() -> None:
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "simpletir", "--version"], capture_output=True, text=True, env=env, check=False
    )
    assert done.returncode == 0 and done.stdout.startswith("simpletir ")
    script = Path(sys.executable).with_name("simpletir-run")
    if script.exists():
        done = subprocess.run([str(script), "--help"], capture_output=True, text=True, env=env, check=False)
        assert done.returncode == 0 and "CONFIG" in done.stdout


# -- a real third-party plugin package, installed with pip -----------------------------------------


@pytest.fixture(scope="module")
def example_plugin_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/simpletir-example-plugin pip-installed into an isolated folder (put on PYTHONPATH).

    A copy is built so the checkout gets no build/ or egg-info; the test environment itself
    is not changed, so nothing needs uninstalling.
    """
    work = tmp_path_factory.mktemp("example_plugin")
    source = shutil.copytree(EXAMPLE, work / "src", ignore=shutil.ignore_patterns("build", "*.egg-info"))
    target = work / "site"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(source),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return target


def _simpletir(site: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(site), "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "simpletir", *argv], capture_output=True, text=True, env=env, check=False
    )


def test_example_plugin_is_listed(example_plugin_path: Path) -> None:
    done = _simpletir(example_plugin_path, "plugins", "--json")
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)
    (arith,) = [c for c in payload["components"] if c["name"] == "arith_easy"]
    assert arith["kind"] == "benchmark" and arith["distribution"] == "simpletir-example-plugin"
    assert arith["version"] == "0.1.0" and arith["aliases"] == ["arith/easy"]
    example = {
        (c["kind"], c["name"])
        for c in payload["components"]
        if c["distribution"] == "simpletir-example-plugin"
    }
    assert example == {
        ("benchmark", "arith_easy"),
        ("tool", "calc"),
        ("reward", "numeric_match"),
        ("filter", "tool_errors"),
        ("advantage_estimator", "fixed_baseline"),
    }
    assert payload["problems"] == []  # no name collides with a built-in


def test_example_plugin_options_are_documented(example_plugin_path: Path) -> None:
    done = _simpletir(example_plugin_path, "config", "show", "--help-fields")
    assert done.returncode == 0, done.stderr
    assert (
        "plugin_config.calc.max_exponent  (int, default 100; tool 'calc' from simpletir-example-plugin)"
        in done.stdout
    )
    assert "plugin_config.fixed_baseline.baseline  (float, default 0.5;" in done.stdout


def test_example_plugin_components_can_be_chosen_together(example_plugin_path: Path) -> None:
    chosen = [
        "valid_dataset=arith_easy",
        "train_dataset=arith/easy",
        "reward=numeric_match",
        "filters=[void_turn, tool_errors]",
        "algorithm.adv_estimator=fixed_baseline",
        "tools=[calc]",
        "val_only=False",
    ]
    ok = _simpletir(example_plugin_path, "config", "show", "single_turn_math", *chosen, "tool_use=True")
    assert ok.returncode == 0, ok.stderr
    shown = yaml.safe_load(ok.stdout)
    assert shown["plugin_config"]["fixed_baseline"] == {"baseline": 0.5, "scale": 1.0}
    assert shown["plugin_config"]["numeric_match"]["tolerance"] == 1e-06
    assert shown["plugin_config"]["calc"]["decimals"] == 6 and "tool_errors" in shown["plugin_config"]
    bad = _simpletir(
        example_plugin_path,
        "config",
        "show",
        "single_turn_math",
        *chosen,
        "plugin_config.tool_errors.max_errors=-1",
    )
    assert bad.returncode == 2
    assert bad.stderr == "simpletir: error: plugin_config.tool_errors.max_errors = -1 must be >= 0\n"


def test_example_plugin_tests_pass_installed(example_plugin_path: Path) -> None:
    """The example package's own tests (what an outsider copies) pass against the installed copy."""
    source = example_plugin_path.parent / "src"
    env = {
        **os.environ,
        "PYTHONPATH": str(example_plugin_path),
        "WANDB_MODE": "offline",
        "HF_HUB_OFFLINE": "1",
    }
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(source / "tests")],
        capture_output=True,
        text=True,
        env=env,
        cwd=source,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


def test_example_plugin_passes_config_checks(example_plugin_path: Path) -> None:
    ok = _simpletir(
        example_plugin_path,
        "config",
        "show",
        "eval_cpu",
        "valid_dataset=arith/easy",
        "plugin_config.arith_easy.size=8",
        *NO_TOOLS,
    )
    assert ok.returncode == 0, ok.stderr
    assert "size: 8" in ok.stdout
    bad = _simpletir(
        example_plugin_path,
        "config",
        "show",
        "eval_cpu",
        "valid_dataset=arith_easy",
        "plugin_config.arith_easy.sise=8",
        *NO_TOOLS,
    )
    assert bad.returncode == 2 and "plugin_config.arith_easy.sise (did you mean 'size'?)" in bad.stderr


def test_example_plugin_is_seen_by_a_run(example_plugin_path: Path, tmp_path: Path) -> None:
    # The run goes through simpletir's real run path; only the evaluation stage is stood in
    # for (it needs a model), and it loads the benchmark the way the real one does.
    script = f"""
import sys, types, json
mod = types.ModuleType("simpletir.core.evaluate")
def run_evaluation(config, pm):
    bench = pm.build("benchmark", config.valid_datasets[0], config)
    problems = bench.load(None, limit=config.val_sample_size, seed=config.seed)
    return {{"n_problems": len(problems), "first": problems[0].question}}
mod.run_evaluation = run_evaluation
sys.modules["simpletir.core.evaluate"] = mod
from simpletir.cli import main
argv = ["run", "eval_cpu", "--json", "valid_dataset=arith_easy", "val_sample_size=3", "tool_use=False"]
raise SystemExit(main([*argv, "runs_dir={tmp_path}", "logs_dir={tmp_path / "logs"}"]))
"""
    env = {
        **os.environ,
        "PYTHONPATH": str(example_plugin_path),
        "WANDB_MODE": "offline",
        "HF_HUB_OFFLINE": "1",
    }
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=False
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["n_problems"] == 3 and result["first"].startswith("What is")
    versions = json.loads((tmp_path / "eval_cpu" / PLUGINS_FILE).read_text())
    assert any(p["distribution"] == "simpletir-example-plugin" for p in versions["plugins"])


def test_ci_runs_the_readme_test_command() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    commands = re.findall(r"^(bash scripts/setup\.sh && .+)$", readme, re.MULTILINE)
    assert len(commands) >= 2, "README's first two commands must install and run"
    assert "simpletir-run" in commands[0] and "pytest" in commands[1]
    ci = REPO / ".ci" / "run"
    assert commands[1] in ci.read_text(encoding="utf-8").splitlines()
    assert os.access(ci, os.X_OK) and os.access(REPO / "scripts" / "setup.sh", os.R_OK)


def test_a_run_that_cannot_start_leaves_no_run_dir(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shared_data_dir: Path
) -> None:
    monkeypatch.setitem(sys.modules, "simpletir.core.trainer", None)
    code, _, _ = run_cli(
        capsys, "run", "single_turn_math", f"runs_dir={tmp_path}", f"data_dir={shared_data_dir}",
        "train_dataset=simplelr_math_35/train",
    )  # fmt: skip
    assert code == 2 and list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_example_plugin_components_run_an_evaluation_and_training(
    example_plugin_path: Path, tmp_path: Path
) -> None:
    """The outside package's tool, reward, filter, benchmark and estimator, installed with pip,
    run a real evaluation and real training steps with no change to simpletir."""
    common = [
        "model_name=tiny-qwen2",
        "rollout.engine=hf",
        "rollout.progress=false",
        "rollout.chat_template=false",
        "tools=[calc]",
        "reward=numeric_match",
        "filters=[tool_errors]",
        "valid_dataset=arith_easy",
        "plugin_config.arith_easy.size=6",
        "n_val=2",
        "max_turns=2",
        "max_prompt_length=768",
        "max_response_length=8",
        f"runs_dir={tmp_path / 'runs'}",
        f"logs_dir={tmp_path / 'logs'}",
        f"checkpoints_dir={tmp_path / 'ckpt'}",
    ]
    env = {
        **os.environ,
        "PYTHONPATH": str(example_plugin_path),
        "WANDB_MODE": "offline",
        "HF_HUB_OFFLINE": "1",
    }
    simpletir_run = [sys.executable, "-m", "simpletir", "run", "--json", *common]
    evaluation = subprocess.run(
        [*simpletir_run, "val_only=true", "experiment_name=ex_eval"],
        capture_output=True, text=True, env=env, cwd=tmp_path, check=False, timeout=600,
    )  # fmt: skip
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    assert json.loads(evaluation.stdout)["n_problems"] == 6
    training = subprocess.run(
        [
            *simpletir_run,
            "train_dataset=arith_easy", "train_batch_size=2", "rollout.n=2", "oversample=1",
            "algorithm.adv_estimator=fixed_baseline", "algorithm.ppo_mini_batch_size=2",
            "total_training_steps=2", "save_freq=2", "test_freq=2", "experiment_name=ex_train",
        ],
        capture_output=True, text=True, env=env, cwd=tmp_path, check=False, timeout=600,
    )  # fmt: skip
    assert training.returncode == 0, training.stderr[-3000:]
    result = json.loads(training.stdout)
    assert result["steps"] == 2 and Path(result["checkpoint"]).name == "epoch_2"
    config = yaml.safe_load((tmp_path / "runs" / "ex_train" / CONFIG_FILE).read_text())
    assert config["algorithm"]["adv_estimator"] == "fixed_baseline" and config["tools"] == ["calc"]
