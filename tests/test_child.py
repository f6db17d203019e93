"""run_group: a timeout kills the child's grandchildren too (the ncu target, a stage's own children)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from profiler.child import run_group


@pytest.mark.parametrize("own_session", [False, True])
def test_timeout_kills_the_whole_process_group(tmp_path: Path, own_session: bool) -> None:
    pid_file = tmp_path / "grandchild.pid"
    # the child starts a grandchild that would outlive it, then waits; in its own session (as a stage
    # starts ncu through run_group) the grandchild is outside the child's process group
    script = (
        "import subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], "
        f"start_new_session={own_session})\n"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(60)\n"
    )
    start = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        run_group([sys.executable, "-c", script], timeout_s=3)
    assert time.monotonic() - start < 30
    grandchild = int(pid_file.read_text())
    for _ in range(50):  # the kernel reaps it shortly after SIGKILL
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            break
        # a zombie still answers kill(0): it is dead once its state is Z
        stat = Path(f"/proc/{grandchild}/stat")
        if stat.exists() and stat.read_text().split()[2] == "Z":
            break
        time.sleep(0.1)
    else:
        pytest.fail("the grandchild survived the timeout")


def test_output_and_return_code() -> None:
    done = run_group(
        [sys.executable, "-c", "import sys; print('out'); sys.exit(3)"],
        timeout_s=30,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 3 and done.stdout.strip() == "out"
