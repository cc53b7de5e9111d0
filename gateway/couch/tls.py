"""TLS to CouchDB: trusted roots from a PEM file, and a handshake that is part of connecting.

Twisted's ``wrapClientTLS`` endpoint counts a connection made once TCP is: the request
is then written into the TLS buffer and fails with the handshake as
``ResponseNeverReceived``, so a refused certificate looked like a dead server, and a
write that never left like one whose answer was lost. :class:`HandshakeEndpoint`
connects only once the handshake is done (and the host name verified), within a
deadline, and fails with :class:`TLSHandshakeFailed` otherwise: a ``ConnectError``, so
nothing is taken to have been sent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet._sslverify import IOpenSSLTrustRoot
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import connectionDone
from twisted.internet.ssl import Certificate, optionsForClientTLS, trustRootFromCertificates
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.web.client import BrowserLikePolicyForHTTPS
from zope.interface import implementer

__all__ = ["HANDSHAKE_SECONDS", "HandshakeEndpoint", "TLSHandshakeFailed", "client_tls",
           "load_trust_root"]

#: Seconds a TLS handshake may take, as long as a TCP connect may.
HANDSHAKE_SECONDS = 10.0
_PEM_END = b"-----END CERTIFICATE-----"


class TLSHandshakeFailed(ConnectError):
    """The TLS handshake with CouchDB failed or did not finish: nothing was sent.

    Attributes:
        refused: The peer's certificate (or the protocol it offered) was refused:
            waiting will not change that, a configuration must.
        detail: What went wrong, for people.
    """

    def __init__(self, detail: str, *, refused: bool) -> None:
        super().__init__(string=detail)  # type: ignore[no-untyped-call]
        self.detail = detail
        self.refused = refused


def load_trust_root(path: str) -> IOpenSSLTrustRoot:
    """The certificates of a PEM bundle, as the only roots to trust.

    Read once, at start-up (not on the reactor's hot path).

    Raises:
        ValueError: The file cannot be read or holds no certificate.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    certificates = []
    for block in data.split(_PEM_END)[:-1]:
        try:
            certificates.append(Certificate.loadPEM(block + _PEM_END + b"\n"))
        except (SSL.Error, ValueError) as exc:
            raise ValueError(f"{path} holds a certificate that does not parse: {exc}") from None
    if not certificates:
        raise ValueError(f"{path} holds no PEM certificate")
    root: IOpenSSLTrustRoot = trustRootFromCertificates(certificates)  # type: ignore[no-untyped-call]
    return root


def client_tls(host: bytes, trust_root: IOpenSSLTrustRoot | None
               ) -> IOpenSSLClientConnectionCreator:
    """How to open TLS to ``host``: the system's roots, or only ``trust_root``'s."""
    if trust_root is None:
        creator: IOpenSSLClientConnectionCreator = BrowserLikePolicyForHTTPS(
        ).creatorForNetloc(host, 443)
        return creator
    return optionsForClientTLS(host.decode("idna"), trustRoot=trust_root)


def _describe(reason: Failure) -> tuple[str, bool]:
    """A handshake failure, for people, and whether it is a refusal (see above)."""
    error = reason.value
    if isinstance(error, VerificationError):
        return "CouchDB's certificate is not for the host in COUCHDB_URL", True
    if isinstance(error, SSL.Error):
        said = [part[2] for part in (error.args[0] if error.args else [])
                if isinstance(part, tuple) and len(part) == 3 and part[2]]
        return f"the TLS handshake with CouchDB failed: {'; '.join(said) or error}", True
    return f"CouchDB closed the connection during the TLS handshake ({type(error).__name__})", False


@implementer(IHandshakeListener)
class _Watch(ProtocolWrapper):
    """Between TLS and the HTTP protocol: tells when the handshake is over."""

    factory: _WatchingFactory
    transport: Any

    def handshakeCompleted(self) -> None:  # noqa: N802 - Twisted's name
        # Twisted 24.7 (the floor) checks the host name after the handshake and aborts
        # the connection here; 26.x fails the handshake itself (connectionLost).
        if not self.transport.disconnecting:
            self.factory.done(self, None)

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        self.factory.done(self, reason)
        super().connectionLost(reason)  # type: ignore[no-untyped-call]


class _WatchingFactory(WrappingFactory):
    protocol = _Watch
    noisy = False  # no "Starting factory" line per upstream connection

    def __init__(self, wrapped: IProtocolFactory, ready: Deferred[IProtocol]) -> None:
        super().__init__(wrapped)  # type: ignore[no-untyped-call]
        self.ready = ready

    def done(self, watch: _Watch, failure: Failure | None) -> None:
        if self.ready.called:
            return
        if failure is None:
            self.ready.callback(watch.wrappedProtocol)
        else:
            detail, refused = _describe(failure)
            self.ready.errback(TLSHandshakeFailed(detail, refused=refused))


@implementer(IStreamClientEndpoint)
class HandshakeEndpoint:
    """A TLS client endpoint whose ``connect`` fires once the handshake is done.

    Args:
        clock: For the handshake's deadline.
        tcp: The plain endpoint to connect over.
        creator: The TLS settings (see :func:`client_tls`).
        timeout: Seconds the handshake may take.
    """

    def __init__(self, clock: IReactorTime, tcp: IStreamClientEndpoint,
                 creator: IOpenSSLClientConnectionCreator,
                 timeout: float = HANDSHAKE_SECONDS) -> None:
        self._clock = clock
        self._tcp = tcp
        self._creator = creator
        self._timeout = timeout

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:  # noqa: N803
        """Connect, then shake hands; fire with ``protocolFactory``'s protocol."""
        tls_protocols: list[Any] = []

        def give_up(detail: str) -> None:
            # Failed first, so that the cancelled TCP connect cannot fail it otherwise.
            if not ready.called:
                ready.errback(TLSHandshakeFailed(detail, refused=False))
            for tls in tls_protocols:
                tls.abortConnection()
            connecting.cancel()

        ready: Deferred[IProtocol] = Deferred(
            lambda _: give_up("cancelled during the TLS handshake with CouchDB"))
        watching = _WatchingFactory(protocolFactory, ready)
        connecting = self._tcp.connect(TLSMemoryBIOFactory(self._creator, True, watching))

        def connected(tls: Any) -> None:
            tls_protocols.append(tls)

        def failed(failure: Failure) -> None:
            if not ready.called:
                ready.errback(failure)

        connecting.addCallbacks(connected, failed)

        deadline = self._clock.callLater(
            self._timeout, give_up,
            f"the TLS handshake with CouchDB did not finish within {self._timeout:g} s")

        def disarm(result: object) -> object:
            if deadline.active():
                deadline.cancel()
            return result

        return ready.addBoth(disarm)
