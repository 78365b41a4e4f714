#!/usr/bin/env python3
"""Independent reader for the vaultline repository format, written from FORMAT.md alone.

Commands:
  list    --repo DIR --key-file FILE
  restore --repo DIR --key-file FILE --host H --job J --snapshot ID --target DIR [--ranged]
  verify  --repo DIR --key-file FILE --host H --job J --snapshot ID [--ranged]

Exit codes: 0 ok, 1 other error, 2 usage, 3 not found, 4 key/provider error, 5 integrity error.
Only the `local` key provider (§6.1) is implemented; `aws-kms` objects are refused (exit 4).
"""
from __future__ import annotations

import argparse
import calendar
import time
import hashlib
import hmac
import io
import json
import os
import re
import shutil
import stat
import struct
import sys
import tempfile
from collections import OrderedDict

try:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
    import zstandard
except ImportError as e:  # pragma: no cover
    sys.stderr.write(f"error: missing dependency ({e}); run tests/run once to create .venv/ with tests/requirements.txt\n")
    sys.exit(1)

# --------------------------------------------------------------------------------------------
# errors

EXIT_OTHER, EXIT_USAGE, EXIT_NOTFOUND, EXIT_PROVIDER, EXIT_INTEGRITY = 1, 2, 3, 4, 5

PROVIDER_KINDS = {"KeyMismatch", "ProviderMismatch", "Provider", "UnsupportedProvider", "KeyFile"}


class VLError(Exception):
    def __init__(self, kind: str, msg: str, offset: int | None = None, obj: str | None = None):
        self.kind, self.msg, self.offset, self.obj = kind, msg, offset, obj
        super().__init__(self.__str__())

    @property
    def exit_code(self) -> int:
        if self.kind in PROVIDER_KINDS:
            return EXIT_PROVIDER
        if self.kind in ("NotFound",):
            return EXIT_NOTFOUND
        if self.kind in ("Usage",):
            return EXIT_USAGE
        if self.kind in ("Restore",):
            return EXIT_OTHER
        return EXIT_INTEGRITY

    def __str__(self):
        s = f"{self.kind}: {self.msg}"
        if self.offset is not None:
            s += f" (at byte {self.offset})"
        if self.obj:
            s += f" [object {self.obj}]"
        return s


def integrity(kind, msg, offset=None, obj=None):
    return VLError(kind, msg, offset, obj)


# --------------------------------------------------------------------------------------------
# primitives (§1, §3, §6.1)

def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    return hmac.new(salt, ikm, hashlib.sha256).digest()


def hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    out, t, i = b"", b"", 1
    while len(out) < length:
        t = hmac.new(prk, t + info + bytes([i]), hashlib.sha256).digest()
        out += t
        i += 1
    return out[:length]


def _rotl(v, c):
    return ((v << c) & 0xFFFFFFFF) | (v >> (32 - c))


def _qr(s, a, b, c, d):
    s[a] = (s[a] + s[b]) & 0xFFFFFFFF; s[d] = _rotl(s[d] ^ s[a], 16)
    s[c] = (s[c] + s[d]) & 0xFFFFFFFF; s[b] = _rotl(s[b] ^ s[c], 12)
    s[a] = (s[a] + s[b]) & 0xFFFFFFFF; s[d] = _rotl(s[d] ^ s[a], 8)
    s[c] = (s[c] + s[d]) & 0xFFFFFFFF; s[b] = _rotl(s[b] ^ s[c], 7)


def hchacha20(key: bytes, nonce16: bytes) -> bytes:
    s = (list(struct.unpack("<4I", b"expand 32-byte k")) + list(struct.unpack("<8I", key))
         + list(struct.unpack("<4I", nonce16)))
    for _ in range(10):
        _qr(s, 0, 4, 8, 12); _qr(s, 1, 5, 9, 13); _qr(s, 2, 6, 10, 14); _qr(s, 3, 7, 11, 15)
        _qr(s, 0, 5, 10, 15); _qr(s, 1, 6, 11, 12); _qr(s, 2, 7, 8, 13); _qr(s, 3, 4, 9, 14)
    return struct.pack("<8I", *(s[0:4] + s[12:16]))


def xchacha20poly1305_open(key: bytes, nonce24: bytes, ct_and_tag: bytes, aad: bytes) -> bytes:
    sub = hchacha20(key, nonce24[:16])
    return ChaCha20Poly1305(sub).decrypt(b"\x00" * 4 + nonce24[16:], ct_and_tag, aad)


def stream_nonce(i: int, final: bool) -> bytes:
    return b"\x00\x00\x00" + struct.pack(">Q", i) + (b"\x01" if final else b"\x00")


# --------------------------------------------------------------------------------------------
# local key provider (§6.1, §15 key file)

class LocalKey:
    def __init__(self, path: str):
        try:
            with open(path, "rb") as f:
                raw = f.read(4096)
        except OSError as e:
            raise VLError("KeyFile", f"cannot read key file {path}: {e}")
        try:
            text = raw.decode("ascii").strip()
        except UnicodeDecodeError:
            raise VLError("KeyFile", "key file is not ASCII")
        parts = text.split(" ")
        if len(parts) != 2 or parts[0] != "vaultline-master-key-v1" or not re.fullmatch(r"[0-9a-fA-F]{64}", parts[1]):
            raise VLError("KeyFile", "key file is not 'vaultline-master-key-v1 <64 hex digits>'")
        mk = bytes.fromhex(parts[1])
        prk = hkdf_extract(b"\x00" * 32, mk)
        self.fingerprint = hkdf_expand(prk, b"vaultline v1 local key fingerprint", 16).hex()
        self.wrap_key = hkdf_expand(prk, b"vaultline v1 local wrap key", 32)

    def unwrap(self, provider: str, key_id: str, wrapped: bytes, ctx_bytes: bytes, obj: str) -> bytes:
        # §6.1 unwrapping checks, in order
        if provider != "local":
            raise VLError("ProviderMismatch", f"object is sealed with provider '{provider}', this reader has 'local'", obj=obj)
        if key_id != self.fingerprint:
            raise VLError("KeyMismatch", f"sealed with local key {key_id}, you have {self.fingerprint}", obj=obj)
        if len(wrapped) != 73 or wrapped[0] != 0x01:
            raise integrity("MalformedWrappedKey", f"wrapped key is {len(wrapped)} bytes / layout {wrapped[:1].hex()}", obj=obj)
        aad = b"vaultline v1 local wrap\x00" + ctx_bytes
        try:
            dk = xchacha20poly1305_open(self.wrap_key, wrapped[1:25], wrapped[25:73], aad)
        except InvalidTag:
            raise integrity("UnwrapFailed", "wrapped data key does not open under this key and context", obj=obj)
        if len(dk) != 32:
            raise integrity("UnwrapFailed", "unwrapped data key is not 32 bytes", obj=obj)
        return dk


# --------------------------------------------------------------------------------------------
# sealed objects (§2-§5, §7)

MAGIC = bytes.fromhex("89564c540d0a1a0a")
PROVIDER_RE = re.compile(rb"[a-z0-9-]{1,64}")


