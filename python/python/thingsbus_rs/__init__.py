"""thingsbus for Python, on the Rust client and adaptor.

    import thingsbus_rs

    client = thingsbus_rs.Client(zone="example.org")      # or url="tcp://broker:7954"
    client.wait_filled(20)
    age, data = client.get("shop.shopbot.spacemon")

    adaptor = thingsbus_rs.Adaptor("shop.shopbot", zone="example.org")
    adaptor.send_to("spacemon", {"light": 31.8})
    adaptor.close()

A script written for thingsbus 0.2.x changes one import line: ``from thingsbus import client``
becomes ``from thingsbus_rs.compat import client`` (see ``thingsbus_rs.compat``).
"""

from typing import Any

from ._native import (
    Adaptor,
    BadRequest,
    Busy,
    Client,
    ClosedError,
    CommandError,
    Event,
    Gone,
    InvalidNamespace,
    NoAnswer,
    NoRoute,
    NotAllowed,
    Refused,
    Subscription,
    Thing,
    ThingsbusError,
    Timeout,
    __version__,
    find_brokers,
)


async def command_async(client: Client, ns: str, data: Any = None, timeout: float = 5.0) -> Any:
    """`client.command(ns, data, timeout)` for asyncio code: runs in the loop's default executor,
    so the event loop goes on while the command is out."""
    import asyncio

    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, client.command, ns, data, timeout)


__all__ = [
    "Adaptor",
    "BadRequest",
    "Busy",
    "Client",
    "ClosedError",
    "CommandError",
    "Event",
    "Gone",
    "InvalidNamespace",
    "NoAnswer",
    "NoRoute",
    "NotAllowed",
    "Refused",
    "Subscription",
    "Thing",
    "ThingsbusError",
    "Timeout",
    "__version__",
    "command_async",
    "find_brokers",
]
