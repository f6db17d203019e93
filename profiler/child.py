"""Child processes that are stopped whole: ncu and the Python program it profiles, a stage of the GPU
check script. `subprocess.run(timeout=...)` kills only the direct child, which would leave ncu's target
(or a stage's own children) running on the GPU and distorting what runs next; here the child starts its
own process group and the whole group is killed on timeout."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def run_group(cmd: Sequence[str], timeout_s: float | None, **popen: Any) -> subprocess.CompletedProcess:
    """`subprocess.run(cmd, timeout=timeout_s, **popen)`, but a timeout kills the child's whole process
    group before TimeoutExpired is raised. Output is captured only where `popen` asks for it."""
    if popen.pop("capture_output", False):
        popen.update(stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with subprocess.Popen(list(cmd), start_new_session=True, **popen) as proc:
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            proc.communicate()
            raise
        except BaseException:  # Ctrl-C: do not leave the group running
            kill_group(proc)
            raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the child, its process group, and every descendant, also those that started a session
    of their own (a stage's ncu, itself started by run_group): found before any dies, as the dead
    ones' children are re-parented and could no longer be traced to this child."""
    doomed = descendants(proc.pid)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    for pid in doomed:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    proc.kill()


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, read from /proc (Linux; elsewhere none: the group kill must do)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ")"
            text = stat.read_text()
            ppid = int(text[text.rindex(")") + 2 :].split()[1])
            children.setdefault(ppid, []).append(int(stat.parent.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found