class SealedObject:
    """One sealed object on disk. open_header() performs §7 checks 1-7 (plus the §4 context check
    between 4 and 5); then either iter_chunks() (checks 8-14, whole object) or read_chunk()
    (ranged access, §5.3 / §13.1)."""

    def __init__(self, path: str, name: str):
        self.path, self.name = path, name
        try:
            self.f = open(path, "rb")
        except FileNotFoundError:
            raise VLError("NotFound", f"object missing: {name}")
        self.size = os.fstat(self.f.fileno()).st_size
        self.payload_key = None

    def close(self):
        self.f.close()

    def pread(self, off: int, n: int) -> bytes:
        return os.pread(self.f.fileno(), n, off)

    # -- header --------------------------------------------------------------------------------
    def parse_header(self):
        head = self.pread(0, min(self.size, 65536))
        pos = 0
        obj = self.name

        def take(n, field):
            nonlocal pos
            if pos + n > len(head):
                raise integrity("HeaderTruncated", f"header field '{field}' incomplete", obj=obj)
            b = head[pos:pos + n]
            pos += n
            return b

        def malformed(msg):
            return integrity("MalformedHeader", msg, obj=obj)

        if take(8, "magic") != MAGIC:
            raise integrity("BadMagic", "not a sealed object (bad magic)", obj=obj)
        ver = struct.unpack(">H", take(2, "version"))[0]
        if ver != 1:
            raise integrity("UnsupportedVersion", f"version {ver}", obj=obj)
        C = struct.unpack(">I", take(4, "chunk size"))[0]
        if not (1024 <= C <= 16777216) or C & (C - 1):
            raise malformed(f"chunk size {C}")
        salt = take(32, "salt")
        commitment = take(32, "commitment")
        ctx_start = pos
        n = struct.unpack(">H", take(2, "context count"))[0]
        if n > 32:
            raise malformed(f"context has {n} entries")
        ctx = OrderedDict()
        prev = None
        for _ in range(n):
            klen = struct.unpack(">H", take(2, "context key length"))[0]
            if not 1 <= klen <= 256:
                raise malformed(f"context key length {klen}")
            kb = take(klen, "context key")
            try:
                k = kb.decode("utf-8")
            except UnicodeDecodeError:
                raise malformed("context key is not UTF-8")
            if prev is not None and not (kb > prev):
                raise malformed("context keys not in strictly increasing order")
            prev = kb
            vlen = struct.unpack(">H", take(2, "context value length"))[0]
            if vlen > 1024:
                raise malformed(f"context value length {vlen}")
            vb = take(vlen, "context value")
            try:
                ctx[k] = vb.decode("utf-8")
            except UnicodeDecodeError:
                raise malformed("context value is not UTF-8")
        A = pos
        mac = take(32, "header MAC")
        P = take(1, "provider length")[0]
        if not 1 <= P <= 64:
            raise malformed(f"provider length {P}")
        prov = take(P, "provider id")
        if not PROVIDER_RE.fullmatch(prov):
            raise malformed("provider id is not [a-z0-9-]")
        K = struct.unpack(">H", take(2, "key id length"))[0]
        if not 1 <= K <= 2048:
            raise malformed(f"key id length {K}")
        try:
            key_id = take(K, "key id").decode("utf-8")
        except UnicodeDecodeError:
            raise malformed("key id is not UTF-8")
        W = struct.unpack(">H", take(2, "wrapped key length"))[0]
        if not 1 <= W <= 8192:
            raise malformed(f"wrapped key length {W}")
        wrapped = take(W, "wrapped key")
        self.C, self.salt, self.commitment = C, salt, commitment
        self.ctx, self.ctx_bytes, self.A = ctx, head[ctx_start:A], A
        self.header_auth = head[:A]
        self.mac, self.provider, self.key_id, self.wrapped = mac, prov.decode(), key_id, wrapped
        self.H = pos

    def open_header(self, key: LocalKey, expected_ctx: dict, envelope: dict | None = None):
        self.parse_header()                                   # checks 1-4
        if dict(self.ctx) != expected_ctx:                    # §4 / §12 repository-layer check
            raise integrity("ContextMismatch",
                            f"authenticated context {dict(self.ctx)} differs from the one its name implies {expected_ctx}",
                            obj=self.name)
        if envelope is not None:                              # §8 rule 2: the table's copy is authoritative
            prov, kid, wr = envelope["provider"], envelope["key_id"], envelope["wrapped"]
        else:
            prov, kid, wr = self.provider, self.key_id, self.wrapped
        dk = key.unwrap(prov, kid, wr, self.ctx_bytes, self.name)   # check 5
        prk = hkdf_extract(self.salt, dk)
        commitment = hkdf_expand(prk, b"vaultline v1 key commitment", 32)
        if not hmac.compare_digest(commitment, self.commitment):     # check 6
            raise integrity("WrongKey", "data key does not match the header's commitment", obj=self.name)
        mac_key = hkdf_expand(prk, b"vaultline v1 header mac key", 32)
        if not hmac.compare_digest(hmac.new(mac_key, self.header_auth, hashlib.sha256).digest(), self.mac):  # check 7
            raise integrity("HeaderTampered", "header MAC mismatch", obj=self.name)
        self.payload_key = hkdf_expand(prk, b"vaultline v1 payload key", 32)
        self.aead = ChaCha20Poly1305(self.payload_key)
        self.payload_offset = self.H + 16

    def check_binding(self):                                  # check 8
        b = self.pread(self.H, 16)
        if len(b) < 16:
            raise integrity("Truncated", "binding tag incomplete", offset=self.size, obj=self.name)
        if b != self.mac[:16]:
            raise integrity("PayloadMismatch", "binding tag does not match the header MAC", offset=self.H, obj=self.name)

    # -- chunks --------------------------------------------------------------------------------
    def _try_open(self, i, final, body):
        try:
            return self.aead.decrypt(stream_nonce(i, final), body, b"")
        except InvalidTag:
            return None

    def _name_failure(self, i, final, body, frame_off):
        # §7 "Naming a failed chunk"
        for j in range(max(0, i - 1024), i + 1025):
            if j == i:
                continue
            if self._try_open(j, final, body) is not None:
                if j < i:
                    return integrity("ChunkReplayed", f"chunk {i} is a copy of chunk {j}", offset=frame_off, obj=self.name)
                return integrity("ChunkOutOfOrder", f"chunk {i} opens as chunk {j}", offset=frame_off, obj=self.name)
        return integrity("ChunkTampered", f"chunk {i} does not authenticate", offset=frame_off, obj=self.name)

    def iter_chunks(self):
        """Whole-object read: yields each chunk's plaintext after it authenticated (checks 8-14)."""
        self.check_binding()
        C, size = self.C, self.size
        f = self.f
        f.seek(self.payload_offset)
        p, i = self.payload_offset, 0
        while True:
            fw_b = f.read(4)
            if len(fw_b) < 4:                                                    # 9
                raise integrity("Truncated", f"frame word of chunk {i} missing", offset=size, obj=self.name)
            fw = struct.unpack(">I", fw_b)[0]
            final, ln = bool(fw >> 31), fw & 0x7FFFFFFF
            if ln > C or (not final and ln != C):                                 # 10
                raise integrity("MalformedChunk", f"chunk {i} frame: final={final} len={ln}", offset=p, obj=self.name)
            body = f.read(ln + 16)
            if len(body) < ln + 16:                                               # 11
                raise integrity("Truncated", f"chunk {i} incomplete", offset=size, obj=self.name)
            pt = self._try_open(i, final, body)                                   # 12
            if pt is None:
                raise self._name_failure(i, final, body, p)
            if final and ln == 0 and i != 0:                                      # 13
                raise integrity("EmptyFinalChunk", f"empty final chunk {i}", offset=p, obj=self.name)
            end = p + 4 + ln + 16
            if final:                                                             # 14
                if end != size:
                    raise self._trailing(i, end)
                yield pt
                return
            yield pt
            p, i = end, i + 1

    def _trailing(self, i, end):
        rest = self.pread(end, 4)
        if len(rest) == 4:
            fw = struct.unpack(">I", rest)[0]
            ln = fw & 0x7FFFFFFF
            if fw >> 31 and ln <= self.C:
                body = self.pread(end + 4, ln + 16)
                if len(body) == ln + 16:
                    for j in range(max(0, i + 1 - 1024), i + 1 + 1025):
                        if self._try_open(j, True, body) is not None:
                            return integrity("MultipleFinalChunks", "a second final chunk follows", offset=end, obj=self.name)
        return integrity("TrailingData", "data after the final chunk", offset=end, obj=self.name)

    def chunk_count_for(self, plain_len: int) -> int:
        return max(1, -(-plain_len // self.C))

    def read_chunk(self, k: int, nchunks: int, plain_len: int) -> bytes:
        """Ranged read of chunk k of an object whose plaintext length is known (§5.3, §13.1 step 2)."""
        C = self.C
        off = self.payload_offset + k * (C + 20)
        fw_b = self.pread(off, 4)
        if len(fw_b) < 4:
            raise integrity("Truncated", f"frame word of chunk {k} missing", offset=self.size, obj=self.name)
        fw = struct.unpack(">I", fw_b)[0]
        final, ln = bool(fw >> 31), fw & 0x7FFFFFFF
        if ln > C or (not final and ln != C):
            raise integrity("MalformedChunk", f"chunk {k} frame: final={final} len={ln}", offset=off, obj=self.name)
        body = self.pread(off + 4, ln + 16)
        if len(body) < ln + 16:
            raise integrity("Truncated", f"chunk {k} incomplete", offset=self.size, obj=self.name)
        pt = self._try_open(k, final, body)
        if pt is None:
            raise self._name_failure(k, final, body, off)
        if final and ln == 0 and k != 0:
            raise integrity("EmptyFinalChunk", f"empty final chunk {k}", offset=off, obj=self.name)
        want_final = (k == nchunks - 1)
        want_len = plain_len - k * C if want_final else C
        if final != want_final or ln != want_len:
            raise integrity("MalformedChunk",
                            f"chunk {k}: final={final} len={ln}, the table's sizes imply final={want_final} len={want_len}",
                            offset=off, obj=self.name)
        return pt


# --------------------------------------------------------------------------------------------
# zstd helpers

def zstd_frame_exact(data: bytes, expected_len: int | None, what: str, obj: str, limit: int = 1 << 30) -> bytes:
    """Decompress exactly one complete zstd frame occupying all of `data`."""
    d = zstandard.ZstdDecompressor().decompressobj()
    out = []
    total = 0
    cap = expected_len if expected_len is not None else limit
    try:
        mv = memoryview(data)
        for s in range(0, len(mv), 4096):
            if d.eof:
                break
            o = d.decompress(mv[s:s + 4096])
            total += len(o)
            if total > cap:
                raise integrity("BadFrame", f"{what}: decompresses to more than {cap} bytes", obj=obj)
            out.append(o)
            if d.eof and s + 4096 < len(mv):
                raise integrity("BadFrame", f"{what}: data after the end of the zstd frame", obj=obj)
    except zstandard.ZstdError as e:
        raise integrity("BadFrame", f"{what}: zstd error: {e}", obj=obj)
    if not d.eof:
        raise integrity("BadFrame", f"{what}: incomplete zstd frame", obj=obj)
    if d.unused_data:
        raise integrity("BadFrame", f"{what}: data after the end of the zstd frame", obj=obj)
    res = b"".join(out)
    if expected_len is not None and len(res) != expected_len:
        raise integrity("BadFrame", f"{what}: decompressed to {len(res)} bytes, expected {expected_len}", obj=obj)
    return res


MAX_LINE = 8 * 1024 * 1024


def zstd_lines(chunks_iter, what: str, obj: str, multi_frame: bool = True):
    """Decompress a zstd stream given as an iterator of byte strings; yield '\\n'-terminated lines
    (without the newline), each at most 8 MiB."""
    dctx = zstandard.ZstdDecompressor()
    d = dctx.decompressobj()
    pending = bytearray()
    started = False
    frames = 0
    try:
        for chunk in chunks_iter:
            mv = memoryview(chunk)
            s = 0
            while s < len(mv):
                piece = mv[s:s + 4096]
                s += len(piece)
                if d.eof:
                    if not multi_frame:
                        raise integrity("BadFrame", f"{what}: data after the zstd frame", obj=obj)
                    rest = bytes(d.unused_data) + bytes(piece)
                    d = dctx.decompressobj()
                    piece = memoryview(rest)
                started = True
                o = d.decompress(piece)
                if d.eof:
                    frames += 1
                pending += o
                while True:
                    nl = pending.find(b"\n")
                    if nl < 0:
                        break
                    if nl > MAX_LINE:
                        raise integrity("ManifestLine", f"{what}: line longer than 8 MiB", obj=obj)
                    line = bytes(pending[:nl])
                    del pending[:nl + 1]
                    yield line
                if len(pending) > MAX_LINE:
                    raise integrity("ManifestLine", f"{what}: line longer than 8 MiB", obj=obj)
        # handle a frame that ended exactly with unused data left (multi-frame)
        while d.eof and d.unused_data:
            if not multi_frame:
                raise integrity("BadFrame", f"{what}: data after the zstd frame", obj=obj)
            rest = bytes(d.unused_data)
            d = dctx.decompressobj()
            o = d.decompress(rest)
            pending += o
            while True:
                nl = pending.find(b"\n")
                if nl < 0:
                    break
                line = bytes(pending[:nl]); del pending[:nl + 1]
                yield line
    except zstandard.ZstdError as e:
        raise integrity("BadFrame", f"{what}: zstd error: {e}", obj=obj)
    if not started or not d.eof:
        raise integrity("BadFrame", f"{what}: incomplete zstd stream", obj=obj)
    if pending:
        raise integrity("ManifestLine", f"{what}: last line is not newline-terminated", obj=obj)


# --------------------------------------------------------------------------------------------
# JSON helpers

def _no_dupes(pairs):
    d = {}
    for k, v in pairs:
        if k in d:
            raise ValueError(f"duplicate key {k!r}")
        d[k] = v
    return d


def _bad_const(c):
    raise ValueError(f"invalid constant {c}")


def parse_json_line(line: bytes, what: str, obj: str):
    try:
        v = json.loads(line.decode("utf-8"), object_pairs_hook=_no_dupes, parse_constant=_bad_const)
    except (UnicodeDecodeError, ValueError) as e:
        raise integrity("ManifestSyntax", f"{what}: invalid JSON line: {e}", obj=obj)
    if not isinstance(v, dict):
        raise integrity("ManifestSyntax", f"{what}: line is not a JSON object", obj=obj)
    return v


def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def merr(msg, obj=None):
    return VLError("ManifestInvalid", msg, obj=obj)


def want_int(d, k, lo=None, hi=None, ctx="", obj=None):
    v = d[k]
    if not is_int(v) or (lo is not None and v < lo) or (hi is not None and v > hi):
        raise merr(f"{ctx}field '{k}' = {v!r} is not an integer in [{lo}, {hi}]", obj)
    return v


def want_str(d, k, ctx="", obj=None):
    v = d[k]
    if not isinstance(v, str):
        raise merr(f"{ctx}field '{k}' is not a string", obj)
    return v


def path_value(v, what, obj):
    """A manifest path/target: a string, or {"hex": "..."} for non-UTF-8 bytes. Returns bytes."""
    if isinstance(v, str):
        return v.encode("utf-8")
    if isinstance(v, dict) and set(v) == {"hex"} and isinstance(v["hex"], str) and re.fullmatch(r"(?:[0-9a-fA-F]{2})*", v["hex"]):
        return bytes.fromhex(v["hex"])
    raise merr(f"{what} is neither a string nor {{\"hex\": ...}}", obj)


def walk_key(p: bytes):
    return p.split(b"/")


def fnv1a64(b: bytes) -> int:
    h = 0xCBF29CE484222325
    for x in b:
        h ^= x
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


# --------------------------------------------------------------------------------------------
# repository layer (§12)

SNAP_RE = re.compile(r"(\d{8})T(\d{6})Z-([0-9a-f]{3})([0-9a-f]{5})")
NAME_RE = re.compile(r"[^/\x00]+")


def check_name(kind, v):
    if not NAME_RE.fullmatch(v) or v in (".", ".."):
        raise VLError("Usage", f"invalid {kind} name {v!r}")


def check_snapshot_id(v):
    m = SNAP_RE.fullmatch(v)
    if not m or int(m.group(3), 16) > 999:
        raise VLError("Usage", f"invalid snapshot id {v!r}")


class Repo:
    def __init__(self, root: str, prefix: str, key: LocalKey):
        self.root, self.prefix, self.key = root, prefix, key
        self.base = os.path.join(root, prefix)
        if not os.path.isdir(self.base):
            raise VLError("NotFound", f"no repository prefix '{prefix}' under {root}")
        self.check_marker()

    def check_marker(self):
        p = os.path.join(self.base, "repository.json")
        try:
            with open(p, "rb") as f:
                m = json.loads(f.read().decode("utf-8"))
        except FileNotFoundError:
            warn(f"no {self.prefix}/repository.json marker")
            return
        except (ValueError, UnicodeDecodeError) as e:
            warn(f"unreadable repository marker: {e}")
            return
        prov, kid = m.get("key_provider"), m.get("key_id")
        if prov != "local":
            raise VLError("UnsupportedProvider", f"repository is sealed with provider {prov!r}; this reader implements 'local' only")
        if kid != self.key.fingerprint:
            raise VLError("KeyMismatch", f"this repository was sealed with local key {kid}, but the configured key is local key {self.key.fingerprint}")

    def objpath(self, name: str) -> str:
        return os.path.join(self.root, *name.split("/"))

    def ctx_for(self, host, job, kind, name, snapshot):
        return {"format": "1", "host": host, "job": job, "kind": kind, "object": name, "snapshot": snapshot}

    def list(self):
        out = []
        for host in sorted(os.listdir(self.base)):
            hp = os.path.join(self.base, host)
            if not os.path.isdir(hp):
                continue
            for job in sorted(os.listdir(hp)):
                jp = os.path.join(hp, job)
                if not os.path.isdir(jp):
                    continue
                has_snaps = os.path.isdir(os.path.join(jp, "snapshots"))
                if not (has_snaps or os.path.isdir(os.path.join(jp, "archives"))):
                    continue  # e.g. audit/TRAIL
                if not has_snaps:
                    continue
                snaps = []
                for fn in os.listdir(os.path.join(jp, "snapshots")):
                    if not fn.endswith(".manifest"):
                        continue
                    sid = fn[:-len(".manifest")]
                    m = SNAP_RE.fullmatch(sid)
                    if not m:
                        warn(f"ignoring {host}/{job}/snapshots/{fn}: not a snapshot id")
                        continue
                    t = calendar.timegm(time.strptime(m.group(1) + m.group(2), "%Y%m%d%H%M%S")) + int(m.group(3), 16) / 1000
                    recorded = os.stat(os.path.join(jp, "snapshots", fn)).st_mtime
                    if t > recorded + 15 * 60:
                        warn(f"{host}/{job}/{sid} is future-dated (id claims {t - recorded:.0f}s after the recorded time)")
                    snaps.append((min(t, recorded), sid))
                for _, sid in sorted(snaps):
                    out.append(f"{host}/{job}/{sid}")
        return out


def warn(msg):
    sys.stderr.write(f"warning: {msg}\n")


# --------------------------------------------------------------------------------------------
# manifest (§14)

HEADER_FIELDS = {"vaultline_manifest", "snapshot", "host", "job", "parent", "chain", "full_started", "started", "paths"}
SEGMENT_FIELDS = {"nodes", "offset", "length", "entries", "first"}
NODE_FIELDS = {"object", "snapshot", "envelope", "size", "plain_size"}
ARCHIVE_FIELDS = {"object", "snapshot", "envelope", "size", "plain_size", "frame_size", "frames"}
ENVELOPE_FIELDS = {"provider", "key_id", "wrapped"}
END_FIELDS = {"finished", "files", "dirs", "symlinks", "hardlinks", "specials", "bytes", "skipped",
              "archived_files", "archived_bytes", "reused", "deleted", "new_bytes", "new_segments"}
ENTRY_FIELDS_2 = {"path", "type", "size", "mode", "uid", "gid", "mtime", "mtime_nsec", "target", "linked",
                  "archive", "offset"}
ENTRY_FIELDS_3 = ENTRY_FIELDS_2 | {"dev_major", "dev_minor", "sparse", "xattrs"}
ENTRY_FIELDS_4 = ENTRY_FIELDS_3 | {"chunks"}
TYPES_2 = {"file", "dir", "symlink", "hardlink"}
TYPES_3 = TYPES_2 | {"fifo", "chardev", "blockdev"}
MAX_CHUNK = 4 * 1024 * 1024
MAX_CHUNKS_PER_FILE = 1 << 21


class Entry:
    __slots__ = ("path", "type", "size", "mode", "uid", "gid", "mtime", "nsec", "target", "linked",
                 "dev_major", "dev_minor", "sparse", "xattrs", "archive", "offset", "chunks", "raw")


class Manifest:
    def __init__(self):
        self.header = None
        self.schema = None
        self.entries: list[Entry] = []
        self.deleted: list[bytes] = []
        self.segments = []
        self.nodes = None
        self.archives = None
        self.end = None


def check_envelope(env, what, obj):
    if not isinstance(env, dict) or set(env) != ENVELOPE_FIELDS:
        raise merr(f"{what}: envelope must have exactly {sorted(ENVELOPE_FIELDS)}", obj)
    for k in ENVELOPE_FIELDS:
        if not isinstance(env[k], str):
            raise merr(f"{what}: envelope field {k} is not a string", obj)
    if not re.fullmatch(r"(?:[0-9a-f]{2})+", env["wrapped"]):
        raise merr(f"{what}: envelope 'wrapped' is not hex", obj)
    return {"provider": env["provider"], "key_id": env["key_id"], "wrapped": bytes.fromhex(env["wrapped"])}


class SnapshotReader:
    def __init__(self, repo: Repo, host: str, job: str, snap: str, ranged: bool = False):
        check_name("host", host); check_name("job", job); check_snapshot_id(snap)
        self.repo, self.host, self.job, self.snap, self.ranged = repo, host, job, snap, ranged
        self.prefix = repo.prefix
        self.mname = f"{self.prefix}/{host}/{job}/snapshots/{snap}.manifest"
        self.warnings = []

    # -- object naming -------------------------------------------------------------------------
    def _table_object(self, kind, rec, idx):
        name, snap = rec["object"], rec["snapshot"]
        if kind == "archive":
            m = re.fullmatch(re.escape(f"{self.prefix}/{self.host}/{self.job}/archives/") + r"([^/]+)/(\d+)\.archive", name)
        else:
            m = re.fullmatch(re.escape(f"{self.prefix}/{self.host}/{self.job}/nodes/") + r"([^/]+)\.nodes", name)
        if not m:
            raise merr(f"{kind} table slot {idx}: object name {name!r} is not a {kind} of {self.host}/{self.job}", self.mname)
        if m.group(1) != snap:
            raise merr(f"{kind} table slot {idx}: object {name!r} is not named after its snapshot {snap!r}", self.mname)
        try:
            check_snapshot_id(snap)
        except VLError:
            raise merr(f"{kind} table slot {idx}: bad snapshot id {snap!r}", self.mname)
        return name, snap

    def open_sealed(self, name, kind, snap, envelope=None, expected_size=None):
        so = SealedObject(self.repo.objpath(name), name)
        if expected_size is not None and so.size != expected_size:
            so.close()
            raise integrity("SizeMismatch", f"object is {so.size} bytes, the manifest's table says {expected_size}", obj=name)
        so.open_header(self.repo.key, self.repo.ctx_for(self.host, self.job, kind, name, snap), envelope)
        return so

    # -- manifest ------------------------------------------------------------------------------
    def load(self):
        so = self.open_sealed(self.mname, "manifest", self.snap)
        try:
            lines = zstd_lines(so.iter_chunks(), "manifest", self.mname)
            self._parse_manifest(lines)
        finally:
            so.close()
        self._load_entries()
        self._check_end()
        return self.m

    def _parse_manifest(self, lines):
        obj = self.mname
        m = Manifest()
        self.m = m
        state = "header"
        for n, raw in enumerate(lines, 1):
            if state == "done":
                raise merr("data after the end record", obj)
            d = parse_json_line(raw, f"manifest line {n}", obj)
            if state == "header":
                if "vaultline_manifest" not in d:
                    raise merr("first line is not a manifest header", obj)
                unknown = set(d) - HEADER_FIELDS
                if unknown:
                    raise merr(f"header: unknown fields {sorted(unknown)}", obj)
                schema = d["vaultline_manifest"]
                if schema not in (2, 3, 4) or not is_int(schema):
                    raise merr(f"unsupported manifest schema {schema!r}", obj)
                for k in ("snapshot", "host", "job"):
                    if k not in d:
                        raise merr(f"header: missing '{k}'", obj)
                if (d["snapshot"], d["host"], d["job"]) != (self.snap, self.host, self.job):
                    raise integrity("ManifestMismatch",
                                    f"manifest header names {d['host']}/{d['job']}/{d['snapshot']}", obj=obj)
                if "paths" in d and (not isinstance(d["paths"], list) or not all(isinstance(p, str) for p in d["paths"])):
                    raise merr("header: 'paths' is not a list of strings", obj)
                if "parent" in d and d["parent"] is not None and not isinstance(d["parent"], str):
                    raise merr("header: 'parent' is not a string or null", obj)
                if "chain" in d and (not is_int(d["chain"]) or d["chain"] < 0):
                    raise merr("header: 'chain' is not a non-negative integer", obj)
                m.header, m.schema = d, schema
                state = "body"
                continue
            if "path" in d:
                key = "path"
            elif len(d) == 1 and next(iter(d)) in ("segment", "deleted", "nodes", "archives", "end", "c"):
                key = next(iter(d))
            else:
                raise merr(f"manifest line {n}: unrecognised line with fields {sorted(d)}", obj)
            if key == "deleted":
                if state != "body":
                    raise merr(f"manifest line {n}: deletion after a table", obj)
                m.deleted.append(path_value(d["deleted"], f"line {n} deleted", obj))
            elif key == "segment":
                if m.schema != 4:
                    raise merr(f"manifest line {n}: segment reference in a schema {m.schema} manifest", obj)
                if state != "body":
                    raise merr(f"manifest line {n}: segment after a table", obj)
                s = d["segment"]
                if not isinstance(s, dict) or set(s) != SEGMENT_FIELDS:
                    raise merr(f"manifest line {n}: segment must have exactly {sorted(SEGMENT_FIELDS)}", obj)
                ctx = f"segment on line {n}: "
                want_int(s, "nodes", 0, 127, ctx, obj); want_int(s, "offset", 0, None, ctx, obj)
                want_int(s, "length", 1, None, ctx, obj); want_int(s, "entries", 1, 16384, ctx, obj)
                s = dict(s)
                s["first_b"] = path_value(s["first"], ctx + "first", obj)
                m.segments.append(s)
            elif key == "path":
                if m.schema == 4:
                    raise merr(f"manifest line {n}: entry line in a schema 4 manifest", obj)
                if state != "body":
                    raise merr(f"manifest line {n}: entry after a table", obj)
                m.entries.append(self._entry(d, f"manifest line {n}: ", obj))
            elif key == "c":
                raise merr(f"manifest line {n}: chunk line outside a segment", obj)
            elif key == "nodes":
                if m.schema != 4:
                    raise merr(f"manifest line {n}: node-pack table in a schema {m.schema} manifest", obj)
                if state != "body":
                    raise merr(f"manifest line {n}: node-pack table out of place", obj)
                m.nodes = self._table(d["nodes"], "nodes", NODE_FIELDS, obj)
                state = "nodes"
            elif key == "archives":
                if state != ("nodes" if m.schema == 4 else "body"):
                    raise merr(f"manifest line {n}: archive table out of place", obj)
                m.archives = self._table(d["archives"], "archive", ARCHIVE_FIELDS, obj)
                state = "archives"
            elif key == "end":
                if state != "archives":
                    raise merr(f"manifest line {n}: end record before the archive table", obj)
                e = d["end"]
                if not isinstance(e, dict):
                    raise merr("end record is not an object", obj)
                unknown = set(e) - END_FIELDS
                if unknown:
                    raise merr(f"end record: unknown fields {sorted(unknown)}", obj)
                for k, v in e.items():
                    if k != "finished" and (not is_int(v) or v < 0):
                        raise merr(f"end record: '{k}' is not a non-negative integer", obj)
                m.end = e
                state = "done"
            else:
                raise merr(f"manifest line {n}: unknown line {sorted(d)}", obj)
        if state == "header":
            raise merr("empty manifest", obj)
        if state != "done":
            raise merr("missing end record", obj)

    def _table(self, t, kind, fields, obj):
        if not isinstance(t, list):
            raise merr(f"{kind} table is not a list", obj)
        if len(t) > 128:
            raise merr(f"{kind} table has {len(t)} slots (max 128)", obj)
        out = []
        for i, rec in enumerate(t):
            if rec is None:
                out.append(None)
                continue
            if not isinstance(rec, dict):
                raise merr(f"{kind} table slot {i} is not an object", obj)
            missing, unknown = fields - set(rec), set(rec) - fields
            if missing or unknown:
                raise merr(f"{kind} table slot {i}: missing {sorted(missing)} unknown {sorted(unknown)}", obj)
            ctx = f"{kind} table slot {i}: "
            want_str(rec, "object", ctx, obj); want_str(rec, "snapshot", ctx, obj)
            want_int(rec, "size", 1, None, ctx, obj); want_int(rec, "plain_size", 0, None, ctx, obj)
            r = dict(rec)
            r["name"], r["snap"] = self._table_object(kind, rec, i)
            r["env"] = check_envelope(rec["envelope"], ctx, obj)
            if kind == "archive":
                fs = want_int(rec, "frame_size", 1, 64 * 1024 * 1024, ctx, obj)
                fr = rec["frames"]
                if not isinstance(fr, list) or not all(is_int(x) and x >= 1 for x in fr):
                    raise merr(ctx + "frames is not a list of positive integers", obj)
                n = -(-rec["plain_size"] // fs)
                if len(fr) != n:
                    raise merr(ctx + f"frame table holds {len(fr)} lengths, ceil(plain_size/frame_size) = {n}", obj)
                if len(fr) > rec["plain_size"]:
                    raise merr(ctx + "more frames than bytes", obj)
                if sum(fr) > rec["size"]:
                    raise merr(ctx + "frames add up to more than the sealed size", obj)
                starts = [0]
                for x in fr:
                    starts.append(starts[-1] + x)
                r["cstarts"] = starts
            out.append(r)
        return out

    def _entry(self, d, ctx, obj):
        schema = self.m.schema
        allowed = ENTRY_FIELDS_4 if schema == 4 else ENTRY_FIELDS_3 if schema == 3 else ENTRY_FIELDS_2
        unknown = set(d) - allowed
        if unknown:
            raise merr(ctx + f"entry has unknown fields {sorted(unknown)}", obj)
        for k in ("path", "type", "mode", "uid", "gid", "mtime"):
            if k not in d:
                raise merr(ctx + f"entry lacks '{k}'", obj)
        e = Entry()
        e.raw = d
        e.path = path_value(d["path"], ctx + "path", obj)
        ctx = ctx + f"entry {e.path!r}: "
        check_rel_path(e.path, ctx, obj)
        t = d["type"]
        if t not in (TYPES_3 if schema >= 3 else TYPES_2):
            raise merr(ctx + f"unknown type {t!r}", obj)
        e.type = t
        e.mode = want_int(d, "mode", 0, 0o7777, ctx, obj)
        e.uid = want_int(d, "uid", 0, 0xFFFFFFFF, ctx, obj)
        e.gid = want_int(d, "gid", 0, 0xFFFFFFFF, ctx, obj)
        e.mtime = want_int(d, "mtime", None, None, ctx, obj)
        e.nsec = want_int(d, "mtime_nsec", 0, 999_999_999, ctx, obj) if "mtime_nsec" in d else 0
        e.size = want_int(d, "size", 0, None, ctx, obj) if "size" in d else 0
        if "size" in d and t != "file":
            raise merr(ctx + "'size' on a non-file", obj)
        e.target = None
        if t in ("symlink", "hardlink"):
            if "target" not in d:
                raise merr(ctx + "missing 'target'", obj)
            e.target = path_value(d["target"], ctx + "target", obj)
            if not e.target or b"\x00" in e.target:
                raise merr(ctx + "empty or NUL-containing target", obj)
        elif "target" in d:
            raise merr(ctx + "'target' on a " + t, obj)
        e.linked = False
        if "linked" in d:
            if d["linked"] is not True or t in ("dir", "hardlink"):
                raise merr(ctx + "bad 'linked'", obj)
            e.linked = True
        e.dev_major = e.dev_minor = 0
        for k in ("dev_major", "dev_minor"):
            if k in d:
                if t not in ("chardev", "blockdev"):
                    raise merr(ctx + f"'{k}' on a {t}", obj)
                setattr(e, k, want_int(d, k, 0, 0xFFFFFFFF, ctx, obj))
        e.sparse = False
        if "sparse" in d:
            if d["sparse"] is not True or t != "file":
                raise merr(ctx + "bad 'sparse'", obj)
            e.sparse = True
        e.xattrs = {}
        if "xattrs" in d:
            xa = d["xattrs"]
            if t == "hardlink" or not isinstance(xa, dict):
                raise merr(ctx + "bad 'xattrs'", obj)
            for name, v in xa.items():
                if isinstance(v, str):
                    e.xattrs[name] = v.encode("utf-8")
                elif isinstance(v, dict) and set(v) == {"hex"} and isinstance(v["hex"], str) and re.fullmatch(r"(?:[0-9a-fA-F]{2})*", v["hex"]):
                    e.xattrs[name] = bytes.fromhex(v["hex"])
                else:
                    raise merr(ctx + f"xattr {name!r} value is neither a string nor {{hex}}", obj)
        e.archive = e.offset = None
        e.chunks = None
        has_loc = "archive" in d or "offset" in d
        if has_loc:
            if t != "file" or "archive" not in d or "offset" not in d or "chunks" in d:
                raise merr(ctx + "location ('archive'/'offset') on something that is not a plain file with content", obj)
            if e.size == 0:
                raise merr(ctx + "location on an empty file", obj)
            e.archive = want_int(d, "archive", 0, 127, ctx, obj)
            e.offset = want_int(d, "offset", 0, None, ctx, obj)
        if "chunks" in d:
            if t != "file" or e.sparse:
                raise merr(ctx + "'chunks' on something that is not a plain file", obj)
            e.chunks = want_int(d, "chunks", 1, MAX_CHUNKS_PER_FILE, ctx, obj)
            if e.size == 0:
                raise merr(ctx + "'chunks' on an empty file", obj)
        if t == "file" and e.size > 0 and not has_loc and e.chunks is None:
            raise merr(ctx + "file with content but no location", obj)
        if t == "hardlink" and ("size" in d or "xattrs" in d):
            raise merr(ctx + "hard link with size/xattrs", obj)
        return e

    # -- node packs and segments (§14.1, §14.2) ------------------------------------------------
    def _load_entries(self):
        m = self.m
        if m.schema == 4:
            if m.nodes is None:
                raise merr("missing node-pack table", self.mname)
            by_pack = {}
            for i, s in enumerate(m.segments):
                if s["nodes"] >= len(m.nodes) or m.nodes[s["nodes"]] is None:
                    raise merr(f"segment {i} refers to node-pack slot {s['nodes']}, which is missing or null", self.mname)
                rec = m.nodes[s["nodes"]]
                if s["offset"] + s["length"] > rec["plain_size"]:
                    raise merr(f"segment {i} reaches past its node pack's plain_size", self.mname)
                by_pack.setdefault(s["nodes"], []).append(i)
            self.used_nodes = set(by_pack)
            plains = {}
            for idx in sorted(by_pack):
                plains[idx] = self._read_node_pack(idx, m.nodes[idx])
            entries = []
            for i, s in enumerate(m.segments):
                data = plains[s["nodes"]][s["offset"]:s["offset"] + s["length"]]
                seg = self._parse_segment(data, s, i, m.nodes[s["nodes"]]["name"])
                entries.extend(seg)
                s["_parsed"] = seg
            m.entries = entries
            for idx, rec in enumerate(m.nodes):
                if rec is not None and idx not in by_pack:
                    self.warn(f"node-pack slot {idx} is not null but no segment uses it")
        else:
            self.used_nodes = set()
        self._check_entries()

    def _read_node_pack(self, idx, rec):
        so = self.open_sealed(rec["name"], "nodes", rec["snap"], rec["env"], rec["size"])
        try:
            pt = b"".join(so.iter_chunks())
        finally:
            so.close()
        if len(pt) != rec["plain_size"]:
            raise integrity("SizeMismatch", f"node pack plaintext is {len(pt)} bytes, table says {rec['plain_size']}", obj=rec["name"])
        return pt

    def _parse_segment(self, data, s, i, packname):
        what = f"segment {i} ({packname} @{s['offset']}+{s['length']})"
        # one complete zstd frame, exactly `length` bytes
        lines = list(zstd_lines([data], what, packname, multi_frame=False))
        out = []
        j = 0
        while j < len(lines):
            rec = parse_json_line(lines[j], what, packname)
            j += 1
            if "path" not in rec:
                raise merr(f"{what}: line {j} is not an entry line", packname)
            e = self._entry(rec, f"{what} line {j}: ", packname)
            if e.chunks is not None:
                refs = []
                while len(refs) < e.chunks:
                    if j >= len(lines):
                        raise merr(f"{what}: chunk lines of {e.path!r} missing", packname)
                    c = parse_json_line(lines[j], what, packname)
                    j += 1
                    if set(c) != {"c"} or not isinstance(c["c"], list) or not 1 <= len(c["c"]) <= 4096:
                        raise merr(f"{what}: chunk lines of {e.path!r} missing or malformed", packname)
                    for r in c["c"]:
                        if (not isinstance(r, list) or len(r) != 3 or not all(is_int(x) for x in r)
                                or r[0] < 0 or r[0] > 127 or r[1] < 0 or not 1 <= r[2] <= MAX_CHUNK):
                            raise merr(f"{what}: bad chunk reference {r!r} for {e.path!r}", packname)
                        refs.append(tuple(r))
                if len(refs) != e.chunks:
                    raise merr(f"{what}: {e.path!r} has {len(refs)} chunk references, expected {e.chunks}", packname)
                if sum(r[2] for r in refs) != e.size:
                    raise merr(f"{what}: chunk lengths of {e.path!r} add up to {sum(r[2] for r in refs)}, size is {e.size}", packname)
                e.chunks = refs
            out.append(e)
        if j < len(lines):
            raise merr(f"{what}: extra lines", packname)
        if len(out) != s["entries"]:
            raise merr(f"{what}: holds {len(out)} entries, the reference says {s['entries']}", packname)
        if out[0].path != s["first_b"]:
            raise merr(f"{what}: starts at {out[0].path!r}, the reference says {s['first_b']!r}", packname)
        return out

    # -- whole-snapshot checks -----------------------------------------------------------------
    def warn(self, msg):
        self.warnings.append(msg)
        warn(msg)

    def _check_entries(self):
        m = self.m
        obj = self.mname
        seen = {}
        prev = None
        archives = m.archives
        for e in m.entries:
            k = walk_key(e.path)
            if prev is not None and not (k > prev):
                raise merr(f"entries not in strictly increasing walk order at {e.path!r}", obj)
            prev = k
            if e.type == "hardlink":
                t = seen.get(e.target)
                if t is None or not t.linked:
                    raise merr(f"hard link {e.path!r} points to {e.target!r}, which is not an earlier 'linked' entry", obj)
            seen[e.path] = e
            if e.archive is not None:
                if e.archive >= len(archives) or archives[e.archive] is None:
                    raise merr(f"{e.path!r} refers to archive slot {e.archive}, which is missing or null", obj)
                if e.offset >= archives[e.archive]["plain_size"]:
                    raise merr(f"{e.path!r}: offset past the archive's plain_size", obj)
            if isinstance(e.chunks, list):
                for (a, off, ln) in e.chunks:
                    if a >= len(archives) or archives[a] is None:
                        raise merr(f"{e.path!r}: chunk refers to archive slot {a}, which is missing or null", obj)
                    if off + ln > archives[a]["plain_size"]:
                        raise merr(f"{e.path!r}: chunk reaches past archive {a}'s plain_size", obj)
        used = set()
        for e in m.entries:
            if e.archive is not None:
                used.add(e.archive)
            if isinstance(e.chunks, list):
                used.update(r[0] for r in e.chunks)
        self.used_archives = used
        for i, a in enumerate(archives):
            if a is not None and i not in used:
                self.warn(f"archive slot {i} is not null but no entry uses it")
        # §14.2 segment boundaries (informational)
        if m.schema == 4 and m.segments:
            self._check_segment_cuts()

    def _check_segment_cuts(self):
        idx = 0
        for si, s in enumerate(self.m.segments):
            seg = s["_parsed"]
            for j, e in enumerate(seg):
                n = j + 1
                cut = n == 16384 or (n >= 512 and fnv1a64(e.path) % 2048 == 0)
                last_in_seg = (j == len(seg) - 1)
                if cut and not last_in_seg:
                    self.warn(f"segment {si}: entry {e.path!r} is a §14.2 cut point but the segment continues")
                if last_in_seg and not cut and si != len(self.m.segments) - 1:
                    self.warn(f"segment {si} ends at {e.path!r}, which is not a §14.2 cut point")

    def _check_end(self):
        e = self.m.end
        ents = self.m.entries
        counts = {
            "files": sum(1 for x in ents if x.type == "file"),
            "dirs": sum(1 for x in ents if x.type == "dir"),
            "symlinks": sum(1 for x in ents if x.type == "symlink"),
            "hardlinks": sum(1 for x in ents if x.type == "hardlink"),
            "specials": sum(1 for x in ents if x.type in ("fifo", "chardev", "blockdev")),
            "bytes": sum(x.size for x in ents if x.type == "file"),
            "deleted": len(self.m.deleted),
        }
        for k, v in counts.items():
            if e.get(k, 0) != v:
                self.end_mismatch = True
                self.warn(f"end record says {k}={e.get(k, 0)}, the entries give {v}")
        if self.m.schema == 4:
            mine = sum(1 for s in self.m.segments
                       if self.m.nodes[s["nodes"]]["snap"] == self.snap)
            if e.get("new_segments", 0) != mine:
                self.warn(f"end record says new_segments={e.get('new_segments', 0)}, {mine} segments are in this run's node pack")


# --------------------------------------------------------------------------------------------
# archives: frames (§13.1) and tar (§13)

class FrameSource:
    """Decompressed tar bytes of one archive, frame by frame."""

    def __init__(self, so: SealedObject, rec: dict, ranged: bool, decompress_all: bool = False):
        self.so, self.rec, self.ranged = so, rec, ranged
        self.fs = rec["frame_size"]
        self.frames = rec["frames"]
        self.cstarts = rec["cstarts"]
        self.plain = rec["plain_size"]
        self.nf = len(self.frames)
        self.comp_len = self.cstarts[-1]
        self.cache = {}
        self.decompress_all = decompress_all
        self.frames_touched = set()
        self.chunks_read = 0
        if ranged:
            so.check_binding()
            nch = so.chunk_count_for(self.comp_len)
            expect = so.H + 16 + self.comp_len + 20 * nch
            if expect != so.size:
                raise integrity("SizeMismatch",
                                f"sealed size {so.size} does not match header + frames ({expect})", obj=so.name)
            self.nchunks = nch
            self.chunk_cache = OrderedDict()
        else:
            self.it = so.iter_chunks()
            self.buf = bytearray()
            self.next_f = 0
            self.plain_consumed = 0

    def frame_len(self, f):
        return self.fs if f < self.nf - 1 else self.plain - self.fs * (self.nf - 1)

    def _decomp(self, f, comp):
        return zstd_frame_exact(comp, self.frame_len(f), f"archive frame {f}", self.so.name)

    def _stream_next(self):
        f = self.next_f
        need = self.frames[f]
        while len(self.buf) < need:
            try:
                c = next(self.it)
            except StopIteration:
                raise integrity("FrameTable", f"archive plaintext ends inside frame {f} (frame table does not match)", obj=self.so.name)
            self.buf += c
        comp = bytes(self.buf[:need])
        del self.buf[:need]
        self.next_f += 1
        return f, comp

    def _ranged_comp(self, f):
        C = self.so.C
        c0, c1 = self.cstarts[f], self.cstarts[f + 1]
        k0, k1 = c0 // C, (c1 - 1) // C
        parts = []
        for k in range(k0, k1 + 1):
            pt = self.chunk_cache.get(k)
            if pt is None:
                pt = self.so.read_chunk(k, self.nchunks, self.comp_len)
                self.chunks_read += 1
                self.chunk_cache[k] = pt
                while len(self.chunk_cache) > 4:
                    self.chunk_cache.popitem(last=False)
            parts.append(pt)
        blob = b"".join(parts)
        return blob[c0 - k0 * C:c1 - k0 * C]

    def frame(self, f) -> bytes:
        if f < 0 or f >= self.nf:
            raise integrity("FrameTable", f"frame {f} outside the frame table", obj=self.so.name)
        self.frames_touched.add(f)
        got = self.cache.get(f)
        if got is not None:
            return got
        if self.ranged:
            data = self._decomp(f, self._ranged_comp(f))
        else:
            if f < self.next_f:
                raise RuntimeError(f"internal: frame {f} evicted")
            while True:
                g, comp = self._stream_next()
                if g == f:
                    data = self._decomp(f, comp)
                    break
                if self.decompress_all:
                    self._decomp(g, comp)
        self.cache[f] = data
        return data

    def release_before(self, pos):
        for f in [f for f in self.cache if (f + 1) * self.fs <= pos]:
            del self.cache[f]

    def read(self, a, b) -> bytes:
        if b > self.plain or a < 0 or a > b:
            raise integrity("TarRange", f"tar range {a}..{b} outside the archive's {self.plain} bytes", obj=self.so.name)
        out = []
        for mv in self.iter_range(a, b):
            out.append(bytes(mv))
        return b"".join(out)

    def iter_range(self, a, b, release_floor=None):
        if b > self.plain or a < 0 or a > b:
            raise integrity("TarRange", f"tar range {a}..{b} outside the archive's {self.plain} bytes", obj=self.so.name)
        pos = a
        while pos < b:
            f = pos // self.fs
            fr = self.frame(f)
            s = pos - f * self.fs
            e = min(len(fr), b - f * self.fs)
            yield memoryview(fr)[s:e]
            pos = f * self.fs + e
            if release_floor is not None:
                self.release_before(min(pos, release_floor))

    def finish(self):
        """Whole-object mode: consume the rest (authenticating every chunk, checks 8-14) and check
        that the frame table covers the plaintext exactly."""
        if self.ranged:
            return
        while self.next_f < self.nf:
            g, comp = self._stream_next()
            if self.decompress_all:
                self._decomp(g, comp)
        for c in self.it:
            self.buf += c
        if self.buf:
            raise integrity("FrameTable", f"{len(self.buf)} bytes of archive plaintext after the last frame of the table", obj=self.so.name)


def _octal(field: bytes, what):
    if field and field[0] & 0x80:
        v = int.from_bytes(field, "big") & ~(0x80 << (8 * (len(field) - 1)))
        if field[0] & 0x40:
            raise ValueError(f"negative base-256 {what}")
        return v
    s = field.split(b"\x00", 1)[0].strip(b" ")
    return int(s, 8) if s else 0


def parse_pax(data: bytes, obj):
    recs = {}
    p = 0
    while p < len(data):
        sp = data.find(b" ", p)
        if sp < 0:
            raise integrity("TarHeader", "malformed PAX record", obj=obj)
        try:
            ln = int(data[p:sp])
        except ValueError:
            raise integrity("TarHeader", "malformed PAX record length", obj=obj)
        rec = data[p:p + ln]
        if ln <= sp - p or len(rec) != ln or not rec.endswith(b"\n"):
            raise integrity("TarHeader", "malformed PAX record", obj=obj)
        kv = rec[sp - p + 1:-1]
        eq = kv.find(b"=")
        if eq < 0:
            raise integrity("TarHeader", "PAX record without '='", obj=obj)
        recs[kv[:eq].decode("utf-8", "surrogateescape")] = kv[eq + 1:]
        p += ln
    return recs


def read_tar_member(src: FrameSource, offset: int, obj: str):
    """Parse the tar header(s) at `offset` (§13, §13.1). Returns dict with path, type, size,
    data_start, pax."""
    pos = offset
    pax = {}
    seen_pax = False
    while True:
        hdr = src.read(pos, pos + 512)
        if hdr == b"\x00" * 512:
            raise integrity("TarHeader", f"end-of-archive block where an entry was expected at tar offset {offset}", obj=obj)
        chk = sum(hdr[:148]) + 8 * 32 + sum(hdr[156:])
        try:
            stored = _octal(hdr[148:156], "checksum")
            size = _octal(hdr[124:136], "size")
        except ValueError as e:
            raise integrity("TarHeader", f"bad tar header at {pos}: {e}", obj=obj)
        if stored != chk:
            raise integrity("TarHeader", f"tar header checksum mismatch at tar offset {pos}", obj=obj)
        if hdr[257:263] != b"ustar\x00" or hdr[263:265] != b"00":
            raise integrity("TarHeader", f"not a ustar header at tar offset {pos}", obj=obj)
        tf = hdr[156:157]
        if tf == b"x":
            if seen_pax:
                raise integrity("TarHeader", "two PAX headers in a row", obj=obj)
            seen_pax = True
            body = src.read(pos + 512, pos + 512 + size)
            pax = parse_pax(body, obj)
            pos += 512 + -(-size // 512) * 512
            continue
        name = hdr[0:100].split(b"\x00", 1)[0]
        prefix = hdr[345:500].split(b"\x00", 1)[0]
        path = (prefix + b"/" + name) if prefix else name
        if "path" in pax:
            path = pax["path"]
        if "size" in pax:
            size = int(pax["size"])
        return {"path": path, "type": tf, "size": size, "data_start": pos + 512, "pax": pax,
                "mode": _octal(hdr[100:108], "mode")}


def parse_sparse_map(src: FrameSource, start: int, obj: str):
    """GNU sparse 1.0 map at `start`: returns (regions, map_padded_len)."""
    nums = []
    buf = b""
    p = start
    need = None
    while True:
        buf += src.read(p, p + 512)
        p += 512
        parts = buf.split(b"\n")
        complete = parts[:-1]
        if complete and need is None:
            need = 1 + 2 * int(complete[0])
        if need is not None and len(complete) >= need:
            nums = [int(x) for x in complete[:need]]
            break
        if p - start > 64 * 1024 * 1024:
            raise integrity("TarHeader", "sparse map too long", obj=obj)
    n = nums[0]
    regions = [(nums[1 + 2 * i], nums[2 + 2 * i]) for i in range(n)]
    return regions, p - start


# --------------------------------------------------------------------------------------------
# restore / verify engine

class Sink:
    """Where file contents go: a restore writes them into the staging tree; verify discards."""

    def write(self, e: Entry, pos: int, data):  # pragma: no cover
        raise NotImplementedError


class Work:
    def __init__(self, e: Entry, kind: str, start: int, length: int, dest_off: int):
        self.e, self.kind, self.start, self.length, self.dest_off = e, kind, start, length, dest_off


def process_archives(sr: SnapshotReader, sink, verify: bool):
    m = sr.m
    work = {}
    for e in m.entries:
        if e.type != "file":
            continue
        if e.archive is not None:
            work.setdefault(e.archive, []).append(Work(e, "member", e.offset, e.size, 0))
        elif isinstance(e.chunks, list):
            pos = 0
            for (a, off, ln) in e.chunks:
                work.setdefault(a, []).append(Work(e, "chunk", off, ln, pos))
                pos += ln
    written = {}
    to_open = sorted(set(work) | (set(i for i, a in enumerate(m.archives) if a is not None) if verify else set()))
    for idx in to_open:
        rec = m.archives[idx]
        so = sr.open_sealed(rec["name"], "archive", rec["snap"], rec["env"], rec["size"])
        try:
            src = FrameSource(so, rec, ranged=sr.ranged, decompress_all=verify)
            items = sorted(work.get(idx, []), key=lambda w: (w.start, w.kind))
            for n, w in enumerate(items):
                nxt = items[n + 1].start if n + 1 < len(items) else None
                src.release_before(w.start)
                e = w.e
                if w.kind == "member":
                    mem = read_tar_member(src, w.start, so.name)
                    if e.sparse:
                        pax = mem["pax"]
                        if mem["type"] not in (b"0", b"\x00") or pax.get("GNU.sparse.major") != b"1" or pax.get("GNU.sparse.minor") != b"0":
                            raise integrity("TarMismatch", f"{e.path!r}: tar member at {w.start} is not a GNU sparse 1.0 file", obj=so.name)
                        if pax.get("GNU.sparse.name") != e.path or int(pax.get("GNU.sparse.realsize", b"-1")) != e.size:
                            raise integrity("TarMismatch", f"{e.path!r}: sparse member names {pax.get('GNU.sparse.name')!r} size {pax.get('GNU.sparse.realsize')!r}", obj=so.name)
                        regions, maplen = parse_sparse_map(src, mem["data_start"], so.name)
                        total = sum(r[1] for r in regions)
                        if maplen + total != mem["size"]:
                            raise integrity("TarMismatch", f"{e.path!r}: sparse map and regions do not add up to the member size", obj=so.name)
                        p = mem["data_start"] + maplen
                        for (roff, rlen) in regions:
                            if roff + rlen > e.size:
                                raise integrity("TarMismatch", f"{e.path!r}: sparse region past the file size", obj=so.name)
                            q = roff
                            for mv in src.iter_range(p, p + rlen, release_floor=nxt):
                                sink.write(e, q, mv); q += len(mv)
                            p += rlen
                        sink.sparse_done(e)
                        written[id(e)] = written.get(id(e), 0) + e.size
                        continue
                    if mem["type"] not in (b"0", b"\x00"):
                        raise integrity("TarMismatch", f"{e.path!r}: tar member at {w.start} has type {mem['type']!r}, not a regular file", obj=so.name)
                    if mem["path"] != e.path:
                        raise integrity("TarMismatch", f"tar member at {w.start} is {mem['path']!r}, the manifest says {e.path!r}", obj=so.name)
                    if mem["size"] != e.size:
                        raise integrity("TarMismatch", f"{e.path!r}: tar size {mem['size']}, manifest size {e.size}", obj=so.name)
                    hdr_len = mem["data_start"] - w.start
                    if hdr_len > 16384:   # §13.1 step 1 assumes headers never take more
                        sr.warn(f"{e.path!r}: tar headers take {hdr_len} bytes (> the 16 KiB bound of §13.1)")
                    start, length = mem["data_start"], e.size
                else:
                    start, length = w.start, w.length
                q = w.dest_off
                for mv in src.iter_range(start, start + length, release_floor=nxt):
                    sink.write(e, q, mv)
                    q += len(mv)
                written[id(e)] = written.get(id(e), 0) + length
            src.finish()
        finally:
            so.close()
    for e in m.entries:
        if e.type == "file" and (e.archive is not None or e.chunks is not None):
            if written.get(id(e), 0) != e.size:
                raise integrity("Incomplete", f"{e.path!r}: {written.get(id(e), 0)} of {e.size} bytes found")


class HashSink:
    def __init__(self):
        self.h = {}
        self.pos = {}

    def write(self, e, pos, data):
        # chunks of one file may arrive out of order (they come from several archives): hash per
        # (file, position) piece and combine at the end
        self.h.setdefault(id(e), []).append((pos, hashlib.sha256(data).digest(), len(data)))

    def sparse_done(self, e):
        pass


# --------------------------------------------------------------------------------------------
# safe filesystem writing (never outside TARGET)

def check_rel_path(p: bytes, ctx, obj):
    if p == b".":
        return
    if not p or p.startswith(b"/") or b"\x00" in p:
        raise merr(ctx + "path is empty, absolute or contains NUL", obj)
    for comp in p.split(b"/"):
        if comp in (b"", b".", b".."):
            raise merr(ctx + "path has an empty, '.' or '..' component", obj)


class SafeTree:
    """All operations go through directory file descriptors opened with O_NOFOLLOW, starting at
    the root fd, so no symlink (restored or pre-existing) can redirect a write outside it."""

    def __init__(self, root: str):
        self.root = root
        self.rootfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        self.dircache = {b"": self.rootfd}

    def close(self):
        for k, fd in self.dircache.items():
            os.close(fd)
        self.dircache = {}

    def dirfd(self, rel: bytes, create: bool) -> int:
        if rel in self.dircache:
            return self.dircache[rel]
        parent, _, leaf = rel.rpartition(b"/")
        pfd = self.dirfd(parent, create)
        try:
            fd = os.open(leaf, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=pfd)
        except FileNotFoundError:
            if not create:
                raise
            os.mkdir(leaf, 0o755, dir_fd=pfd)
            fd = os.open(leaf, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=pfd)
        except OSError as ex:
            raise VLError("Restore", f"{rel!r} is not a directory inside the target ({ex})")
        self.dircache[rel] = fd
        return fd

    def split(self, rel: bytes):
        parent, _, leaf = rel.rpartition(b"/")
        return self.dirfd(parent, True), leaf


class RestoreSink:
    def __init__(self, tree: SafeTree, ent_index):
        self.tree = tree
        self.fds = OrderedDict()

    def _fd(self, e):
        fd = self.fds.get(id(e))
        if fd is None:
            pfd, leaf = self.tree.split(e.path)
            fd = os.open(leaf, os.O_WRONLY | os.O_NOFOLLOW, dir_fd=pfd)
            self.fds[id(e)] = fd
            while len(self.fds) > 64:
                _, old = self.fds.popitem(last=False)
                os.close(old)
        else:
            self.fds.move_to_end(id(e))
        return fd

    def write(self, e, pos, data):
        fd = self._fd(e)
        mv = memoryview(data)
        while len(mv):
            n = os.pwrite(fd, mv, pos)
            mv = mv[n:]
            pos += n

    def sparse_done(self, e):
        os.ftruncate(self._fd(e), e.size)

    def close(self):
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


def restore(sr: SnapshotReader, target: str):
    m = sr.m
    os.makedirs(target, exist_ok=True)
    target = os.path.realpath(target)
    # refuse to clobber: top-level names of the tree must not exist in TARGET
    tops = sorted({e.path.split(b"/")[0] for e in m.entries if e.path != b"."})
    for t in tops:
        if os.path.lexists(os.path.join(os.fsencode(target), t)):
            raise VLError("Restore", f"{os.fsdecode(t)!r} already exists in {target}")
    staging = tempfile.mkdtemp(prefix=".vaultline-restore-", dir=target)
    ok = False
    tree = SafeTree(staging)
    sink = RestoreSink(tree, None)
    is_root = os.geteuid() == 0
    try:
        # 1. create the tree (walk order)
        for e in m.entries:
            if e.path == b".":
                if e.type != "dir":
                    raise VLError("Restore", "entry '.' is not a directory")
                continue
            pfd, leaf = tree.split(e.path)
            if e.type == "dir":
                os.mkdir(leaf, 0o700, dir_fd=pfd)
            elif e.type == "file":
                fd = os.open(leaf, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=pfd)
                os.close(fd)
            elif e.type == "symlink":
                os.symlink(e.target, leaf, dir_fd=pfd)
            elif e.type == "hardlink":
                tpfd, tleaf = tree.split(e.target)
                os.link(tleaf, leaf, src_dir_fd=tpfd, dst_dir_fd=pfd, follow_symlinks=False)
            elif e.type == "fifo":
                os.mkfifo(leaf, 0o600, dir_fd=pfd)
            elif e.type in ("chardev", "blockdev"):
                kind = stat.S_IFCHR if e.type == "chardev" else stat.S_IFBLK
                os.mknod(leaf, kind | 0o600, os.makedev(e.dev_major, e.dev_minor), dir_fd=pfd)
        # 2. contents
        process_archives(sr, sink, verify=False)
        sink.close()
        # 3. metadata of non-directories
        for e in m.entries:
            if e.type in ("dir", "hardlink"):
                continue
            apply_meta(tree, e, is_root)
        # 4. move into place
        for t in tops:
            os.rename(os.path.join(os.fsencode(staging), t), os.path.join(os.fsencode(target), t))
        ok = True
    finally:
        sink.close()
        tree.close()
        if not ok:
            shutil.rmtree(staging, ignore_errors=True)
    os.rmdir(staging)
    # 5. directory metadata, deepest first, after everything else (and after the move)
    final = SafeTree(target)
    try:
        for e in sorted((e for e in m.entries if e.type == "dir"), key=lambda e: -e.path.count(b"/")):
            apply_meta(final, e, is_root)
    finally:
        final.close()


def apply_meta(tree: SafeTree, e: Entry, is_root: bool):
    if e.path == b".":
        pfd, leaf = tree.rootfd, b"."
    else:
        pfd, leaf = tree.split(e.path)
    ns = e.mtime * 1_000_000_000 + e.nsec
    if e.type == "symlink":
        if is_root:
            os.chown(leaf, e.uid, e.gid, dir_fd=pfd, follow_symlinks=False)
        set_xattrs_path(pfd, leaf, e)
        os.utime(leaf, ns=(ns, ns), dir_fd=pfd, follow_symlinks=False)
        return
    flags = os.O_RDONLY | os.O_NOFOLLOW | (os.O_DIRECTORY if e.type == "dir" else 0)
    if e.type in ("fifo",):
        flags |= os.O_NONBLOCK
    if e.type in ("chardev", "blockdev"):
        # do not open device nodes; use path-based calls relative to the parent fd
        if is_root:
            os.chown(leaf, e.uid, e.gid, dir_fd=pfd, follow_symlinks=False)
        set_xattrs_path(pfd, leaf, e)
        os.chmod(leaf, e.mode, dir_fd=pfd)
        os.utime(leaf, ns=(ns, ns), dir_fd=pfd, follow_symlinks=False)
        return
    fd = os.open(leaf, flags, dir_fd=pfd)
    try:
        # order: owner first (chown clears setuid/setgid and security.capability), then
        # xattrs/ACLs, then the mode, then the times
        if is_root:
            os.fchown(fd, e.uid, e.gid)
        for name, val in e.xattrs.items():
            try:
                os.setxattr(fd, name, val)
            except OSError as ex:
                warn(f"{e.path!r}: cannot set xattr {name}: {ex}")
        os.fchmod(fd, e.mode)
        os.utime(fd, ns=(ns, ns))
    finally:
        os.close(fd)


def set_xattrs_path(pfd, leaf, e):
    for name, val in e.xattrs.items():
        try:
            os.setxattr(f"/proc/self/fd/{pfd}/".encode() + leaf, name, val, follow_symlinks=False)
        except OSError as ex:
            warn(f"{e.path!r}: cannot set xattr {name}: {ex}")


# --------------------------------------------------------------------------------------------
# CLI

def main(argv=None):
    ap = argparse.ArgumentParser(prog="format_reader.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--repo", required=True)
    common.add_argument("--key-file", required=True)
    common.add_argument("--prefix", default="vaultline", help="repository prefix (default: vaultline)")
    sub.add_parser("list", parents=[common])
    for name in ("restore", "verify"):
        p = sub.add_parser(name, parents=[common])
        p.add_argument("--host", required=True)
        p.add_argument("--job", required=True)
        p.add_argument("--snapshot", required=True)
        p.add_argument("--ranged", action="store_true",
                       help="read archive data by ranged reads of the frames/chunks it needs (§13.1) "
                            "instead of reading each archive whole")
        if name == "restore":
            p.add_argument("--target", required=True)
    args = ap.parse_args(argv)
    try:
        key = LocalKey(args.key_file)
        repo = Repo(args.repo, args.prefix, key)
        if args.cmd == "list":
            for line in repo.list():
                print(line)
            return 0
        sr = SnapshotReader(repo, args.host, args.job, args.snapshot, ranged=args.ranged)
        if not os.path.exists(repo.objpath(sr.mname)):
            raise VLError("NotFound", f"no snapshot {args.host}/{args.job}/{args.snapshot}")
        sr.load()
        if args.cmd == "verify":
            sink = HashSink()
            process_archives(sr, sink, verify=True)
            if getattr(sr, "end_mismatch", False):
                raise integrity("EndRecord", "end record totals do not match the entries", obj=sr.mname)
            n_files = sum(1 for e in sr.m.entries if e.type == "file")
            print(f"ok: {args.host}/{args.job}/{args.snapshot}: {len(sr.m.entries)} entries "
                  f"({n_files} files, {sum(e.size for e in sr.m.entries)} bytes), "
                  f"{len(sr.used_archives)} archives, {len(sr.used_nodes)} node packs authenticated")
            return 0
        restore(sr, args.target)
        print(f"restored {args.host}/{args.job}/{args.snapshot}: {len(sr.m.entries)} entries into {args.target}")
        return 0
    except VLError as e:
        sys.stderr.write(f"error: {e}\n")
        return e.exit_code
    except OSError as e:
        sys.stderr.write(f"error: {e}\n")
        return EXIT_OTHER


if __name__ == "__main__":
    sys.exit(main())
