# ruff: noqa: SIM105  (plain try/except: no contextlib frames in the forked hot path)
"""The server that runs *inside* one jail: a warm interpreter that forks a fresh child per snippet.

Run by the jail's own interpreter (``/usr/bin/python3 -E -s -B worker.py``, bind-mounted
read-only from a copy outside /root), so it imports only the standard library.

Why fork: a cold jailed ``python3`` costs ~11 ms more than a bare one, importing sympy 300+ ms.
The server imports the heavy modules once and forks a child per snippet. Under nsjail it is
PID 1 of its own PID namespace: the kernel drops signals its descendants send it (no handler
installed), orphans and setsid daemons are re-parented to it, ``kill(-1, SIGKILL)`` reaches
every other process of the namespace and nothing outside it, and ``waitpid(-1)`` reporting no
child left proves nothing of the run survived. The server is non-dumpable (no ptrace, no
/proc/1/mem; seccomp denies ptrace too). /tmp and /dev/shm are emptied after every snippet.

Whatever the server holds is readable in the next child's memory, so it never parses or
copies a snippet's code or output: both pass through :class:`Buffers`, zeroed after each run.

Protocol on the server's original stdin/stdout (moved away from fds 0/1 first):
  request  = u32 length + JSON {"code_bytes", "timeout_s", "cpu_s", "memory_mb",
             "max_output_bytes"}, then ``code_bytes`` bytes of UTF-8 code
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


def quietly(func, *args):
    """``func(*args)``, or False when it raises OSError (a gone process, a closed fd)."""
    try:
        return func(*args)
    except OSError:
        return False


def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def send(fd, header, parts=()):
    blob = json.dumps(header).encode()
    views = [memoryview(LEN.pack(len(blob)) + blob), *parts]
    while views:  # writev: no concatenated copy of the output in the server's heap
        done = os.writev(fd, views)
        while views and done >= len(views[0]):
            done -= len(views[0])
            views.pop(0)
        if views:
            views[0] = views[0][done:]


class Capture:
    """Keeps the first and the last ``cap`` bytes of a stream (the tail in a ring) and counts
    the rest, in two buffers allocated once and zeroed by :meth:`clear`."""

    def __init__(self, cap):
        self.cap = cap
        self.head = bytearray(cap)
        self.tail = bytearray(cap)
        self.zero = memoryview(bytes(cap))
        self.n_head = self.n_tail = self.pos = self.total = 0

    def add(self, view):
        self.total += len(view)
        k = min(self.cap - self.n_head, len(view))
        if k > 0:
            self.head[self.n_head : self.n_head + k] = view[:k]
            self.n_head += k
            view = view[k:]
        view = view[max(0, len(view) - self.cap) :]
        while view:
            k = min(self.cap - self.pos, len(view))
            self.tail[self.pos : self.pos + k] = view[:k]
            self.pos = (self.pos + k) % self.cap
            self.n_tail = min(self.cap, self.n_tail + k)
            view = view[k:]

    def parts(self):
        head, tail = memoryview(self.head), memoryview(self.tail)
        if self.n_tail < self.cap:
            return [head[: self.n_head], tail[: self.n_tail]]
        return [head[: self.n_head], tail[self.pos :], tail[: self.pos]]

    def header(self, name):
        omitted = self.total - self.n_head - self.n_tail
        return {name + "_head": self.n_head, name + "_tail": self.n_tail, name + "_omitted": omitted}

    def clear(self):
        self.head[: self.n_head] = self.zero[: self.n_head]
        self.tail[: self.n_tail] = self.zero[: self.n_tail]
        self.n_head = self.n_tail = self.pos = self.total = 0


class Buffers:
    """The only places a snippet's code and output pass through in the server."""

    def __init__(self, cap):
        self.io = bytearray(1 << 16)
        self.out, self.err = Capture(cap), Capture(cap)

    def read(self, fd, limit=1 << 16):
        """Read from ``fd`` into the shared buffer; returns a view of what was read."""
        view = memoryview(self.io)[:limit]
        return view[: os.readv(fd, [view])]

    def clear(self):
        self.io[:] = bytes(len(self.io))
        self.out.clear()
        self.err.clear()


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
            quietly(os.close, fd)


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
    req = json.loads(body) if body is not None else None
    code_bytes = read_exact(3, req["code_bytes"]) if req is not None else None
    os.close(3)
    if code_bytes is None:
        os._exit(0)  # the server let this spare go unused
    set_name("sbx-run")
    set_limits(req, cfg)
    code = 0
    try:
        namespace = {"__name__": "__main__", "__builtins__": builtins}
        source = code_bytes.decode("utf-8", "surrogatepass")
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
        quietly(os.write, 4, str(code).encode())
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


