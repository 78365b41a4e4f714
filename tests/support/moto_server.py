#!/usr/bin/env python3
"""The local S3 + KMS server for the end-to-end suites: moto, over TLS.

Usage: moto_server.py DIR

Generates a throwaway CA and a server certificate for 127.0.0.1/localhost in
DIR (ca.pem, server.pem, server.key), binds moto's app to a free loopback
port, prints "READY <port>" on stdout and serves until its parent process
exits (so a test run that dies never leaves a server behind).

Environment passed through to moto matters: INITIAL_NO_AUTH_ACTION_COUNT
turns on IAM enforcement after that many requests (the write-only tests).
"""

import datetime
import os
import sys
import threading
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
import ipaddress


def make_certs(out_dir):
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vaultline test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = {name: os.path.join(out_dir, name) for name in ("ca.pem", "server.pem", "server.key")}
    with open(paths["ca.pem"], "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM))
    with open(paths["server.pem"], "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(paths["server.key"], "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return paths


def evaluate_secure_transport():
    """moto 5.2.5 cannot evaluate `Bool` conditions, and a statement whose
    condition fails is treated as a Deny whatever its Effect; so the standard
    TLS-only bucket policy (Deny when aws:SecureTransport is "false") denies
    every request, secure or not. This server only speaks TLS, so
    aws:SecureTransport is "true" for every request it serves: a statement
    conditioned on it applies only when it asks for "true", and is then
    evaluated by moto without that condition.
    """
    from moto.iam.access_control import IAMPolicyStatement, PermissionResult

    original = IAMPolicyStatement.is_action_permitted

    def is_action_permitted(self, action, resource="*", principal=None, incoming=None):
        conditions = self._statement.get("Condition") or {}
        bool_conditions = conditions.get("Bool") or {}
        if "aws:SecureTransport" not in bool_conditions:
            return original(self, action, resource, principal, incoming)
        wanted = bool_conditions["aws:SecureTransport"]
        wanted = wanted if isinstance(wanted, list) else [wanted]
        if "true" not in [str(v).lower() for v in wanted]:
            return PermissionResult.NEUTRAL
        rest = {k: v for k, v in conditions.items() if k != "Bool"}
        rest_bool = {k: v for k, v in bool_conditions.items() if k != "aws:SecureTransport"}
        if rest_bool:
            rest["Bool"] = rest_bool
        statement = dict(self._statement)
        if rest:
            statement["Condition"] = rest
        else:
            statement.pop("Condition")
        return original(IAMPolicyStatement(statement), action, resource, principal, incoming)

    IAMPolicyStatement.is_action_permitted = is_action_permitted


def enforce_key_state():
    """moto 5.2.5 lets a disabled KMS key encrypt and decrypt. AWS KMS refuses
    with DisabledException (KMSInvalidStateException when pending deletion);
    the suites test how vaultline reports exactly that, so the server does it.
    """
    from moto.core.exceptions import JsonRESTError
    from moto.kms.models import KmsBackend
    from moto.kms.utils import _deserialize_ciphertext_blob

    def check(backend, key_id):
        key = backend.keys.get(backend.any_id_to_key_id(key_id))
        if key is None:
            return
        if key.key_state == "Disabled":
            raise JsonRESTError("DisabledException", f"{key.arn} is disabled.")
        if key.key_state == "PendingDeletion":
            raise JsonRESTError("KMSInvalidStateException", f"{key.arn} is pending deletion.")

    for name in ("encrypt", "generate_data_key"):
        original = getattr(KmsBackend, name)

        def guarded(self, *args, _original=original, **kwargs):
            check(self, kwargs.get("key_id", args[0] if args else None))
            return _original(self, *args, **kwargs)

        setattr(KmsBackend, name, guarded)

    original_decrypt = KmsBackend.decrypt

    def decrypt(self, ciphertext_blob, encryption_context, key_id=None):
        try:
            blob_key = _deserialize_ciphertext_blob(ciphertext_blob=ciphertext_blob).key_id
        except Exception:
            blob_key = None
        if blob_key is not None:
            check(self, blob_key)
        return original_decrypt(self, ciphertext_blob, encryption_context, key_id)

    KmsBackend.decrypt = decrypt


def fix_s3_root_elements():
    """moto 5.2.5 answers some S3 GETs with a root element named after the
    operation (`<GetBucketVersioningResponse>`) where S3 uses the shape's
    name (`<VersioningConfiguration>`). botocore does not mind; the Rust SDK
    rejects the document. Rename the root as S3 does.
    """
    from moto.s3.responses import S3Response

    renames = {"get_bucket_versioning": ("GetBucketVersioningResponse", "VersioningConfiguration")}
    for method, (wrong, right) in renames.items():
        original = getattr(S3Response, method)

        def fixed(self, *args, _original=original, _wrong=wrong, _right=right, **kwargs):
            status, headers, body = _original(self, *args, **kwargs)
            if isinstance(body, bytes):
                body = body.replace(_wrong.encode(), _right.encode())
            elif isinstance(body, str):
                body = body.replace(_wrong, _right)
            return status, headers, body

        setattr(S3Response, method, fixed)


def exit_with_parent():
    parent = os.getppid()
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(0)


def main():
    out_dir = sys.argv[1]
    paths = make_certs(out_dir)
    evaluate_secure_transport()
    enforce_key_state()
    fix_s3_root_elements()
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    app = DomainDispatcherApplication(create_backend_app)
    server = make_server(
        "127.0.0.1",
        0,
        app,
        threaded=True,
        request_handler=MotoRequestHandler,
        ssl_context=(paths["server.pem"], paths["server.key"]),
    )
    threading.Thread(target=exit_with_parent, daemon=True).start()
    print(f"READY {server.server_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
