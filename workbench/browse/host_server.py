"""FiftyOne's App server, answering only requests addressed to it by name (a Host check).

FiftyOne serves any file the server can read through `/media?filepath=` and
ignores the Host header, so a web page whose domain is re-pointed at
127.0.0.1 (DNS rebinding) could read files while `wb browse` runs. This module
runs the same server application as FiftyOne's own `server/main.py`, wrapped
in Starlette's `TrustedHostMiddleware`: requests whose Host is not a loopback
name or the address the App was bound to get 400. `wb browse` starts it
before asking FiftyOne for a session, which then connects to it instead of
starting its own. Run as `python -m workbench.browse.host_server --port N
--address A`; it exits when its parent closes its stdin, as FiftyOne's
services do.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")
WILDCARDS = ("0.0.0.0", "::", "")


def allowed_hosts(address: str) -> list[str]:
    """Host names the App answers to: loopback names and the bound address; anything for a
    wildcard bind (the user asked to serve the network, which names this machine many ways)."""
    if address in WILDCARDS:
        return ["*"]
    return sorted({*LOOPBACK_NAMES, address, f"[{address}]" if ":" in address else address})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--address", default="127.0.0.1")
    args = parser.parse_args(argv)
    os.environ.pop("FIFTYONE_DISABLE_SERVICES", None)
    os.environ["FIFTYONE_SERVER"] = "1"
    from fiftyone.server.app import app
    from fiftyone.server.events import set_port
    from hypercorn.asyncio import serve
    from hypercorn.config import Config
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    config = Config()
    config.bind = [f"{args.address}:{args.port}"]
    set_port(args.port)
    stop = asyncio.Event()

    async def run() -> None:
        loop = asyncio.get_running_loop()
        # the parent closing our stdin (or exiting) is the signal to stop
        threading.Thread(target=lambda: (sys.stdin.read(), loop.call_soon_threadsafe(stop.set)),
                         daemon=True).start()
        await serve(TrustedHostMiddleware(app, allowed_hosts=allowed_hosts(args.address)), config,
                    shutdown_trigger=stop.wait)

    asyncio.run(run())


if __name__ == "__main__":
    main()
