"""TLS for the simulator: the server's SSL context (with ALPN for HTTP/2), and for tests a
throwaway CA with a server certificate for localhost, written to PEM files.

`make_test_certificates` needs `trustme` (the `test` extra); it is imported only when
called, so the simulator itself does not depend on it. A child process (the daemon under
test) trusts the CA through `SSL_CERT_FILE=<ca_pem>`, which httpx honours."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOSTNAMES = ("localhost", "127.0.0.1", "::1")


def server_context(
    certfile: str | Path, keyfile: str | Path | None, http2: bool
) -> ssl.SSLContext:
    """TLS 1.2+ (HTTP/2 requires it). ALPN offers "h2" first when `http2`, and always
    "http/1.1", so a client that does not speak h2 still connects on the same port."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(certfile), None if keyfile is None else str(keyfile))
    context.set_alpn_protocols(["h2", "http/1.1"] if http2 else ["http/1.1"])
    return context


@dataclass(frozen=True)
class TestCertificates:
    """PEM files: the server's certificate chain and key, and the CA to trust."""

    __test__ = False  # not a pytest test class despite the name

    certfile: Path
    keyfile: Path
    ca_pem: Path

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts (only) the test CA."""
        return ssl.create_default_context(cafile=str(self.ca_pem))


def make_test_certificates(
    directory: str | Path, hostnames: tuple[str, ...] = DEFAULT_HOSTNAMES
) -> TestCertificates:
    """A fresh CA and a server certificate for `hostnames`, written to `directory` as
    server.pem (leaf + chain), server.key and ca.pem."""
    import trustme  # a test dependency: imported only here

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    leaf = ca.issue_cert(*hostnames)
    certs = TestCertificates(
        certfile=directory / "server.pem",
        keyfile=directory / "server.key",
        ca_pem=directory / "ca.pem",
    )
    leaf.private_key_pem.write_to_path(str(certs.keyfile))
    with certs.certfile.open("wb") as out:
        for blob in leaf.cert_chain_pems:
            out.write(blob.bytes())
    ca.cert_pem.write_to_path(str(certs.ca_pem))
    return certs
