"""Open a ``report.html`` in headless Chromium: console errors, figures that failed to load, a screenshot.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: JSON messages ending in
a NUL byte on file descriptors 3 and 4), so nothing but the ``chromium`` binary is needed (Debian package
``chromium``). The page is loaded from ``file://``; the check collects

* console errors: ``console.error``/``console.assert`` calls, uncaught exceptions, and the browser's own
  error log entries (a resource that failed to load, blocked content, ...);
* every ``<img>``: loaded means ``complete`` with a natural width > 0;

and optionally writes a PNG screenshot of the page's top ``height`` CSS pixels at ``width``.

Flags follow the project's rule for a sandbox without network: ``--headless --no-sandbox --disable-gpu
--disable-quic --no-first-run --disable-background-networking --disable-component-update --disable-sync`` and
a fresh ``--user-data-dir``.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["BrowserCheck", "find_chromium", "open_in_chromium", "CHROMIUM_FLAGS"]

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


@dataclass
class BrowserCheck:
    """What :func:`open_in_chromium` saw.

    Attributes:
        console_errors: one line per console error, uncaught exception or error log entry.
        images: ``[{"src", "loaded", "width", "height"}]`` for every ``<img>`` in document order.
        title: the page title. screenshot: the PNG written, if any.
    """

    console_errors: list[str] = field(default_factory=list)
    images: list[dict[str, Any]] = field(default_factory=list)
    title: str = ""
    screenshot: Path | None = None

    @property
    def broken_images(self) -> list[str]:
        """``src`` of every image that did not load."""
        return [im["src"] for im in self.images if not im["loaded"]]

    @property
    def ok(self) -> bool:
        """No console error and every image loaded."""
        return not self.console_errors and not self.broken_images


def find_chromium() -> str | None:
    """Path of a Chromium binary (``$CHROMIUM``, ``chromium``, ``chromium-browser``, ``google-chrome``) or None."""
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name) if name else None
        if found:
            # Debian's /usr/bin/chromium is a shell launcher; the binary it starts takes the pipe directly
            real = Path("/usr/lib/chromium/chromium")
            return str(real) if found == "/usr/bin/chromium" and real.is_file() else found
    return None


class _Pipe:
    """DevTools protocol over Chromium's debugging pipe (we write fd 3, read fd 4 of the child)."""

    def __init__(self, binary: str, profile: str) -> None:
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        args = [
            binary,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            "--remote-debugging-pipe",
            "about:blank",
        ]

        def bind_fds() -> None:
            # the child's fds 3 and 4 are the pipe ends Chromium expects; dup2 makes them survive exec, and
            # every other descriptor Python opened is close-on-exec (so close_fds is not needed)
            # (copies first: either end may itself be fd 3 or 4)
            read_end, write_end = os.dup(to_child_r), os.dup(from_child_w)
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)

        self.process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=False,
            preexec_fn=bind_fds,
        )  # noqa: PLW1509 - no threads here
        os.close(to_child_r)
        os.close(from_child_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("Chromium did not answer in time")
            ready, _, _ = select.select([self._from_child], [], [], left)
            if ready:
                chunk = os.read(self._from_child, 1 << 16)
                if not chunk:
                    raise RuntimeError("Chromium closed the debugging pipe (did it start?)")
                self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def send(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        session: str | None = None,
        timeout: float = 60.0,
    ) -> dict[str, Any]:
        """Send one command and return its result (events that arrive meanwhile are kept in :attr:`events`)."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._to_child, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"Chromium: {method} failed: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 60.0) -> dict[str, Any]:
        """The first event called ``method`` (already received or still to come)."""
        for event in self.events:
            if event.get("method") == method:
                return event
        deadline = time.monotonic() + timeout
        while True:
            event = self._read_message(deadline)
            self.events.append(event)
            if event.get("method") == method:
                return event

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for fd in (self._to_child, self._from_child):
            try:
                os.close(fd)
            except OSError:
                pass


_IMAGES_JS = """JSON.stringify(Array.from(document.images).map(im => ({
    src: im.getAttribute('src'), loaded: im.complete && im.naturalWidth > 0,
    width: im.naturalWidth, height: im.naturalHeight})))"""


def _describe(event: dict[str, Any]) -> str | None:
    """One line for an event that is an error on the page, else None."""
    method, params = event.get("method"), event.get("params", {})
    if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
        text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
        return f"console.{params['type']}: {text}"
    if method == "Runtime.exceptionThrown":
        details = params.get("exceptionDetails", {})
        return f"uncaught: {details.get('exception', {}).get('description') or details.get('text')}"
    if method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
        entry = params["entry"]
        return f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}".strip()
    return None


def open_in_chromium(
    page: str | os.PathLike,
    screenshot: str | os.PathLike | None = None,
    width: int = 1280,
    height: int = 2000,
    settle_seconds: float = 0.5,
    timeout: float = 60.0,
) -> BrowserCheck:
    """Load ``page`` (an HTML file) in headless Chromium and report console errors and images.

    Args:
        page: the HTML file. screenshot: where to write a PNG of the top ``height`` CSS pixels (None: none).
        width, height: the viewport in CSS pixels.
        settle_seconds: wait after the load event for late console messages.
        timeout: seconds for each step.

    Returns:
        a :class:`BrowserCheck`.

    Raises:
        FileNotFoundError: ``page`` does not exist, or no Chromium binary is installed.
        TimeoutError, RuntimeError: Chromium did not start or answer.
    """
    path = Path(page).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such page")
    binary = find_chromium()
    if binary is None:
        raise FileNotFoundError("no Chromium binary found (apt-get install chromium, or set $CHROMIUM)")
    with tempfile.TemporaryDirectory(prefix="mri-anomaly-chromium-") as profile:
        pipe = _Pipe(binary, profile)
        try:
            targets = pipe.send("Target.getTargets", timeout=timeout)["targetInfos"]
            target = next(t["targetId"] for t in targets if t["type"] == "page")
            session = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Runtime", "Log", "Page"):
                pipe.send(f"{domain}.enable", session=session)
            pipe.send(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
                session=session,
            )
            pipe.events.clear()
            pipe.send("Page.navigate", {"url": path.as_uri()}, session=session, timeout=timeout)
            pipe.wait_for("Page.loadEventFired", timeout=timeout)
            time.sleep(settle_seconds)
            images = json.loads(
                pipe.send(
                    "Runtime.evaluate", {"expression": _IMAGES_JS, "returnByValue": True}, session=session
                )["result"]["value"]
            )
            title = pipe.send(
                "Runtime.evaluate", {"expression": "document.title", "returnByValue": True}, session=session
            )["result"].get("value", "")
            written = None
            if screenshot is not None:
                data = pipe.send(
                    "Page.captureScreenshot", {"format": "png"}, session=session, timeout=timeout
                )["data"]
                written = Path(screenshot)
                written.parent.mkdir(parents=True, exist_ok=True)
                written.write_bytes(base64.b64decode(data))
            errors = [line for line in map(_describe, pipe.events) if line is not None]
        finally:
            pipe.close()
    return BrowserCheck(console_errors=errors, images=images, title=title, screenshot=written)
