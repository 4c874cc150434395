"""A persistent interpreter per trajectory, by replay (``plugin_config.python.persistent_session``).

Off by default: SimpleTIR runs every snippet in a fresh interpreter (a fresh fork of a warm
worker), and so does this tool unless the option is on. With it on, a trajectory's session
remembers the code of its earlier calls, and each new call runs as one snippet that first
*replays* them silently (stdout and stderr discarded, an exception ending that cell as it
would in a notebook) and then runs the new code. Names, functions, imports and files written
under /tmp by earlier cells are therefore there again, and nothing of the sandbox changes: every
call is still one snippet in a fresh forked child, under the same limits and isolation, and no
worker is held between calls.

What replay does not give, and a real long-lived interpreter would: state that is not a
function of the code (random draws reseeded per call, the clock, anything read from outside)
is computed afresh; replayed cells count against the call's time limit; output a cell writes
to file descriptors directly (``os.write(1, ...)``) is not silenced. A call that timed out or
was killed is not replayed later (it would only time out again).

Tracebacks of the new code read as without a session: file ``<snippet>``, its own line numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from simpletir.core.types import ToolResult

# Defined, called and deleted by the generated program; everything else it needs is local, so the
# snippet's namespace holds only what the cells themselves defined.
_RUNNER = """\
def __simpletir_session(cells, code):
    import io, linecache, sys, traceback
    del globals()["__simpletir_session"]

    class Discard(io.TextIOBase):
        def writable(self):
            return True

        def write(self, text):
            return len(text)

    out, err = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = Discard()
    try:
        for cell in cells:
            try:
                exec(compile(cell, "<replay>", "exec"), globals())
            except BaseException:
                pass
    finally:
        sys.stdout, sys.stderr = out, err
    linecache.cache["<snippet>"] = (len(code), None, code.splitlines(True), "<snippet>")
    try:
        compiled = compile(code, "<snippet>", "exec")
        exec(compiled, globals())
    except SystemExit:
        raise
    except BaseException as exc:
        tb = exc.__traceback__
        traceback.print_exception(type(exc), exc, tb.tb_next if tb else None)
        raise SystemExit(1) from None
"""


@dataclass
class PythonSession:
    """One trajectory's earlier cells, replayed before each new call."""

    cells: list[str] = field(default_factory=list)

    def program(self, code: str) -> str:
        """The snippet to run for ``code``: replay of the earlier cells, then ``code`` itself."""
        if not self.cells:
            return code
        return f"{_RUNNER}__simpletir_session({self.cells!r}, {code!r})\n"

    def record(self, code: str, result: ToolResult) -> None:
        """Remember ``code`` for later calls unless it timed out or was killed."""
        if result.timed_out or result.killed_by is not None or result.error is not None:
            return
        self.cells.append(code)

    def close(self) -> None:
        self.cells.clear()
