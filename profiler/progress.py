"""The sweep's progress display: one rich bar per batch size on stderr (warm-up, profile, steady)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

# share of a batch size's bar each phase fills
PHASES = {"warm-up": (0.0, 0.2), "profile": (0.2, 0.5), "steady": (0.5, 1.0)}


@contextlib.contextmanager
def progress_bar(enabled: bool) -> Iterator[Callable[[int], Callable[[str, float], None]]]:
    """Yields new_task(batch) -> update(phase, fraction): one rich bar per batch size."""
    if not enabled:
        yield lambda batch: lambda phase, frac: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("[bold]batch {task.fields[batch]:>6}[/] {task.description:<8}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=False,
    ) as bar:

        def new_task(batch: int) -> Callable[[str, float], None]:
            task = bar.add_task("start", total=1.0, batch=batch)

            def update(phase: str, frac: float) -> None:
                lo, hi = PHASES.get(phase, (0.0, 1.0))
                bar.update(task, completed=lo + (hi - lo) * frac, description=phase)

            return update

        yield new_task