def wipe(path, mode):
    """Empty a scratch folder and reset its own mode, times and xattrs, whatever the snippet
    left. Iterative, with relative names and one folder open at a time, so a tree deeper than
    the fd limit, the recursion limit or PATH_MAX is emptied too (``shutil.rmtree`` is not)."""
    quietly(os.chmod, path, 0o700)
    if quietly(os.chdir, path) is False:
        return
    names = []  # the folders entered below ``path``
    while True:
        sub = None
        for entry in quietly(lambda: list(os.scandir("."))) or ():
            if entry.is_dir(follow_symlinks=False):
                sub = sub or entry.name
            else:
                quietly(os.unlink, entry.name)
        # Every folder here is the jail user's own: chmod and chdir cannot fail but on a bug.
        if sub is not None and quietly(os.chmod, sub, 0o700) is None and quietly(os.chdir, sub) is None:
            names.append(sub)
            continue
        if not names:
            break
        os.chdir("..")
        quietly(os.rmdir, names.pop())
    for name in quietly(os.listxattr, path) or ():
        quietly(os.removexattr, path, name)
    quietly(os.utime, path, (0, 0))
    quietly(os.chmod, path, mode)


def kill_everything(pgid, own_namespace):
    """Kill the snippet and every process it left: as PID 1 of our namespace, -1 means every
    other process here and nothing outside; unsafe_local can only reach the process group."""
    quietly(os.kill, -1, signal.SIGKILL) if own_namespace else quietly(os.killpg, pgid, signal.SIGKILL)


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
            quietly(os.kill, -1, signal.SIGKILL)


def forward_code(req, proto_in, spare, bufs):
    """Pass the request and its code from the host to the spare without keeping a copy."""
    blob = json.dumps(req).encode()
    # False when the spare died before its snippet: reported from its exit status.
    alive = quietly(write_all, spare.ctrl, LEN.pack(len(blob)) + blob) is None
    left = int(req["code_bytes"])
    while left:
        chunk = bufs.read(proto_in, min(left, len(bufs.io)))
        if not chunk:
            raise EOFError("host closed the pipe mid-request")
        left -= len(chunk)
        # Keep reading after a failed write: the protocol must stay in step.
        alive = alive and quietly(write_all, spare.ctrl, chunk) is None


def execute(req, proto_in, own_namespace, spare, bufs):
    """Hand the request to the spare child and collect its output and exit status.

    Returns ``(header, parts)``; the caller answers the host, then calls :func:`cleanup`
    before the next snippet."""
    out, err = bufs.out, bufs.err
    captures = {spare.out: out, spare.err: err}
    cpu_before = children_cpu()
    start = time.monotonic()
    forward_code(req, proto_in, spare, bufs)
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
        # At most a minute per wait: poll() overflows on timeouts of weeks.
        for fd, _event in poller.poll(max(1, int(min(remaining, 60.0) * 1000))):
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
                data = bufs.read(fd)
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
                data = bufs.read(fd)
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
    if killed_by is None and exit_code == 1 and out_of_memory(err):
        killed_by = "memory"
    header = {"exit_code": exit_code, "killed_by": killed_by, "duration_ms": elapsed * 1000.0}
    header.update(out.header("out"))
    header.update(err.header("err"))
    return header, out.parts() + err.parts()


def out_of_memory(err):
    """``MemoryError`` in the last 512 bytes of stderr, searched in place (no copy)."""
    buf, end = (err.tail, err.pos or err.n_tail) if err.n_tail else (err.head, err.n_head)
    wrapped = err.n_tail == err.cap and end < 512 and buf.find(b"MemoryError", err.cap - 512 + end) >= 0
    return wrapped or buf.find(b"MemoryError", max(0, end - 512), end) >= 0


def cleanup(spare, cfg, own_namespace, bufs):
    """Kill whatever the snippet left running, reap it all, empty the scratch folders and the
    buffers that held the snippet's code and output (before the next spare is forked)."""
    kill_everything(spare.pgid, own_namespace)
    if spare.pid is not None:
        os.waitpid(spare.pid, 0)
    reap_all(own_namespace, time.monotonic() + 2.0)
    spare.close()
    bufs.clear()
    for folder, mode in cfg["scratch_modes"].items():
        wipe(folder, mode)
    quietly(os.chdir, cfg["scratch"])


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
    folders = cfg.get("scratch_dirs", [cfg["scratch"]])
    cfg["scratch_modes"] = {d: os.stat(d).st_mode & 0o7777 for d in folders if os.path.isdir(d)}
    bufs = Buffers(int(cfg["capture_bytes"]))
    spare = Spare(cfg)
    send(proto_out, {"ready": True, "pid": os.getpid(), "namespace": own_namespace, "errors": errors})
    while True:
        raw = read_exact(proto_in, LEN.size)
        body = read_exact(proto_in, LEN.unpack(raw)[0]) if raw else None
        if body is None:
            spare.close()  # the spare reads end-of-file and exits
            return 0
        header, parts = execute(json.loads(body), proto_in, own_namespace, spare, bufs)
        send(proto_out, header, parts)
        del parts
        cleanup(spare, cfg, own_namespace, bufs)
        spare = Spare(cfg)  # after the cleanup above, which would have killed it


if __name__ == "__main__":
    sys.exit(main())
