"""Open a page in a real headless Chromium (Debian's) and report what a person would see.

A tiny Chrome DevTools Protocol client over `websockets`: it collects console errors and uncaught
exceptions, checks every image decoded, and can take a screenshot. Chromium is started with the
flags this closed network needs (no background networking, no sync, no component updates).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import websockets

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,900",
]

_IMAGES_JS = """JSON.stringify({
  images: Array.from(document.images).map(i => ({complete: i.complete, width: i.naturalWidth,
                                                 alt: i.alt})),
  rows: document.querySelectorAll('#summary tbody tr').length,
  title: document.title,
})"""


@dataclass
class PageReport:
    """What the browser saw: console errors, exceptions, images and table rows."""

    errors: list[str] = field(default_factory=list)
    images: list[dict[str, Any]] = field(default_factory=list)
    rows: int = 0
    title: str = ""
    screenshot: bytes | None = None


def chromium_binary() -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        raise RuntimeError("chromium is not installed (apt-get install chromium; .ci/run does)")
    return binary


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _page_socket(port: int, deadline: float) -> str:
    while time.monotonic() < deadline:
        try:
            targets = httpx.get(f"http://127.0.0.1:{port}/json", timeout=1).json()
            pages = [t for t in targets if t.get("type") == "page"]
            if pages:
                return str(pages[0]["webSocketDebuggerUrl"])
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.2)
    raise TimeoutError("chromium did not open its DevTools endpoint")


async def _inspect(ws_url: str, url: str, screenshot: bool, timeout_s: float) -> PageReport:
    report = PageReport()
    ids = itertools.count(1)
    async with websockets.connect(ws_url, max_size=None) as ws:

        async def call(method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
            call_id = next(ids)
            await ws.send(json.dumps({"id": call_id, "method": method, "params": params or {}}))
            while True:
                message = json.loads(await ws.recv())
                if message.get("id") == call_id:
                    return message.get("result", {})
                _collect(report, message)

        for domain in ("Runtime.enable", "Log.enable", "Page.enable"):
            await call(domain)
        await call("Page.navigate", {"url": url})
        loaded = False
        deadline = time.monotonic() + timeout_s
        while not loaded and time.monotonic() < deadline:
            message = json.loads(await asyncio.wait_for(ws.recv(), timeout_s))
            loaded = message.get("method") == "Page.loadEventFired"
            _collect(report, message)
        result = await call("Runtime.evaluate", {"expression": _IMAGES_JS, "returnByValue": True})
        state = json.loads(result["result"]["value"])
        report.images, report.rows, report.title = state["images"], state["rows"], state["title"]
        if screenshot:
            shot = await call("Page.captureScreenshot", {"format": "png"})
            report.screenshot = base64.b64decode(shot["data"])
    return report


def _collect(report: PageReport, message: dict[str, Any]) -> None:
    method, params = message.get("method"), message.get("params", {})
    if method == "Runtime.exceptionThrown":
        report.errors.append(params["exceptionDetails"].get("text", "exception"))
    elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
        report.errors.append(" ".join(str(a.get("value")) for a in params.get("args", [])))
    elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
        report.errors.append(params["entry"].get("text", "log error"))


def inspect_page(url: str, *, screenshot: bool = False, timeout_s: float = 30.0) -> PageReport:
    """Load `url` in a fresh headless Chromium and return what it saw."""
    port = _free_port()
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    process = subprocess.Popen(
        [
            chromium_binary(),
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--remote-debugging-port={port}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: its helper processes stop with it
    )
    try:
        ws_url = _page_socket(port, time.monotonic() + timeout_s)
        return asyncio.run(_inspect(ws_url, url, screenshot, timeout_s))
    finally:
        _stop_group(process)
        # Chromium's helpers may still flush into the profile as they exit: best effort.
        shutil.rmtree(profile, ignore_errors=True)


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def file_url(path: Path) -> str:
    return path.resolve().as_uri()
