"""Open a page in headless Chromium (Debian's `chromium`) over the DevTools protocol, the way a
reader sees it: console errors, what the page measures after layout, and a screenshot.

    with Chromium() as b:
        page = b.open(Path("report.html"), width=1280)
        page.errors            # console errors and uncaught exceptions
        page.evaluate("1 + 1") # -> 2
        page.screenshot(Path("shot.png"))
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import websocket

CANDIDATES = ("chromium", "chromium-browser", "google-chrome")


def executable() -> str | None:
    """The Chromium binary on PATH, None when it is not installed (`make browser` installs it)."""
    return next((p for p in map(shutil.which, CANDIDATES) if p), None)


class Page:
    def __init__(self, ws_url: str, timeout: float):
        self.ws = websocket.create_connection(ws_url, timeout=timeout, suppress_origin=True)
        self.timeout = timeout
        self.ids = itertools.count(1)
        self.errors: list[str] = []
        self.events: list[dict] = []

    def _note(self, msg: dict) -> None:
        m, p = msg.get("method"), msg.get("params", {})
        if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            self.errors.append(
                "console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"])
            )
        elif m == "Runtime.exceptionThrown":
            self.errors.append("exception: " + p["exceptionDetails"].get("text", ""))
        elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
            self.errors.append(
                f"log ({p['entry'].get('source')}): {p['entry'].get('text')} {p['entry'].get('url', '')}"
            )
        if m:
            self.events.append(msg)

    def call(self, method: str, **params):
        i = next(self.ids)
        self.ws.send(json.dumps({"id": i, "method": method, "params": params}))
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == i:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self._note(msg)
        raise TimeoutError(method)

    def wait_for(self, event: str) -> dict:
        for msg in self.events:
            if msg.get("method") == event:
                return msg
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            self._note(msg)
            if msg.get("method") == event:
                return msg
        raise TimeoutError(event)

    def evaluate(self, expression: str):
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(r["exceptionDetails"].get("text"))
        return r["result"].get("value")

    def screenshot(self, path: Path) -> Path:
        size = self.evaluate("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
        r = self.call(
            "Page.captureScreenshot",
            format="png",
            captureBeyondViewport=True,
            clip={"x": 0, "y": 0, "width": size[0], "height": min(size[1], 16000), "scale": 1},
        )
        path.write_bytes(base64.b64decode(r["data"]))
        return path

    def close(self) -> None:
        self.ws.close()


class Chromium:
    """A headless Chromium for one test module; every process it started ends with it."""

    def __init__(self, timeout: float = 60.0):
        self.timeout = timeout
        self.proc: subprocess.Popen | None = None
        self.profile = tempfile.mkdtemp(prefix="kpb-chromium-")

    def __enter__(self) -> Chromium:
        exe = executable()
        if exe is None:
            raise FileNotFoundError("chromium is not installed: make browser")
        argv = [
            exe,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            f"--user-data-dir={self.profile}",
            "about:blank",
        ]
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        deadline = time.monotonic() + self.timeout
        self.port = None
        while time.monotonic() < deadline and self.port is None:
            line = self.proc.stderr.readline()
            if not line and self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with status {self.proc.returncode}")
            m = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", line)
            if m:
                self.port = int(m.group(1))
        if self.port is None:
            self.__exit__(None, None, None)
            raise TimeoutError("chromium did not open its DevTools port")
        return self

    def open(self, path: Path, width: int = 1280, height: int = 900) -> Page:
        """Load file `path` at `width` CSS pixels and wait for its load event."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=self.timeout) as r:
            targets = [t for t in json.load(r) if t.get("type") == "page"]
        page = Page(targets[0]["webSocketDebuggerUrl"], self.timeout)
        for domain in ("Runtime", "Log", "Page"):
            page.call(f"{domain}.enable")
        page.call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        page.call("Page.navigate", url=Path(path).resolve().as_uri())
        page.wait_for("Page.loadEventFired")
        page.evaluate("document.fonts.ready.then(() => true)")
        return page

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(10)
        shutil.rmtree(self.profile, ignore_errors=True)
