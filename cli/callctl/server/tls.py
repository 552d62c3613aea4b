"""``--tls self-signed``: a certificate for this machine, made once and kept.

Browsers open the microphone only in a secure context, so a page served to
other machines on the LAN must come over HTTPS. Without a real certificate
the server makes its own: an ECDSA P-256 end-entity certificate (not a CA)
for the machine's names and addresses, kept next to the server's secret
(``server-cert.pem``, and ``server-key.pem`` mode 0600) so its fingerprint,
which users check and trust once, stays the same across restarts. It is made
again only when it has expired (or will within a day), does not match its
key, or does not cover a name or address the machine has now.

Clients trust it by using the certificate file itself as their CA file.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import os
import re
import secrets
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography import x509

CERT_FILE = "server-cert.pem"
KEY_FILE = "server-key.pem"
#: Apple's platforms refuse server certificates valid for longer than 825 days.
VALID_DAYS = 825
#: A kept certificate that expires sooner than this is made again.
RENEW_BEFORE = dt.timedelta(days=1)

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


class TlsError(Exception):
    """The certificate cannot be made, kept or read (one line)."""


@dataclass(frozen=True)
class Names:
    """What a certificate must cover: DNS names and IP addresses."""

    dns: frozenset[str]
    ips: frozenset[IpAddress]

    def missing_from(self, other: Names) -> list[str]:
        """Ours that ``other`` lacks, as text."""
        return sorted(self.dns - other.dns) + [str(ip) for ip in sorted(self.ips - other.ips, key=_ip_key)]

    def as_list(self) -> list[str]:
        return sorted(self.dns) + [str(ip) for ip in sorted(self.ips, key=_ip_key)]

    def describe(self) -> str:
        return ", ".join(self.as_list())


@dataclass(frozen=True)
class SelfSigned:
    cert_file: Path
    key_file: Path
    #: SHA-256 of the certificate (DER), ``AB:CD:…`` as browsers and ``openssl x509 -fingerprint`` show it.
    fingerprint: str
    #: base64 SHA-256 of the public key (SPKI): Chromium's ``--ignore-certificate-errors-spki-list``, HPKP pins.
    spki_sha256: str
    names: Names
    #: Why the kept one was not used, "does not cover 10.0.0.7" (None: it was; "": there was none).
    renewed: str | None


def _ip_key(ip: IpAddress) -> tuple[int, int]:
    return (ip.version, int(ip))


def check_name(name: str) -> str | IpAddress:
    """A ``--tls-name``: an IP address or a DNS name (lower case), or TlsError saying why not."""
    try:
        return ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        pass
    dns = name.lower().rstrip(".")
    labels = dns.split(".")
    if len(dns) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise TlsError(f"--tls-name {name!r}: not a DNS name (letters, digits, '-' and '.') or an IP address")
    return dns


def machine_names(host: str, extra: Iterable[str] = ()) -> Names:
    """This machine's names and addresses, ``host`` if it is a specific one, and ``extra`` (checked)."""
    dns: set[str] = {"localhost"}
    ips: set[IpAddress] = {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}
    for name in (socket.gethostname(), socket.getfqdn()):
        try:
            found = check_name(name)
        except TlsError:
            continue  # a host name that is not a DNS name cannot be in a certificate
        _add(found, dns, ips)
    ips.update(_interface_addresses())
    if host not in ("", "0.0.0.0", "::", "*"):
        try:
            _add(check_name(host), dns, ips)
        except TlsError:
            pass  # not a name a certificate can hold
    for name in extra:
        _add(check_name(name), dns, ips)
    return Names(frozenset(dns), frozenset(ips))


def _add(found: str | IpAddress, dns: set[str], ips: set[IpAddress]) -> None:
    if isinstance(found, str):
        dns.add(found)
    else:
        ips.add(found)


def _interface_addresses() -> set[IpAddress]:
    """The addresses of this machine's interfaces (Linux: from /proc; elsewhere the best guess)."""
    found: set[IpAddress] = set()
    try:
        found.update(_linux_ipv4(Path("/proc/net/fib_trie").read_text()))
    except OSError:
        found.update(_guess_addresses())
    try:
        found.update(_linux_ipv6(Path("/proc/net/if_inet6").read_text()))
    except OSError:
        pass
    # fe80::…%eth0 cannot be in a URL a browser opens; 0.0.0.0 is no address
    return {ip for ip in found if not (ip.version == 6 and ip.is_link_local) and not ip.is_unspecified}


