# ruff: noqa: SIM105  (plain try/except: no contextlib frames in the forked hot path)
"""The server that runs *inside* one jail: a warm interpreter that forks a fresh child per snippet.

This file is executed by the jail's own interpreter (``/usr/bin/python3 -E -s -B worker.py``,
bind-mounted read-only from a copy outside /root), so it imports nothing but the standard
library and never imports simpletir.

Why fork: a cold jailed ``python3`` costs ~11 ms more than a bare one and importing sympy costs
300+ ms. The server imports the heavy modules once, then forks a child per snippet; the child
starts from the same pristine snapshot every time, and whatever it does to its memory dies with
it. Under nsjail the server is PID 1 of its own PID namespace, which gives three guarantees:
  * the kernel drops every signal its descendants send it unless it installed a handler, so a
    snippet cannot kill it (SIGKILL and SIGSTOP included);
  * orphans (setsid double-fork daemons) are re-parented to it, and ``kill(-1, SIGKILL)`` from
    it reaches every other process of the namespace and nothing outside it;
  * waiting until ``waitpid(-1)`` reports no child left proves that nothing of the run survived.
The server marks itself non-dumpable so a snippet of the same uid cannot ptrace it or write
its /proc/1/mem; nsjail's seccomp policy denies ptrace as a second line. The private /tmp is
emptied after every snippet, so no state crosses from one snippet to the next.

Protocol on the server's original stdin/stdout (moved away from fds 0/1 first):
  request  = u32 length + JSON {"code", "timeout_s", "cpu_s", "memory_mb", "max_output_bytes"}
  response = u32 length + JSON header, then the header's byte counts of stdout and stderr
             (head then tail of each stream) as raw bytes.
The first frame the server sends is {"ready": true, ...} once preloading is done.
"""

import atexit
import builtins
import gc
import io
import json
import linecache
import os
import random
import resource
import select
import shutil
import signal
import struct
import sys
import time
import traceback

LEN = struct.Struct("!I")


def read_exact(fd, n):
    chunks = []
    while n:
        data = os.read(fd, n)
        if not data:
            return None
        chunks.append(data)
        n -= len(data)
    return b"".join(chunks)


def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def send(fd, header, payload=b""):
    blob = json.dumps(header).encode()
    write_all(fd, LEN.pack(len(blob)) + blob + payload)


class Capture:
    """Keeps the first and the last ``cap`` bytes of a stream and counts the rest."""

    def __init__(self, cap):
        self.cap = cap
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def add(self, data):
        self.total += len(data)
        room = self.cap - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data
            if len(self.tail) > self.cap:
                del self.tail[: len(self.tail) - self.cap]

    def header(self, name):
        return {
            name + "_head": len(self.head),
            name + "_tail": len(self.tail),
            name + "_omitted": self.total - len(self.head) - len(self.tail),
        }


def final_answer(x):
    """SimpleTIR's helper: print the answer boxed so the reward can find it."""
    print("\\boxed{" + str(x) + "}")


def set_limits(req, cfg):
    cpu = int(req["cpu_s"])
    mem = int(req["memory_mb"]) * 1024 * 1024
    # Only lowering: the jail already set hard limits the child cannot raise.
    for res, soft, hard in (
        (resource.RLIMIT_CPU, cpu, cpu + 1),
        (resource.RLIMIT_AS, mem, mem),
        (resource.RLIMIT_CORE, 0, 0),
    ):
        _soft, cur_hard = resource.getrlimit(res)
        if cur_hard != resource.RLIM_INFINITY:
            hard = min(hard, cur_hard)
            soft = min(soft, hard)
        try:
            resource.setrlimit(res, (soft, hard))
        except (ValueError, OSError):
            pass


_PRCTL: list = []  # libc's prctl, looked up once by the server so forked children need no dlopen


def set_name(name):
    """Name the process (``comm``) so tests and operators can tell server, spare and run apart."""
    if _PRCTL:
        _PRCTL[0](15, name.encode(), 0, 0, 0)  # PR_SET_NAME


