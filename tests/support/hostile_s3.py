#!/usr/bin/env python3
"""A misbehaving S3-compatible server for the end-to-end suites.

Usage: hostile_s3.py CERT_DIR REPO_DIR MODE [SUFFIX]

Serves the files of REPO_DIR (a local vaultline repository: its relative
paths are the object keys) as the objects of any bucket, path-style, over
TLS with a throwaway CA written to CERT_DIR/ca.pem. Prints "READY <port>"
on stdout and serves until its parent process exits. Python's standard
library only: the certificates are made here, RSA and DER by hand.

It answers what the read-only commands send: ListObjectsV2, GetObject
(whole and ranged), HeadObject, STS GetCallerIdentity (the audit trail
asks who the caller is, at the S3 endpoint), and PutObject of the audit
segments every command ships (accepted and dropped). Anything else gets a
501.

MODE is the misbehaviour; body faults apply only to objects whose key ends
with SUFFIX (default ".manifest"):

  honest                   no fault
  foreign-key              every listing also holds "outside/x.manifest",
                           which is not under the prefix asked for
  repeat-token             every listing says it is truncated and hands back
                           the same continuation token, forever
  short-body               the object is only its first 100 bytes, and the
                           server says so (Content-Length matches the body)
  short-body-lying-length  Content-Length promises what was asked for, the
                           body stops at half the object and the connection
                           closes
  long-body                every GET sends 4096 bytes more than asked for
                           (the whole object, or the range), Content-Length
                           matching the body
  long-body-lying-length   Content-Length is what was asked for, and 4096
                           bytes more follow it on the connection
  huge-manifest            the body of a whole GET is the object followed by
                           zeros without end, under a Content-Length of 1 TiB

Every request is logged on stderr.
"""

import datetime
import email.utils
import hashlib
import http.server
import ipaddress
import os
import secrets
import ssl
import sys
import threading
import time
import urllib.parse
from xml.sax.saxutils import escape

EXTRA = 4096
# Where short-body cuts objects: inside the sealed header, whose first
# fields have the same length in every object of a fixture.
SHORT = 100
FOREIGN_KEY = "outside/x.manifest"
TOKEN = "vaultline-hostile-token"

# --- A throwaway CA and server certificate, without third-party packages ---


def _len(n):
    if n < 0x80:
        return bytes([n])
    b = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(b)]) + b


def tlv(tag, content):
    return bytes([tag]) + _len(len(content)) + content


