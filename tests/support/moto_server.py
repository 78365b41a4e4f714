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


# Per-bucket test controls and statistics, served at /__vaultline/...
CONTROL = {"restore_delay": {}, "get_bytes": {}, "gets": {}, "restores": {}}
CONTROL_LOCK = threading.Lock()


def slow_glacier_restores():
    """Moto finishes a RestoreObject at once. Real S3 takes hours: with a
    delay set for the bucket (/__vaultline/restore-delay), a restore stays
    `ongoing-request="true"` (and GETs keep failing with InvalidObjectState)
    for that many seconds, and asking again meanwhile fails with
    RestoreAlreadyInProgress, as S3 does. Every request is counted."""
    from moto.s3.exceptions import S3ClientError
    from moto.s3.models import FakeKey, S3Backend

    class RestoreAlreadyInProgress(S3ClientError):
        code = 409

        def __init__(self):
            super().__init__("RestoreAlreadyInProgress", "Object restore is already in progress")

    def ready(key):
        at = getattr(key, "_vl_ready_at", None)
        return at is None or time.time() >= at

    original_restore = S3Backend.restore_object

    def restore_object(self, bucket_name, key_name, days, type_):
        key = self.get_object(bucket_name, key_name)
        with CONTROL_LOCK:
            per = CONTROL["restores"].setdefault(bucket_name, {})
            per[key_name] = per.get(key_name, 0) + 1
            delay = CONTROL["restore_delay"].get(bucket_name, 0)
        if key is not None and not ready(key):
            raise RestoreAlreadyInProgress()
        result = original_restore(self, bucket_name, key_name, days, type_)
        if key is not None and delay > 0:
            key._vl_ready_at = time.time() + delay
        return result

    S3Backend.restore_object = restore_object

    original_dict = FakeKey.response_dict.fget

    def response_dict(self):
        res = original_dict(self)
        if "x-amz-restore" in res and not ready(self):
            res["x-amz-restore"] = 'ongoing-request="true"'
        return res

    FakeKey.response_dict = property(response_dict)


def with_controls(app):
    """Counts GET response bytes per bucket (path-style requests) and
    serves /__vaultline/stats?bucket=B and /__vaultline/restore-delay."""
    import json
    from urllib.parse import parse_qs

    def wrapped(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path.startswith("/__vaultline/"):
            q = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
            bucket = q.get("bucket", "")
            with CONTROL_LOCK:
                if path == "/__vaultline/restore-delay":
                    CONTROL["restore_delay"][bucket] = float(q.get("secs", "0"))
                    body = {"ok": True}
                else:
                    body = {
                        "get_bytes": CONTROL["get_bytes"].get(bucket, 0),
                        "gets": CONTROL["gets"].get(bucket, 0),
                        "restores": CONTROL["restores"].get(bucket, {}),
                    }
            data = json.dumps(body).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
            return [data]
        if environ.get("REQUEST_METHOD") != "GET" or environ.get("QUERY_STRING"):
            return app(environ, start_response)
        parts = path.lstrip("/").split("/", 1)
        if len(parts) < 2 or not parts[1]:
            return app(environ, start_response)
        bucket = parts[0]

        def counted(body):
            try:
                for piece in body:
                    with CONTROL_LOCK:
                        CONTROL["get_bytes"][bucket] = CONTROL["get_bytes"].get(bucket, 0) + len(piece)
                    yield piece
            finally:
                if hasattr(body, "close"):
                    body.close()

        with CONTROL_LOCK:
            CONTROL["gets"][bucket] = CONTROL["gets"].get(bucket, 0) + 1
        return counted(app(environ, start_response))

    return wrapped


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
    slow_glacier_restores()
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    app = with_controls(DomainDispatcherApplication(create_backend_app))
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