class Spare:
    """A child forked ahead of time, waiting on ``ctrl`` for the snippet it will run.

    Forking an interpreter with sympy loaded costs a few ms (page tables); doing it while the
    worker is idle takes that cost off each snippet's latency."""

    def __init__(self, cfg):
        ctrl_r, self.ctrl = os.pipe()
        self.out, out_w = os.pipe()
        self.err, err_w = os.pipe()
        self.done, done_w = os.pipe()
        in_r, in_w = os.pipe()
        os.close(in_w)  # the snippet's stdin is at end-of-file
        self.pid = os.fork()
        if self.pid == 0:
            try:
                child_main(cfg, ctrl_r, in_r, out_w, err_w, done_w)
            finally:
                os._exit(70)
        for fd in (ctrl_r, out_w, err_w, in_r, done_w):
            os.close(fd)
        self.pidfd = os.pidfd_open(self.pid)
        self.pgid = self.pid  # the child calls setsid(): its group outlives it while members live

    def close(self):
        for fd in (self.ctrl, self.out, self.err, self.done, self.pidfd):
            try:
                os.close(fd)
            except OSError:
                pass


def child_main(cfg, ctrl_r, stdin_r, out_w, err_w, done_w):
    """Runs in the forked child; never returns (the caller wraps it in ``os._exit``)."""
    set_name("sbx-spare")
    os.setsid()
    os.dup2(stdin_r, 0)
    os.dup2(out_w, 1)
    os.dup2(err_w, 2)
    os.dup2(ctrl_r, 3)
    # fd 4 reports the exit code as soon as the snippet is done, so the server can answer
    # before the kernel has torn down this address space (~1-2 ms with sympy loaded).
    os.dup2(done_w, 4, inheritable=False)
    # Drop every other descriptor, in particular the protocol pipes of the server.
    os.closerange(5, 65536)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # Forked children share the server's RNG state: reseed so snippets do not repeat numbers.
    random.seed()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed(int.from_bytes(os.urandom(4), "little"))
    # gc stays frozen: unfreezing would let the first full collection walk (and so copy) every
    # page of the preloaded snapshot, which costs ~20 ms per snippet with sympy loaded.
    os.chdir(cfg["scratch"])
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
    sys.stdout = io.TextIOWrapper(
        io.FileIO(1, "w", closefd=False), encoding="utf-8", errors="backslashreplace"
    )
    sys.stderr = io.TextIOWrapper(
        io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="backslashreplace", line_buffering=True
    )
    sys.argv = ["<snippet>"]
    builtins.final_answer = final_answer  # type: ignore[attr-defined]
    raw = read_exact(3, LEN.size)
    body = read_exact(3, LEN.unpack(raw)[0]) if raw else None
    os.close(3)
    if body is None:
        os._exit(0)  # the server let this spare go unused
    req = json.loads(body)
    set_name("sbx-run")
    set_limits(req, cfg)
    code = 0
    try:
        namespace = {"__name__": "__main__", "__builtins__": builtins}
        source = req["code"]
        linecache.cache["<snippet>"] = (len(source), None, source.splitlines(True), "<snippet>")
        exec(compile(source, "<snippet>", "exec"), namespace)
    except SystemExit as exc:
        code = exit_code_of(exc)
    except BaseException as exc:
        code = 1
        try:
            tb = exc.__traceback__
            traceback.print_exception(type(exc), exc, tb.tb_next if tb else None)
        except BaseException:
            pass
    finally:
        code = finish(code)
        try:
            os.write(4, str(code).encode())
        except OSError:
            pass
    os._exit(code)


def exit_code_of(exc):
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code & 0xFF
    try:
        print(exc.code, file=sys.stderr)
    except BaseException:
        pass
    return 1


def finish(code):
    """What the interpreter does at a normal exit: join threads, run atexit, flush."""
    try:
        threading = sys.modules.get("threading")
        if threading is not None:
            threading._shutdown()
        atexit._run_exitfuncs()
    except SystemExit as exc:
        code = exit_code_of(exc)
    except BaseException:
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            code = code or 120
    return code


