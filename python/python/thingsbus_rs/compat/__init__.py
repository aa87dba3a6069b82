"""The thingsbus 0.2.x API on the Rust client and adaptor.

A 0.2.x script changes one import line and nothing else::

    from thingsbus import client, adaptor          # before
    from thingsbus_rs.compat import client, adaptor  # after

    import thingsbus.client                         # before (then thingsbus.client.Client(...))
    import thingsbus_rs.compat as thingsbus         # after

What differs, on purpose: the client learns the directory at once from the broker's snapshot
endpoint (instead of waiting for the periodic snapshot) and reconnects by itself; a namespace
that is not valid raises ``BadNamespaceException`` from the constructor instead of killing the
background thread silently; ``Adaptor.stop()`` delivers what is queued (for up to 2 seconds)
before it stops. A snapshot value older than the one the mirror holds is not applied, so it
sends no ``F_SNAPSHOT`` event (0.2.x went back to the older value).
"""

from . import thing, service_discovery, client, adaptor  # noqa: F401

__all__ = ["adaptor", "client", "service_discovery", "thing"]
