"""PNG export of plotly figures with kaleido, which drives a headless Chromium.

`DATAPOOL_CHROMIUM` names the browser executable; unset, kaleido looks for chrome/chromium on PATH.
Starting Chromium costs seconds, so one browser session is kept per process (on its own event-loop
thread) and reused by later reports; it is closed at exit, and replaced after any failure.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import threading
from collections.abc import Coroutine
from typing import Any

import plotly.graph_objects as go

BROWSER_ENV = "DATAPOOL_CHROMIUM"
OPEN_TIMEOUT_S = 120.0
FIGURE_TIMEOUT_S = 180.0


class FiguresUnavailable(RuntimeError):
    """No browser for kaleido (or it failed): the report is written without figures."""


def browser_path() -> str | None:
    """The browser kaleido should use: $DATAPOOL_CHROMIUM if set, else None (kaleido searches PATH)."""
    return os.environ.get(BROWSER_ENV) or None


class _Session:
    """An open kaleido.Kaleido on a private event loop thread."""

    def __init__(self, path: str | None) -> None:
        import kaleido

        self.path = path
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="kaleido", daemon=True)
        self.thread.start()
        options: dict[str, Any] = {"n": 1, "timeout": FIGURE_TIMEOUT_S, "mathjax": False}
        if path:
            options["path"] = path
        try:
            self.kaleido = self._call(self._open(kaleido, options), OPEN_TIMEOUT_S)
        except BaseException:
            self._stop_loop()
            raise

    @staticmethod
    async def _open(kaleido: Any, options: dict[str, Any]) -> Any:
        k = kaleido.Kaleido(**options)
        await k.__aenter__()
        return k

    def _call(self, coro: Coroutine[Any, Any, Any], timeout: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def png(self, fig: go.Figure, width: int, height: int) -> bytes:
        opts = {"format": "png", "width": width, "height": height, "scale": 2}
        return self._call(self.kaleido.calc_fig(fig, opts=opts), FIGURE_TIMEOUT_S)

    def close(self) -> None:
        if os.getpid() == self.pid:
            with contextlib.suppress(Exception):  # closing a broken browser is best effort
                self._call(self.kaleido.__aexit__(None, None, None), 30)
        self._stop_loop()

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


_lock = threading.Lock()
_session: _Session | None = None


def _close_session() -> None:
    global _session
    with _lock:
        if _session is not None:
            _session.close()
            _session = None


atexit.register(_close_session)


def render_pngs(figures: dict[str, tuple[go.Figure, int, int]], *, browser: str | None = None) -> dict[str, bytes]:
    """PNG of every figure (name -> (figure, width px, height px)); FiguresUnavailable without a browser."""
    global _session
    path = browser or browser_path()
    if path is not None and not os.path.exists(path):
        raise FiguresUnavailable(f"no browser at {BROWSER_ENV}={path}")
    with _lock:
        if _session is not None and (_session.path != path or _session.pid != os.getpid()):
            _session.close()
            _session = None
        try:
            if _session is None:
                _session = _Session(path)
            return {name: _session.png(fig, w, h) for name, (fig, w, h) in figures.items()}
        except Exception as exc:  # noqa: BLE001 - any browser failure degrades to a PDF without figures
            if _session is not None:
                _session.close()
                _session = None
            reason = str(exc).split(". ")[0] or type(exc).__name__
            raise FiguresUnavailable(f"kaleido could not render with Chromium ({reason})") from exc