def wipe(path):
    """Empty the scratch folder, whatever modes the snippet left on its files."""

    def retry(func, target, _exc):
        try:
            os.chmod(os.path.dirname(target) or target, 0o700)
            os.chmod(target, 0o700)
        except OSError:
            pass
        try:
            func(target)
        except OSError:
            pass

    try:
        entries = list(os.scandir(path))
    except OSError:
        return
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                os.chmod(entry.path, 0o700)
                shutil.rmtree(entry.path, onerror=retry)
            else:
                os.unlink(entry.path)
        except OSError:
            retry(os.unlink, entry.path, None)


def kill_everything(pgid, own_namespace):
    """Kill the snippet and every process it left; return once none is left."""
    if own_namespace:
        # PID 1 of our namespace: -1 means every other process here, nothing outside.
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            pass
    else:
        # unsafe_local: no namespace, so only the snippet's process group can be reached.
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def reap_all(own_namespace, deadline):
    """Wait until no child is left (under a PID namespace that means no process of the run)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG if not own_namespace else 0)
        except ChildProcessError:
            return
        if pid == 0:
            if time.monotonic() > deadline:
                return
            time.sleep(0.001)
        elif own_namespace:
            # A process may have forked between our kill and its death: kill again.
            try:
                os.kill(-1, signal.SIGKILL)
            except ProcessLookupError:
                pass


def execute(req, cfg, own_namespace, spare):
    """Hand the request to the spare child and collect its output and exit status.

    Returns ``(header, payload)``; the caller answers the host, then calls :func:`cleanup`
    before the next snippet."""
    cap = int(cfg["capture_bytes"])
    out, err = Capture(cap), Capture(cap)
    captures = {spare.out: out, spare.err: err}
    cpu_before = children_cpu()
    start = time.monotonic()
    blob = json.dumps(req).encode()
    try:
        write_all(spare.ctrl, LEN.pack(len(blob)) + blob)
    except OSError:
        pass  # the spare died before its snippet: reported below from its exit status
    poller = select.poll()
    for fd in (spare.out, spare.err, spare.pidfd, spare.done):
        poller.register(fd, select.POLLIN)
    open_fds = {spare.out, spare.err}
    deadline = start + float(req["timeout_s"])
    max_output = int(req["max_output_bytes"])
    killed_by = None
    status = None
    reported = None
    while status is None and reported is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            killed_by = "timeout"
            break
        for fd, _event in poller.poll(max(1, int(remaining * 1000))):
            if fd == spare.pidfd:
                status = os.waitpid(spare.pid, 0)[1]
                spare.pid = None
                poller.unregister(fd)
            elif fd == spare.done:
                data = os.read(fd, 16)
                poller.unregister(fd)
                try:
                    reported = int(data)
                except ValueError:
                    pass  # closed or scribbled on by the snippet: wait for the real exit
            else:
                data = os.read(fd, 1 << 16)
                if data:
                    captures[fd].add(data)
                else:
                    poller.unregister(fd)
                    open_fds.discard(fd)
        if out.total + err.total > max_output:
            killed_by = "output_limit"
            break
    elapsed = time.monotonic() - start
    if killed_by is not None:
        kill_everything(spare.pgid, own_namespace)
        if spare.pid is not None:
            status = os.waitpid(spare.pid, 0)[1]
            spare.pid = None
    # Whatever the snippet wrote before it finished is in the pipes now.
    for fd in open_fds:
        os.set_blocking(fd, False)
        try:
            while out.total + err.total <= max_output:
                data = os.read(fd, 1 << 16)
                if not data:
                    break
                captures[fd].add(data)
        except BlockingIOError:
            pass
    exit_code = reported
    if status is not None and os.WIFEXITED(status):
        exit_code = os.WEXITSTATUS(status)
    elif status is not None and os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        exit_code = -sig
        if killed_by is None:
            spent = children_cpu() - cpu_before >= float(req["cpu_s"]) * 0.9
            killed_by = "cpu" if sig in (signal.SIGXCPU, signal.SIGKILL) and spent else "signal"
    if killed_by is None and exit_code == 1 and b"MemoryError" in bytes(err.tail or err.head)[-512:]:
        killed_by = "memory"
    header = {"exit_code": exit_code, "killed_by": killed_by, "duration_ms": elapsed * 1000.0}
    header.update(out.header("out"))
    header.update(err.header("err"))
    return header, bytes(out.head + out.tail + err.head + err.tail)


def cleanup(spare, cfg, own_namespace):
    """Kill whatever the snippet left running, reap it all, empty the scratch folders."""
    kill_everything(spare.pgid, own_namespace)
    if spare.pid is not None:
        os.waitpid(spare.pid, 0)
    reap_all(own_namespace, time.monotonic() + 2.0)
    spare.close()
    for folder in cfg.get("scratch_dirs", [cfg["scratch"]]):
        wipe(folder)


def children_cpu():
    """CPU seconds of reaped children so far (RLIMIT_CPU ends a snippet with SIGXCPU/SIGKILL)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def preload(cfg):
    errors = []
    for name in cfg["preload"]:
        try:
            __import__(name)
        except BaseException as exc:
            errors.append(name + ": " + type(exc).__name__ + ": " + str(exc))
    if "numpy" in sys.modules:
        # numpy.random is a lazy submodule; importing it in every child would cost ~18 ms.
        import numpy.random  # noqa: F401
    if cfg.get("warmup") and "sympy" in sys.modules:
        # Much of sympy sets itself up lazily on first use; pay that once, before forking.
        try:
            import sympy

            x = sympy.Symbol("x")
            sympy.solve(x**2 - 4, x)
            sympy.simplify(sympy.sin(x) ** 2 + sympy.cos(x) ** 2)
            sympy.integrate(x**2 + sympy.exp(x), x)
            sympy.factorint(360)
            sympy.expand((x + 1) ** 5)
            sympy.Matrix([[1, 2], [3, 4]]).det()
            sympy.nsimplify(0.5) + sympy.Rational(1, 3) + sympy.sqrt(8)
            sympy.latex(sympy.Poly(x**2 + 1, x).as_expr())
        except BaseException as exc:
            errors.append("sympy warmup: " + repr(exc))
    return errors


