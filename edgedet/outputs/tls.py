"""TLS for the MQTT connection: the ``mqtt.tls`` files checked up front, and the SSL context built from them.

Every problem is a ``ConfigError`` naming its field (``mqtt.tls.ca: cannot read ...``), raised when the
publisher is built, so a bad file stops start-up (and ``check-config``) instead of showing up as
endless reconnect attempts. The context matches what paho's ``tls_set()`` would build: TLS client
protocol, the broker's certificate verified against ``ca`` (the system store when unset), and the host
name checked unless ``insecure`` (the chain is still verified then).
"""

from __future__ import annotations

import ssl

from edgedet.config import TlsConfig
from edgedet.errors import ConfigError


def _check_readable(field: str, path: str) -> None:
    try:
        with open(path, "rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise ConfigError(f"{field}: cannot read {path}: {exc.strerror or exc}") from None


def ssl_context(tls: TlsConfig) -> ssl.SSLContext:
    """The client SSL context for ``tls``; a ConfigError naming the field for a missing or unusable file."""
    ca, cert, key = tls.ca or None, tls.cert or None, tls.key or None
    if key and not cert:
        raise ConfigError("mqtt.tls.key: set without mqtt.tls.cert")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname
    if ca:
        _check_readable("mqtt.tls.ca", ca)
        try:
            context.load_verify_locations(cafile=ca)
        except ssl.SSLError as exc:
            raise ConfigError(f"mqtt.tls.ca: {ca} is not a usable PEM CA bundle ({exc.reason})") from None
    else:
        try:
            context.load_default_certs()
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise ConfigError(f"mqtt.tls: cannot set up TLS: {exc}") from None
    if cert:
        _check_readable("mqtt.tls.cert", cert)
        if key:
            _check_readable("mqtt.tls.key", key)
        try:
            context.load_cert_chain(certfile=cert, keyfile=key)
        except ssl.SSLError as exc:
            field = "mqtt.tls.cert/key" if key else "mqtt.tls.cert"
            raise ConfigError(
                f"{field}: cannot load client certificate {cert}"
                f"{' with key ' + key if key else ''} ({exc.reason or 'not a PEM certificate and private key'})"
            ) from None
    if tls.insecure:
        context.check_hostname = False  # no host name check; the chain is still verified
    return context
