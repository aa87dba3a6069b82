"""``thingsbus.service_discovery`` of 0.2.x: the broker's URLs from the zone's SRV record."""

from .. import _native


class _Resolver(object):
    """Stands where 0.2.x had a dnspython Resolver: scripts that point it at a name server
    (``RESOLVER.nameservers = ["10.0.0.1"]``, ``RESOLVER.port = 5353``) keep working."""

    def __init__(self):
        self.nameservers = None
        self.port = 53

    def nameserver(self):
        """'IP:PORT' of the configured name server, or None for the system's."""
        if not self.nameservers:
            return None
        host = self.nameservers[0]
        if ":" in host:
            host = "[%s]" % host
        return "%s:%d" % (host, self.port)


class ServiceFinder(object):
    RESOLVER = _Resolver()

    @classmethod
    def broker_url(cls, domain):
        return cls._get_broker_url(domain, 0)

    @classmethod
    def broker_input_url(cls, domain):
        return cls._get_broker_url(domain, 1)

    @classmethod
    def _get_broker_url(cls, domain, port_offset):
        brokers = _native.find_brokers(domain, nameserver=cls.RESOLVER.nameserver())
        if not brokers:
            raise _native.ThingsbusError("no SRV record _thingsbus._tcp.%s" % domain)
        first = brokers[0]
        host = first["host"]
        # As dnspython wrote the SRV target: absolute, with its final dot.
        if not host.endswith("."):
            host += "."
        return "tcp://%s:%d" % (host, first["port"] + port_offset)