def main():
    cfg = json.loads(sys.argv[1])
    # Keep the protocol off fds 0/1 so nothing printed by a library can corrupt it.
    proto_in, proto_out = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    own_namespace = os.getpid() == 1
    if cfg.get("expect_namespace") and not own_namespace:
        send(proto_out, {"ready": False, "errors": ["worker is not PID 1 of a PID namespace"]})
        return 3
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import ctypes

        _PRCTL.append(ctypes.CDLL(None).prctl)
        _PRCTL[0](4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 0: no ptrace, no /proc/1/mem
    except (OSError, AttributeError):
        pass
    # Snippets see the working folder first, as under `python3 -c`, not this file's folder.
    if sys.path and sys.path[0] == os.path.dirname(os.path.abspath(__file__)):
        sys.path[0] = ""
    for path in reversed(cfg.get("sys_path", [])):
        sys.path.insert(0, path)
    errors = preload(cfg)
    gc.collect()
    gc.freeze()  # keeps the collector from touching (and copying) the snapshot in children
    set_name("sbx-server")
    spare = Spare(cfg)
    send(proto_out, {"ready": True, "pid": os.getpid(), "namespace": own_namespace, "errors": errors})
    while True:
        raw = read_exact(proto_in, LEN.size)
        body = read_exact(proto_in, LEN.unpack(raw)[0]) if raw else None
        if body is None:
            spare.close()  # the spare reads end-of-file and exits
            return 0
        header, payload = execute(json.loads(body), cfg, own_namespace, spare)
        send(proto_out, header, payload)
        cleanup(spare, cfg, own_namespace)
        spare = Spare(cfg)  # after the cleanup above, which would have killed it


if __name__ == "__main__":
    sys.exit(main())