def integer(x):
    return tlv(0x02, x.to_bytes(x.bit_length() // 8 + 1, "big"))


def seq(*items):
    return tlv(0x30, b"".join(items))


def oid(dotted):
    parts = [int(p) for p in dotted.split(".")]
    out = bytes([40 * parts[0] + parts[1]])
    for p in parts[2:]:
        chunk = [p & 0x7F]
        p >>= 7
        while p:
            chunk.append(0x80 | (p & 0x7F))
            p >>= 7
        out += bytes(reversed(chunk))
    return tlv(0x06, out)


def utc_time(t):
    return tlv(0x17, t.strftime("%y%m%d%H%M%SZ").encode())


def name(common_name):
    return seq(tlv(0x31, seq(oid("2.5.4.3"), tlv(0x0C, common_name.encode()))))


def extension(ext_oid, value, critical=False):
    flag = tlv(0x01, b"\xff") if critical else b""
    return seq(oid(ext_oid), flag, tlv(0x04, value))


def probable_prime(n):
    for p in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47):
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    for _ in range(40):
        x = pow(secrets.randbelow(n - 3) + 2, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def prime(bits):
    while True:
        c = secrets.randbits(bits) | (3 << (bits - 2)) | 1
        if (c - 1) % 65537 and probable_prime(c):
            return c


class RsaKey:
    def __init__(self, bits=2048):
        e = 65537
        while True:
            p, q = prime(bits // 2), prime(bits // 2)
            if p != q:
                break
        self.n, self.e = p * q, e
        self.d = pow(e, -1, (p - 1) * (q - 1))
        self.p, self.q = p, q

    def spki(self):
        algorithm = seq(oid("1.2.840.113549.1.1.1"), tlv(0x05, b""))
        return seq(algorithm, tlv(0x03, b"\x00" + seq(integer(self.n), integer(self.e))))

    def sign_sha256(self, data):
        digest_info = bytes.fromhex("3031300d060960864801650304020105000420") + hashlib.sha256(data).digest()
        k = (self.n.bit_length() + 7) // 8
        em = b"\x00\x01" + b"\xff" * (k - len(digest_info) - 3) + b"\x00" + digest_info
        return pow(int.from_bytes(em, "big"), self.d, self.n).to_bytes(k, "big")

    def pem(self):
        p, q, d = self.p, self.q, self.d
        der = seq(
            integer(0), integer(self.n), integer(self.e), integer(d), integer(p), integer(q),
            integer(d % (p - 1)), integer(d % (q - 1)), integer(pow(q, -1, p)),
        )
        return pem("RSA PRIVATE KEY", der)


def pem(label, der):
    import base64

    body = base64.encodebytes(der).decode().replace("\n", "")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return f"-----BEGIN {label}-----\n" + "\n".join(lines) + f"\n-----END {label}-----\n"


def certificate(subject, issuer, key, signer, extensions):
    now = datetime.datetime.now(datetime.timezone.utc)
    sha256_rsa = seq(oid("1.2.840.113549.1.1.11"), tlv(0x05, b""))
    tbs = seq(
        tlv(0xA0, integer(2)),
        integer(secrets.randbits(64) | 1),
        sha256_rsa,
        name(issuer),
        seq(utc_time(now - datetime.timedelta(minutes=5)), utc_time(now + datetime.timedelta(days=2))),
        name(subject),
        key.spki(),
        tlv(0xA3, seq(*extensions)),
    )
    return pem("CERTIFICATE", seq(tbs, sha256_rsa, tlv(0x03, b"\x00" + signer.sign_sha256(tbs))))


def make_certs(out_dir):
    ca_key, key = RsaKey(), RsaKey()
    ca = certificate(
        "vaultline hostile test CA", "vaultline hostile test CA", ca_key, ca_key,
        [extension("2.5.29.19", seq(tlv(0x01, b"\xff")), critical=True)],
    )
    san = seq(tlv(0x82, b"localhost"), tlv(0x87, ipaddress.ip_address("127.0.0.1").packed))
    server = certificate(
        "localhost", "vaultline hostile test CA", key, ca_key,
        [
            extension("2.5.29.19", seq(), critical=True),
            extension("2.5.29.17", san),
            extension("2.5.29.37", seq(oid("1.3.6.1.5.5.7.3.1"))),
        ],
    )
    paths = {n: os.path.join(out_dir, n) for n in ("ca.pem", "server.pem", "server.key")}
    for n, text in (("ca.pem", ca), ("server.pem", server), ("server.key", key.pem())):
        with open(paths[n], "w") as f:
            f.write(text)
    return paths


# --- The S3 side ---


def objects(root, prefix):
    """Every file under root whose key starts with prefix, sorted."""
    out = []
    for dirpath, _, files in os.walk(root):
        for f in files:
            path = os.path.join(dirpath, f)
            key = os.path.relpath(path, root).replace(os.sep, "/")
            if key.startswith(prefix) and ".pending-" not in key:
                out.append((key, os.path.getsize(path), os.path.getmtime(path)))
    out.sort()
    return out


def etag(data):
    return '"' + hashlib.md5(data).hexdigest() + '"'


def iso(mtime):
    t = datetime.datetime.fromtimestamp(mtime, datetime.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.000Z")


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    root = "."
    mode = "honest"
    suffix = ".manifest"

    def log_message(self, fmt, *args):
        sys.stderr.write("%s %s\n" % (self.mode, fmt % args))

    def reply(self, status, body=b"", headers=(), content_type="application/xml"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-amz-request-id", "hostile")
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def error(self, status, code, message):
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>{escape(message)}</Message><RequestId>hostile</RequestId></Error>"
        ).encode()
        self.reply(status, body)

    def split(self):
        url = urllib.parse.urlsplit(self.path)
        parts = url.path.lstrip("/").split("/", 1)
        bucket = urllib.parse.unquote(parts[0])
        key = urllib.parse.unquote(parts[1]) if len(parts) > 1 else ""
        query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        return bucket, key, query

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
        if form.get("Action") != "GetCallerIdentity":
            return self.error(501, "NotImplemented", f"the hostile server does not do {form.get('Action')}")
        body = (
            '<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
            "<GetCallerIdentityResult><Arn>arn:aws:iam::123456789012:user/hostile</Arn>"
            "<UserId>AIDAHOSTILE</UserId><Account>123456789012</Account></GetCallerIdentityResult>"
            "<ResponseMetadata><RequestId>hostile</RequestId></ResponseMetadata>"
            "</GetCallerIdentityResponse>"
        ).encode()
        self.reply(200, body, content_type="text/xml")

    def do_PUT(self):
        bucket, key, query = self.split()
        length = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(length)
        if "/audit/" not in key:
            return self.error(501, "NotImplemented", "the hostile server only takes audit segments")
        self.send_response(200)
        self.send_header("ETag", '"0"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        bucket, key, query = self.split()
        if not key and query.get("list-type") == "2":
            return self.list_objects(bucket, query)
        if not key:
            return self.error(501, "NotImplemented", "the hostile server only lists with ListObjectsV2")
        path = os.path.join(self.root, *key.split("/"))
        if ".." in key.split("/") or not os.path.isfile(path):
            return self.error(404, "NoSuchKey", "The specified key does not exist.")
        with open(path, "rb") as f:
            data = f.read()
        self.get_object(key, data, os.path.getmtime(path))

    def list_objects(self, bucket, query):
        prefix = query.get("prefix", "")
        found = [(k, s, m) for k, s, m in objects(self.root, prefix)]
        truncated, next_token = False, None
        if self.mode == "foreign-key":
            found.append((FOREIGN_KEY, 1000, time.time()))
        if self.mode == "repeat-token":
            # One object per page; every page says there is more, with the same token.
            page = 1 if "continuation-token" in query else 0
            found = found[page : page + 1]
            truncated, next_token = True, TOKEN
        contents = "".join(
            f"<Contents><Key>{escape(k)}</Key><LastModified>{iso(m)}</LastModified>"
            f'<ETag>"0"</ETag><Size>{s}</Size><StorageClass>STANDARD</StorageClass></Contents>'
            for k, s, m in found
        )
        token = query.get("continuation-token")
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            f"<Name>{escape(bucket)}</Name><Prefix>{escape(prefix)}</Prefix>"
            f"<KeyCount>{len(found)}</KeyCount><MaxKeys>1000</MaxKeys>"
            f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>"
            + (f"<ContinuationToken>{escape(token)}</ContinuationToken>" if token else "")
            + (f"<NextContinuationToken>{next_token}</NextContinuationToken>" if next_token else "")
            + contents
            + "</ListBucketResult>"
        ).encode()
        self.reply(200, body)

    def get_object(self, key, data, mtime):
        faulty = key.endswith(self.suffix) and self.mode not in ("honest", "foreign-key", "repeat-token")
        size = len(data)
        stored = data
        if faulty and self.mode == "short-body":
            stored = data[:SHORT]
        first, last = 0, len(stored) - 1
        ranged = self.headers.get("Range")
        if ranged:
            sys.stderr.write(f"range {key} {ranged}\n")
            lo, _, hi = ranged.removeprefix("bytes=").partition("-")
            first = int(lo)
            last = min(int(hi), len(stored) - 1) if hi else len(stored) - 1
            if first >= len(stored):
                return self.error(416, "InvalidRange", "The requested range is not satisfiable")
        body = stored[first : last + 1]
        headers = [
            ("ETag", etag(data)),
            ("Last-Modified", email.utils.formatdate(mtime, usegmt=True)),
            ("Accept-Ranges", "bytes"),
        ]
        if ranged:
            headers.append(("Content-Range", f"bytes {first}-{last}/{len(stored)}"))
        status = 206 if ranged else 200
        if not faulty or self.mode == "short-body":
            return self.reply(status, body, headers, "application/octet-stream")
        if self.mode == "long-body":
            return self.reply(status, body + b"\x00" * EXTRA, headers, "application/octet-stream")
        # The rest lie about the length: headers by hand, then the body.
        promised, sent = len(body), body
        if self.mode == "short-body-lying-length":
            cut = size // 2
            sent = data[first:cut] if first < cut else b""
        elif self.mode == "long-body-lying-length":
            sent = body + b"\x00" * EXTRA
        elif self.mode == "huge-manifest" and not ranged:
            promised = 1 << 40
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(promised))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        if self.command == "HEAD":
            return
        self.close_connection = True
        try:
            self.wfile.write(sent)
            if self.mode == "huge-manifest" and not ranged:
                zeros = b"\x00" * (1 << 16)
                streamed = len(sent)
                while streamed < promised:
                    self.wfile.write(zeros)
                    streamed += len(zeros)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            pass
        if self.mode == "short-body-lying-length":
            # End the connection with the body incomplete, cleanly (TLS
            # close_notify): the body is short, the transport is fine.
            try:
                self.connection.settimeout(5)
                self.connection.unwrap().close()
            except OSError:
                pass


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, context):
        self.context = context
        super().__init__(("127.0.0.1", 0), Handler)

    def get_request(self):
        sock, addr = self.socket.accept()
        # The TLS handshake happens in the request's own thread.
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request, client_address):
        sys.stderr.write(f"connection from {client_address} ended with an error\n")


def exit_with_parent(parent):
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(0)


def main():
    # Taken first: a parent that dies while the keys are made still counts.
    parent = os.getppid()
    cert_dir, repo_dir, mode = sys.argv[1:4]
    modes = (
        "honest", "foreign-key", "repeat-token", "short-body", "short-body-lying-length",
        "long-body", "long-body-lying-length", "huge-manifest",
    )
    if mode not in modes:
        sys.exit(f"unknown mode {mode!r}: expected one of {', '.join(modes)}")
    Handler.root, Handler.mode = repo_dir, mode
    if len(sys.argv) > 4:
        Handler.suffix = sys.argv[4]
    paths = make_certs(cert_dir)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(paths["server.pem"], paths["server.key"])
    server = Server(context)
    threading.Thread(target=exit_with_parent, args=(parent,), daemon=True).start()
    print(f"READY {server.server_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
