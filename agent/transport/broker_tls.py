"""The TLS side of an MQTT connection: the context a link verifies its broker with, and the
client certificate's expiry check.

Kept apart from agent/transport/mqtt_link.py because it is set-up, not the connection's life:
preflight (agent/preflight.py) builds the same context to check a configuration without
connecting, and the link only needs the result. mqtt_link re-exports these names, which are
imported from there today.
"""

from __future__ import annotations

import logging
import ssl
from datetime import UTC, datetime

from agent.clock.watch import clock_hint
from agent.config_types import ConfigError
from agent.transport.config import TlsConfig

# The link's logger, as before the split: operators filter and alert on its name.
log = logging.getLogger("agent.transport.mqtt_link")


class ClosingTlsContext(ssl.SSLContext):
    """Remembers the socket of the latest handshake so that a failed one can be closed.

    paho leaves a socket whose TLS handshake failed to the garbage collector; a kiosk
    retrying a bad certificate for days would otherwise leak a descriptor per attempt.
    """

    last_socket: ssl.SSLSocket | None = None

    def wrap_socket(self, *args, **kwargs) -> ssl.SSLSocket:  # type: ignore[no-untyped-def, override]
        self.last_socket = super().wrap_socket(*args, **kwargs)
        return self.last_socket

    def close_failed(self) -> None:
        if self.last_socket is not None:
            self.last_socket.close()
            self.last_socket = None


def tls_context(tls: TlsConfig) -> ClosingTlsContext:
    """Verify the broker against the configured CA, present the client certificate, TLS >= 1.2."""
    context = ClosingTlsContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies certificate and host name
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_verify_locations(cafile=str(tls.ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("mqtt.tls.ca_file",
                          [f"cannot load CA certificates from {tls.ca_file}: {exc}"]) from None
    if tls.cert_file is not None:
        try:
            context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError("mqtt.tls.cert_file", [
                f"cannot load client certificate {tls.cert_file} with key {tls.key_file}: {exc}"]) from None
    return context


def check_certificate_expiry(tls: TlsConfig, now: datetime | None = None) -> datetime | None:
    """Log when the client certificate has expired or expires soon; return its end date."""
    if tls.cert_file is None:
        return None
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(tls.cert_file.read_bytes())
    expires = cert.not_valid_after_utc
    now = now or datetime.now(UTC)
    days = (expires - now).total_seconds() / 86400
    # Both judged by this kiosk's clock: a clock years off makes a good certificate look
    # expired or not yet valid, so the message says when the clock is not trusted.
    if days < 0:
        log.error("client certificate %s expired on %s: the broker will refuse it; install a renewed "
                  "certificate%s", tls.cert_file, expires.date(), clock_hint())
    elif now < cert.not_valid_before_utc:
        log.error("client certificate %s is not valid before %s (now %s by this kiosk's clock): the broker "
                  "may refuse it%s", tls.cert_file, cert.not_valid_before_utc.date(), now.date(),
                  clock_hint())
    elif days < tls.expiry_warning_days:
        log.warning("client certificate %s expires in %.0f days (%s); renew it", tls.cert_file, days,
                    expires.date())
    return expires
