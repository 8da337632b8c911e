"""Channels to a visionsearch server: plaintext or TLS (with a client certificate for mTLS), and an API key
sent with every call (``authorization: Bearer <key>``), through grpc's own credentials and interceptors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

PemSource = bytes | str | Path | None


def _pem(source: PemSource) -> bytes | None:
    """PEM bytes as given, or read from a path."""
    if source is None or isinstance(source, bytes):
        return source
    return Path(source).read_bytes()


def channel_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


def credentials(
    tls: bool | None, root_certificates: PemSource, private_key: PemSource, certificate_chain: PemSource
) -> grpc.ChannelCredentials | None:
    """Channel credentials, or None for plaintext. TLS is on when asked for or when any PEM is given; without
    ``root_certificates`` the system's roots verify the server."""
    if not (tls or root_certificates or private_key or certificate_chain):
        return None
    if bool(private_key) != bool(certificate_chain):
        raise ValueError("private_key and certificate_chain (a client certificate for mTLS) go together")
    return grpc.ssl_channel_credentials(_pem(root_certificates), _pem(private_key), _pem(certificate_chain))


def key_metadata(api_key: str | None) -> tuple[tuple[str, str], ...]:
    if api_key is None:
        return ()
    if not api_key:
        raise ValueError("api_key is empty: pass the key `visionsearch-admin keys add` printed, or None")
    return (("authorization", f"Bearer {api_key}"),)


def _with_metadata(details: Any, extra: tuple[tuple[str, str], ...]) -> Any:
    return details._replace(metadata=(*(details.metadata or ()), *extra))


class _KeyInterceptor(grpc.UnaryUnaryClientInterceptor):
    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.metadata = metadata

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(_with_metadata(details, self.metadata), request)


class _AioKeyInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.metadata = metadata

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        return await continuation(_with_metadata(details, self.metadata), request)


def sync_channel(
    target: str, options: list[tuple[str, Any]], creds: grpc.ChannelCredentials | None, api_key: str | None
) -> grpc.Channel:
    channel = grpc.secure_channel(target, creds, options) if creds else grpc.insecure_channel(target, options)
    metadata = key_metadata(api_key)
    return grpc.intercept_channel(channel, _KeyInterceptor(metadata)) if metadata else channel


def aio_channel(
    target: str, options: list[tuple[str, Any]], creds: grpc.ChannelCredentials | None, api_key: str | None
) -> grpc.aio.Channel:
    metadata = key_metadata(api_key)
    interceptors = [_AioKeyInterceptor(metadata)] if metadata else None
    if creds:
        return grpc.aio.secure_channel(target, creds, options, interceptors=interceptors)
    return grpc.aio.insecure_channel(target, options, interceptors=interceptors)
