"""PNG plots of a run: the learning curve that MBPO and PETS write, and the figure plumbing
that :func:`mbpo_fast.compare.plot` shares with it.

matplotlib is imported on the first plot, never at import time (``mbpo_fast.compare`` and
the trainers import this module without loading it).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from .io import PathLike, atomic_write

__all__ = ["figure", "save_png", "write_learning_curve"]


def figure(figsize: tuple[float, float], dpi: int) -> Any:
    """A new off-screen matplotlib Figure (the Agg backend unless one is already chosen).
    Raises ImportError without matplotlib."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, dpi=dpi)


def save_png(fig: Any, path: PathLike) -> None:
    """Renders `fig` as PNG and writes it atomically to `path`."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def write_learning_curve(path: PathLike, x: Sequence[float], y: Sequence[float], *, label: str,
                         xlabel: str, title: str, sd: Sequence[float] | None = None,
                         shade: tuple[float, float, str] | None = None) -> bool:
    """Writes ``learning_curve.png``: return `y` against `x` (markers), a ±`sd` band when
    given, and `shade` = (x0, x1, label) as a grey span (e.g. the random-action phase).
    Returns False, writing nothing, without matplotlib (a log is never worth dying for)."""
    try:
        fig = figure((6, 4), 100)
    except ImportError:
        return False
    ax = fig.add_subplot()
    ax.plot(x, y, marker="o", ms=3, label=label)
    if sd is not None:
        y, sd = np.asarray(y, dtype=np.float64), np.asarray(sd, dtype=np.float64)
        ax.fill_between(x, y - sd, y + sd, alpha=0.25)
    if shade is not None:
        ax.axvspan(shade[0], shade[1], color="grey", alpha=0.2, label=shade[2])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    save_png(fig, path)
    return True