def _linux_ipv4(fib_trie: str) -> set[IpAddress]:
    """Local addresses in /proc/net/fib_trie: an ``|-- A.B.C.D`` leaf followed by ``/32 host LOCAL``."""
    out: set[IpAddress] = set()
    leaf = None
    for line in fib_trie.splitlines():
        text = line.strip()
        if text.startswith(("|--", "+--")):
            leaf = text.split()[1]
        elif text.startswith("/32 host LOCAL") and leaf is not None:
            try:
                out.add(ipaddress.ip_address(leaf))
            except ValueError:
                pass
    return out


def _linux_ipv6(if_inet6: str) -> set[IpAddress]:
    out: set[IpAddress] = set()
    for line in if_inet6.splitlines():
        fields = line.split()
        if fields and len(fields[0]) == 32:
            try:
                out.add(ipaddress.IPv6Address(int(fields[0], 16)))
            except ValueError:
                pass
    return out


def _guess_addresses() -> set[IpAddress]:
    """Where /proc is not: the host name's addresses and the source address of the default route."""
    out: set[IpAddress] = set()
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None, type=socket.SOCK_STREAM):
            out.add(ipaddress.ip_address(str(info[4][0]).split("%")[0]))
    except (OSError, ValueError):
        pass
    for family, probe in ((socket.AF_INET, "192.0.2.1"), (socket.AF_INET6, "2001:db8::1")):
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.connect((probe, 9))  # UDP: nothing is sent, the kernel only picks a route
                out.add(ipaddress.ip_address(s.getsockname()[0].split("%")[0]))
        except (OSError, ValueError):
            pass
    return out


def self_signed(directory: Path, names: Names) -> SelfSigned:
    """The kept certificate in ``directory`` if it is still good for ``names``, else a new one."""
    cert_file, key_file = directory / CERT_FILE, directory / KEY_FILE
    reason = _kept_is_bad(cert_file, key_file, names)
    if reason is not None:
        _make(cert_file, key_file, names)
    elif key_file.stat().st_mode & 0o077:
        os.chmod(key_file, 0o600)
    cert = _load_cert(cert_file)
    return SelfSigned(cert_file=cert_file, key_file=key_file, fingerprint=fingerprint(cert),
                      spki_sha256=spki_sha256(cert), names=cert_names(cert), renewed=reason)


def fingerprint(cert: x509.Certificate) -> str:
    from cryptography.hazmat.primitives import hashes

    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def spki_sha256(cert: x509.Certificate) -> str:
    from cryptography.hazmat.primitives import serialization

    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def cert_names(cert: x509.Certificate) -> Names:
    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return Names(frozenset(), frozenset())
    return Names(frozenset(n.lower() for n in san.get_values_for_type(x509.DNSName)),
                 frozenset(ip for ip in san.get_values_for_type(x509.IPAddress)
                           if isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address)))


def _load_cert(path: Path) -> x509.Certificate:
    from cryptography import x509

    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise TlsError(f"cannot read TLS certificate {path}: {getattr(exc, 'strerror', None) or exc}") from None


def _kept_is_bad(cert_file: Path, key_file: Path, names: Names) -> str | None:
    """None if the kept pair is good for ``names``; else why not ("" when there is none)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    if not cert_file.exists() and not key_file.exists():
        return ""
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except FileNotFoundError as exc:
        return f"lost its {'key' if exc.filename == str(key_file) else 'certificate'} file"
    except PermissionError as exc:
        raise TlsError(f"cannot read {exc.filename}: {exc.strerror}") from None
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    except (ValueError, TypeError):
        return "is not a PEM certificate with its unencrypted key"
    pem = serialization.Encoding.PEM
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(pem, spki) != cert.public_key().public_bytes(pem, spki):
        return "does not match its key"
    now = dt.datetime.now(dt.UTC)
    if cert.not_valid_after_utc <= now:
        return f"expired on {cert.not_valid_after_utc:%Y-%m-%d}"
    if cert.not_valid_after_utc - now < RENEW_BEFORE:
        return f"expires on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    missing = names.missing_from(cert_names(cert))
    if missing:
        return f"does not cover {', '.join(missing)}"
    return None


def _make(cert_file: Path, key_file: Path, names: Names) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    subject = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "callctl"),
        x509.NameAttribute(NameOID.COMMON_NAME, (socket.gethostname() or "callctl server")[:64]),
    ])
    now = dt.datetime.now(dt.UTC)
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in sorted(names.dns)]
    sans += [x509.IPAddress(ip) for ip in sorted(names.ips, key=_ip_key)]
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(secrets.randbits(127) | 1)
        .not_valid_before(now - dt.timedelta(hours=1))  # a client whose clock is a little behind
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    try:
        cert_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # the key first: a server starting meanwhile sees a mismatched pair and makes its own
        _write_atomically(key_file, key_pem, 0o600)
        _write_atomically(cert_file, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    except OSError as exc:
        raise TlsError(f"cannot write the TLS certificate in {cert_file.parent}: {exc.strerror}") from None


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
