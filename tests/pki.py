"""Test certificates, made fresh by each test session with ``cryptography`` (no key is ever committed): a CA,
a server certificate for 127.0.0.1/localhost, a client certificate, and the bad ones a client or server
must refuse (expired, self-signed, for another host, from another CA)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOW = dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path

    @property
    def cert_pem(self) -> bytes:
        return self.cert.read_bytes()

    @property
    def key_pem(self) -> bytes:
        return self.key.read_bytes()


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(folder: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Pair:
    pair = Pair(folder / f"{stem}.pem", folder / f"{stem}-key.pem")
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pair.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    pair.key.chmod(0o600)
    return pair


class Authority:
    def __init__(self, folder: Path, name: str) -> None:
        self.folder = folder
        self.key = _key()
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - dt.timedelta(days=1))
            .not_valid_after(NOW + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.pair = _write(folder, name, self.cert, self.key)

    def issue(
        self,
        stem: str,
        *,
        hosts: tuple[str, ...] = ("localhost", "127.0.0.1"),
        client: bool = False,
        expired: bool = False,
    ) -> Pair:
        key = _key()
        sans: list[x509.GeneralName] = []
        for h in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                sans.append(x509.DNSName(h))
        start, end = (NOW - dt.timedelta(days=10), NOW - dt.timedelta(days=1)) if expired else (
            NOW - dt.timedelta(days=1), NOW + dt.timedelta(days=30)
        )  # fmt: skip
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(stem))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]
                ),
                critical=False,
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return _write(self.folder, stem, builder.sign(self.key, hashes.SHA256()), key)


def self_signed(folder: Path, stem: str) -> Pair:
    ca = Authority(folder, f"{stem}-self")
    key = ca.key
    return _write(folder, stem, ca.cert, key)


def client_certificates(folder: Path) -> dict[str, Pair]:
    """What the clients' TLS tests use, as NAME.pem and NAME-key.pem in ``folder``: a CA (ca), a server
    certificate for localhost and 127.0.0.1 (server) and a client certificate (client) that it signed, and
    server certificates a client must refuse (expired, wrong-host, self-signed)."""
    ca = Authority(folder, "ca")
    return {
        "ca": ca.pair,
        "server": ca.issue("server"),
        "client": ca.issue("client", hosts=(), client=True),
        "expired": ca.issue("expired", expired=True),
        "wrong-host": ca.issue("wrong-host", hosts=("other.example",)),
        "self-signed": self_signed(folder, "self-signed"),
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.pki FOLDER``: writes ``client_certificates`` into FOLDER, for trying TLS by hand and
    for the TypeScript client's own test run (clients/typescript/test/server.ts)."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m tests.pki FOLDER", file=sys.stderr)
        return 2
    folder = Path(args[0])
    folder.mkdir(parents=True, exist_ok=True)
    client_certificates(folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
