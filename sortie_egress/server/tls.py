"""TLS for the webhook: 1.2 or newer only, and certificates that rotate live.

Rotation swaps a whole new SSLContext in rather than reloading files into the
live one: a rotation caught half-written (new certificate, old key) then
fails to build and is retried, while every handshake keeps the last good
pair. The swap happens in the servername callback, which OpenSSL runs for
every ClientHello, with or without SNI (the API server dials an IP).
"""

from __future__ import annotations

import logging
import os
import ssl
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("sortie.tls")

# TLS 1.2 suites: forward-secret AEAD only. TLS 1.3 suites are all fine.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def server_context(cert_file: str | os.PathLike[str], key_file: str | os.PathLike[str]) -> ssl.SSLContext:
    """A server context for one certificate pair; raises ssl.SSLError/OSError if the pair is unusable."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    context.set_ciphers(TLS12_CIPHERS)
    context.set_alpn_protocols(["http/1.1"])
    context.load_cert_chain(cert_file, key_file)
    return context


@dataclass(frozen=True, slots=True)
class _Stamp:
    """What identifies a file version without reading it: enough to notice a Secret remount."""

    inode: int
    size: int
    mtime_ns: int


def file_stamp(path: Path) -> _Stamp | None:
    try:
        status = path.stat()  # follows symlinks: kubelet swaps a ..data link on Secret updates
    except OSError:
        return None
    return _Stamp(status.st_ino, status.st_size, status.st_mtime_ns)


def pem_context(cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    """``server_context`` for a pair held in memory (``load_cert_chain`` only reads files)."""
    folder = Path(tempfile.mkdtemp(prefix="sortie-tls-"))
    try:
        (folder / "tls.key").touch(mode=0o600)
        (folder / "tls.key").write_bytes(key_pem)
        (folder / "tls.crt").write_bytes(cert_pem)
        return server_context(folder / "tls.crt", folder / "tls.key")
    finally:
        for name in ("tls.key", "tls.crt"):
            (folder / name).unlink(missing_ok=True)
        folder.rmdir()


class ReloadingTLS:
    """The listening context, plus the certificate pair that it hands each new handshake.

    The pair comes from files (``from_files``, polled for changes), or from PEM
    handed in by whoever watches a Secret (``awaiting_secret``, then
    ``load_pem``). In the second case the server starts on a throwaway
    self-signed pair and reports not ready until the real one arrives.
    ``on_reload`` hears "ok" or "failed" for every attempted swap, from either source.
    """

    def __init__(self, context: ssl.SSLContext, files: tuple[Path, Path] | None = None, ready: bool = True,
                 on_reload: Callable[[str], None] | None = None) -> None:
        self.files = files
        self._stamps = (file_stamp(files[0]), file_stamp(files[1])) if files else None
        self.reloads = 0
        self.failed_reloads = 0
        self.ready = ready
        self.on_reload = on_reload or (lambda _result: None)
        # The first pair serves as the listener's own context too; later pairs
        # are handed to each handshake by the servername callback.
        self._current = context
        self.listener = context
        self.listener.sni_callback = self._select

    @classmethod
    def from_files(cls, cert_file: str | os.PathLike[str], key_file: str | os.PathLike[str],
                   on_reload: Callable[[str], None] | None = None) -> ReloadingTLS:
        files = (Path(cert_file), Path(key_file))
        return cls(server_context(*files), files=files, on_reload=on_reload)

    @classmethod
    def awaiting_secret(cls, on_reload: Callable[[str], None] | None = None) -> ReloadingTLS:
        """A placeholder pair until ``load_pem`` brings the real one; not ready until then."""
        from sortie_egress.certs.authority import generate

        placeholder = generate(("placeholder.invalid",))
        return cls(pem_context(placeholder.cert_pem, placeholder.key_pem), ready=False, on_reload=on_reload)

    def _swap(self, build: Callable[[], ssl.SSLContext], source: str) -> bool:
        try:
            fresh = build()
        except (ssl.SSLError, OSError, ValueError) as exc:
            # Probably caught mid-write (certificate and key disagree): keep the
            # old pair, and try again on the next change.
            self.failed_reloads += 1
            self.on_reload("failed")
            log.warning("certificate from %s is unusable, keeping the previous pair: %s", source, exc)
            return False
        self._current = fresh
        self.reloads += 1
        self.ready = True
        self.on_reload("ok")
        log.info("serving certificate loaded from %s", source)
        return True

    def load_pem(self, cert_pem: bytes, key_pem: bytes) -> bool:
        """Swap in a pair given as PEM (from a Secret); False, keeping the old pair, if it is unusable."""
        return self._swap(lambda: pem_context(cert_pem, key_pem), "its Secret")

    def _select(self, ssl_object: ssl.SSLObject, _server_name: str | None, _context: ssl.SSLContext) -> None:
        if ssl_object.context is not self._current:
            ssl_object.context = self._current

    def reload_if_changed(self) -> bool:
        """Swap in the files' pair if they changed and form a usable pair; True if swapped."""
        if self.files is None:
            return False
        stamps = (file_stamp(self.files[0]), file_stamp(self.files[1]))
        if stamps == self._stamps or None in stamps:
            return False
        if not self._swap(lambda: server_context(*self.files), str(self.files[0])):  # type: ignore[misc]
            return False
        self._stamps = stamps
        return True
