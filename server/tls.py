"""TLS, and mTLS with a client CA, through grpcio's own credentials; certificates reloaded without a restart.

grpc calls ``fetch`` before each new connection's handshake: when the files changed (a rotation), the new
certificate and key are checked to load together and then serve new connections, while connections
already open keep theirs, so a rotation drops none. A pair that does not load (say the certificate was
replaced and its key not yet) keeps the one in force until it does.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
from pathlib import Path

import grpc

log = logging.getLogger("visionsearch.tls")


class TlsConfigError(ValueError):
    """Certificate files the server cannot serve with; the message says which and why."""


def _check(cert: Path, key: Path, client_ca: Path | None) -> tuple[bytes, bytes, bytes | None]:
    try:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
    except FileNotFoundError as e:
        raise TlsConfigError(f"TLS file {e.filename} does not exist") from None
    except (ssl.SSLError, OSError) as e:
        raise TlsConfigError(
            f"TLS certificate {cert} and key {key} do not load together ({e}): give the PEM certificate "
            "chain and its unencrypted PEM private key"
        ) from None
    ca = None
    if client_ca is not None:
        try:
            ctx.load_verify_locations(cafile=str(client_ca))
        except (ssl.SSLError, OSError) as e:
            raise TlsConfigError(
                f"client CA {client_ca} does not load ({e}): give PEM CA certificates"
            ) from None
        ca = client_ca.read_bytes()
    return cert.read_bytes(), key.read_bytes(), ca


class CertificateFiles:
    def __init__(self, cert: str, key: str, client_ca: str = "") -> None:
        self.cert, self.key = Path(cert), Path(key)
        self.client_ca = Path(client_ca) if client_ca else None
        self._stamp = self._stamps()
        self._config = self._load()  # refuse to start with files that do not load
        self.reloads = 0

    def _stamps(self) -> tuple[tuple[int, int], ...]:
        out = []
        for p in (self.cert, self.key, self.client_ca):
            try:
                st = p.stat() if p is not None else None
                out.append((st.st_mtime_ns, st.st_size) if st else (0, 0))
            except OSError:
                out.append((-1, -1))
        return tuple(out)

    def _load(self) -> grpc.ServerCertificateConfiguration:
        cert, key, ca = _check(self.cert, self.key, self.client_ca)
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        stamp = self._stamps()
        if stamp == self._stamp:
            return None
        try:
            config = self._load()
        except TlsConfigError as e:
            log.warning("TLS files changed but do not load yet; serving the previous certificate: %s", e)
            return None
        self._stamp, self._config = stamp, config
        self.reloads += 1
        log.info("TLS certificate reloaded from %s", self.cert)
        return config

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._config, self.fetch, require_client_authentication=self.client_ca is not None
        )


class UnsafeBind(ValueError):
    """A bind beyond this machine with neither TLS and keys nor an explicit --insecure."""


def is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def check_exposure(address: str, *, tls: bool, keys: bool, insecure: bool) -> None:
    if is_loopback(address) or insecure or (tls and keys):
        return
    missing = " and ".join(
        w for w, ok in (("TLS (--tls-cert, --tls-key)", tls), ("API keys (--api-keys)", keys)) if not ok
    )
    raise UnsafeBind(
        f"refusing to listen on {address} without {missing}: anyone who can reach it could read, overwrite "
        "or drop every collection. Configure them (VISIONSEARCH_TLS_CERT, VISIONSEARCH_TLS_KEY, "
        "VISIONSEARCH_API_KEYS), listen on 127.0.0.1, or pass --insecure on a network you trust"
    )
