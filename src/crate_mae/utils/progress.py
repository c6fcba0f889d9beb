"""Progress that reads well both on a terminal and in a log file."""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

from tqdm import tqdm


class Progress:
    """A tqdm bar on a terminal; off a terminal (batch scheduler, ``> log``) a plain line every ``every_s``
    seconds and one when closed, because tqdm would write every redraw into the file.

    ``update(n, **postfix)`` advances by ``n`` and shows ``postfix`` (e.g. ``loss=0.41``). ``enabled=False`` makes
    every call a no-op (non-zero ranks, ``run.progress=false``)."""

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str = "it",
        enabled: bool = True,
        stream: TextIO | None = None,
        every_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.enabled, self.total, self.desc, self.unit = enabled, total, desc, unit
        self.stream = stream if stream is not None else sys.stderr
        self.every_s, self.clock = every_s, clock
        self.n, self.postfix, self.bar = 0, {}, None
        if not enabled:
            return
        isatty = getattr(self.stream, "isatty", None)
        if isatty is not None and isatty():
            self.bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream, leave=False, dynamic_ncols=True)
        self.t0 = self.t_last = clock()

    def update(self, n: int = 1, **postfix) -> None:
        if not self.enabled:
            return
        self.n += n
        self.postfix = postfix
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)
        elif self.clock() - self.t_last >= self.every_s:
            self._line()

    def _line(self) -> None:
        self.t_last = now = self.clock()
        rate = self.n / max(now - self.t0, 1e-9)
        done = f"{self.n}/{self.total}" if self.total else str(self.n)
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        extra = "".join(f", {k} {v}" for k, v in self.postfix.items())
        print(f"{self.desc}: {done} {self.unit}{pct}, {rate:.3g} {self.unit}/s{extra}", file=self.stream, flush=True)

    def close(self, line: bool = True) -> None:
        """Finish; off a terminal print a last line unless ``line=False`` (the caller prints its own summary)."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        elif self.n and line:
            self._line()
        self.enabled = False
