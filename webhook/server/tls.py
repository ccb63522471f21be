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


def _stamp(path: Path) -> _Stamp | None:
    try:
        status = path.stat()  # follows symlinks: kubelet swaps a ..data link on Secret updates
    except OSError:
        return None
    return _Stamp(status.st_ino, status.st_size, status.st_mtime_ns)


class ReloadingTLS:
    """The listening context, plus the certificate pair that it hands each new handshake.

    The pair comes from files (watched for changes), or from PEM handed in by
    whoever watches a Secret (``load_pem``). In the second case the server
    starts on a throwaway self-signed pair and reports not ready until the
    real one arrives.
    """

    def __init__(self, cert_file: str | os.PathLike[str], key_file: str | os.PathLike[str], ready: bool = True) -> None:
        self.cert_file = Path(cert_file)
        self.key_file = Path(key_file)
        self._current = server_context(self.cert_file, self.key_file)
        self._stamps = (_stamp(self.cert_file), _stamp(self.key_file))
        self.reloads = 0
        self.failed_reloads = 0
        self.ready = ready
        # The listener's own context carries the first pair too, so a client
        # is served even if the callback were never reached.
        self.listener = server_context(self.cert_file, self.key_file)
        self.listener.sni_callback = self._select

    @classmethod
    def awaiting_secret(cls) -> ReloadingTLS:
        """A placeholder pair until ``load_pem`` brings the real one; not ready until then."""
        from ..certs import generate

        folder = Path(tempfile.mkdtemp(prefix="sortie-tls-"))
        placeholder = generate(("placeholder.invalid",))
        (folder / "tls.key").write_bytes(placeholder.key_pem)
        (folder / "tls.key").chmod(0o600)
        (folder / "tls.crt").write_bytes(placeholder.cert_pem)
        return cls(folder / "tls.crt", folder / "tls.key", ready=False)

    def load_pem(self, cert_pem: bytes, key_pem: bytes) -> bool:
        """Swap in a pair given as PEM (from a Secret); False, keeping the old pair, if it is unusable."""
        folder = Path(tempfile.mkdtemp(prefix="sortie-tls-"))
        try:
            (folder / "tls.key").write_bytes(key_pem)
            (folder / "tls.key").chmod(0o600)
            (folder / "tls.crt").write_bytes(cert_pem)
            fresh = server_context(folder / "tls.crt", folder / "tls.key")
        except (ssl.SSLError, OSError, ValueError) as exc:
            self.failed_reloads += 1
            log.warning("certificate from the Secret is unusable, keeping the previous pair: %s", exc)
            return False
        finally:
            for name in ("tls.key", "tls.crt"):
                (folder / name).unlink(missing_ok=True)
            folder.rmdir()
        self._current = fresh
        self.reloads += 1
        self.ready = True
        log.info("serving certificate loaded from its Secret")
        return True

    def _select(self, ssl_object: ssl.SSLObject, _server_name: str | None, _context: ssl.SSLContext) -> None:
        if ssl_object.context is not self._current:
            ssl_object.context = self._current

    def reload_if_changed(self) -> bool:
        """Swap in the files' pair if they changed and form a usable pair; True if swapped."""
        stamps = (_stamp(self.cert_file), _stamp(self.key_file))
        if stamps == self._stamps or None in stamps:
            return False
        try:
            fresh = server_context(self.cert_file, self.key_file)
        except (ssl.SSLError, OSError, ValueError) as exc:
            # Probably caught mid-write (certificate and key disagree): keep the
            # old pair, and try again on the next change or poll.
            self.failed_reloads += 1
            log.warning("certificate reload failed, keeping the previous pair: %s", exc)
            return False
        self._current = fresh
        self._stamps = stamps
        self.reloads += 1
        log.info("serving certificate reloaded from %s", self.cert_file)
        return True
