"""A TLS terminator in front of a plain-HTTP upstream, as its own process.

    python -m tests.support.tlsproxy --port 0 --cert c.crt --key c.key --upstream 127.0.0.1:5984

prints ``READY <port>`` on stdout once listening. SIGHUP re-reads the certificate and key
(new connections get the new one, as ``nginx -s reload`` does). ``--stall`` instead
accepts TCP connections and never answers (a stalled TLS handshake).
"""

from __future__ import annotations

import argparse
import signal
import sys

from twisted.internet import reactor, ssl
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory


class _Silent(Protocol):
    pass


class _Upstream(Protocol):
    """The plain connection to the upstream; mirrors bytes to the TLS side."""

    def __init__(self, peer: _Downstream) -> None:
        self.peer = peer

    def connectionMade(self) -> None:
        self.peer.upstream = self
        self.transport.registerProducer(self.peer.transport, True)
        self.peer.transport.registerProducer(self.transport, True)
        if self.peer.pending:
            self.transport.write(b"".join(self.peer.pending))
            self.peer.pending = []
        if self.peer.closed:
            self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        self.peer.transport.write(data)

    def connectionLost(self, reason: object = None) -> None:
        self.peer.transport.loseConnection()


class _UpstreamFactory(ClientFactory):
    def __init__(self, peer: _Downstream) -> None:
        self.peer = peer

    def buildProtocol(self, addr: object) -> _Upstream:
        return _Upstream(self.peer)

    def clientConnectionFailed(self, connector: object, reason: object) -> None:
        self.peer.transport.loseConnection()


class _Downstream(Protocol):
    """The client's (TLS-terminated) connection."""

    upstream_address: tuple[str, int] = ("127.0.0.1", 5984)

    def __init__(self) -> None:
        self.upstream: _Upstream | None = None
        self.pending: list[bytes] = []
        self.closed = False

    def connectionMade(self) -> None:
        host, port = self.upstream_address
        reactor.connectTCP(host, port, _UpstreamFactory(self))

    def dataReceived(self, data: bytes) -> None:
        if self.upstream is None:
            self.pending.append(data)
        else:
            self.upstream.transport.write(data)

    def connectionLost(self, reason: object = None) -> None:
        self.closed = True
        if self.upstream is not None:
            self.upstream.transport.loseConnection()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--upstream", default="127.0.0.1:5984")
    parser.add_argument("--stall", action="store_true")
    args = parser.parse_args()

    if args.stall:
        factory: Factory = Factory.forProtocol(_Silent)
    else:
        host, port = args.upstream.rsplit(":", 1)
        _Downstream.upstream_address = (host, int(port))
        inner = Factory.forProtocol(_Downstream)

        def options() -> ssl.CertificateOptions:
            with open(args.cert, "rb") as c, open(args.key, "rb") as k:
                pem = c.read()
                key = k.read()
            cert = ssl.PrivateCertificate.loadPEM(pem + b"\n" + key)
            return cert.options()

        factory = TLSMemoryBIOFactory(options(), False, inner)

        def on_hup(*_: object) -> None:
            reactor.callFromThread(_swap)

        def _swap() -> None:
            new = TLSMemoryBIOFactory(options(), False, inner)
            listening["factory"] = new
            sys.stdout.write("RELOADED\n")
            sys.stdout.flush()

        listening = {"factory": factory}

        class Switch(Factory):
            def buildProtocol(self, addr):
                return listening["factory"].buildProtocol(addr)

            def doStart(self) -> None:
                listening["factory"].doStart()

        signal.signal(signal.SIGHUP, on_hup)
        factory = Switch()

    endpoint = TCP4ServerEndpoint(reactor, args.port, interface="127.0.0.1")

    def ready(port: object) -> None:
        sys.stdout.write(f"READY {port.getHost().port}\n")  # type: ignore[attr-defined]
        sys.stdout.flush()

    endpoint.listen(factory).addCallback(ready)
    reactor.run()


if __name__ == "__main__":
    main()
