"""What the command-line modules share (the subcommands of :mod:`medview.cli` and the PACS
ones of :mod:`medview.cli_pacs`)."""

from __future__ import annotations

import sys


class _NoBar:
    """What :func:`progress_bar` returns when stderr is not a terminal: nothing to show,
    and tqdm is not even imported (a scripted one-film ``predict`` starts faster)."""

    def close(self) -> None:
        pass


def progress_bar(what: str):
    """A progress bar on stderr (tqdm), none when stderr is not a terminal; returns the
    callback for :func:`drain` and the bar (close it at the end)."""
    try:
        interactive = sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        interactive = False
    if not interactive:
        return (lambda _step: None), _NoBar()
    from tqdm import tqdm

    bar = tqdm(total=0, desc=what, file=sys.stderr, disable=None, leave=False,
               dynamic_ncols=True)

    def on_step(step) -> None:
        total = getattr(step, "total", 0)
        if total and bar.total != total:
            bar.reset(total=total)
        bar.n = getattr(step, "done", bar.n)
        bar.set_postfix_str(getattr(step, "message", "") or "", refresh=False)
        bar.refresh()

    return on_step, bar
