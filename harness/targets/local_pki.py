"""Per-run certificates for the local control plane: a CA, the apiserver's serving certificate
and the service-account key pair (the `cryptography` package, else the openssl CLI)."""

from __future__ import annotations

import ipaddress
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from harness.targets.local_procs import LocalClusterError


def _openssl(args: Sequence[str], cwd: Path) -> None:
    p = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if p.returncode != 0:
        raise LocalClusterError(f"openssl {' '.join(args[:2])} failed: {p.stderr.strip()[:1000]}")


def make_pki(d: Path, *, san_ips: Sequence[str], san_dns: Sequence[str]) -> dict[str, Path]:
    """CA, apiserver serving cert/key, service-account key pair: PEM files in `d` (mode 0600)."""
    d.mkdir(parents=True, exist_ok=True)
    files = {
        k: d / v
        for k, v in {
            "ca_key": "ca.key",
            "ca_crt": "ca.crt",
            "key": "apiserver.key",
            "crt": "apiserver.crt",
            "sa_key": "sa.key",
            "sa_pub": "sa.pub",
        }.items()
    }
    try:
        _make_pki_cryptography(files, san_ips, san_dns)
    except ImportError:
        _make_pki_openssl(d, files, san_ips, san_dns)
    for p in files.values():
        os.chmod(p, 0o600)
    return files


def _make_pki_openssl(d: Path, f: dict[str, Path], san_ips: Sequence[str], san_dns: Sequence[str]) -> None:
    _openssl(
        [
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(f["ca_key"]),
            "-out",
            str(f["ca_crt"]),
            "-days",
            "7",
            "-subj",
            "/CN=kpbench-ca",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
        d,
    )
    san = ",".join([f"IP:{ip}" for ip in san_ips] + [f"DNS:{n}" for n in san_dns])
    ext = d / "apiserver.ext"
    ext.write_text(
        f"subjectAltName={san}\nextendedKeyUsage=serverAuth\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\nbasicConstraints=CA:FALSE\n"
    )
    csr = d / "apiserver.csr"
    _openssl(
        [
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(f["key"]),
            "-out",
            str(csr),
            "-subj",
            "/CN=kube-apiserver",
        ],
        d,
    )
    _openssl(
        [
            "x509",
            "-req",
            "-in",
            str(csr),
            "-CA",
            str(f["ca_crt"]),
            "-CAkey",
            str(f["ca_key"]),
            "-CAcreateserial",
            "-out",
            str(f["crt"]),
            "-days",
            "7",
            "-extfile",
            str(ext),
        ],
        d,
    )
    _openssl(
        ["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(f["sa_key"])], d
    )
    _openssl(["pkey", "-in", str(f["sa_key"]), "-pubout", "-out", str(f["sa_pub"])], d)


def _make_pki_cryptography(f: dict[str, Path], san_ips: Sequence[str], san_dns: Sequence[str]) -> None:
    import datetime

    from cryptography import x509  # ImportError: the openssl CLI is used instead
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def pem_key(k) -> bytes:
        return k.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    later = now + datetime.timedelta(days=7)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kpbench-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(later)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.IPAddress(ipaddress.ip_address(i)) for i in san_ips] + [x509.DNSName(n) for n in san_dns]
    crt = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(later)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    f["ca_key"].write_bytes(pem_key(ca_key))
    f["ca_crt"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    f["key"].write_bytes(pem_key(key))
    f["crt"].write_bytes(crt.public_bytes(serialization.Encoding.PEM))
    f["sa_key"].write_bytes(pem_key(sa))
    f["sa_pub"].write_bytes(
        sa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
