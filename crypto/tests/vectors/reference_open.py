#!/usr/bin/env python3
"""Independent reader for the vaultline sealed-object format, version 1.

This is a second implementation of the opener, written from docs/FORMAT.md
alone (without looking at the Rust crate), to check that the specification is
sufficient to build a compatible decryptor. It opens every vector listed in
vectors.json with the `local` key provider (§6.1) and compares the outcome with
the recorded one: plaintext length and SHA-256 for "ok" vectors, the error
variant name (§7) for "error" vectors.

Usage: python3 reference_open.py [VECTORS_DIR]   (default: this script's dir)
Needs only the standard library and the `cryptography` package.
"""
import hashlib
import hmac
import json
import os
import re
import struct
import sys

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

MAGIC = b"\x89VLT\r\n\x1a\n"  # §2.1
WRAP_AAD_PREFIX = b"vaultline v1 local wrap\x00"  # §6.1
NEARBY = 1024  # §7: counter window searched to name a chunk fault


class SealedError(Exception):
    """An error named after the spec's vaultline_crypto::Error variant (§7)."""

    def __init__(self, name, offset=None, detail=""):
        super().__init__(name)
        self.name, self.offset, self.detail = name, offset, detail


# --- Primitives (§1) ------------------------------------------------------

def hkdf_extract(salt, ikm):
    return hmac.new(salt, ikm, hashlib.sha256).digest()


def hkdf_expand32(prk, info, length=32):
    # L <= 32 = hash length, so a single block: HMAC(PRK, info || 0x01) (§3).
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()[:length]


def _rotl(v, n):
    return ((v << n) & 0xFFFFFFFF) | (v >> (32 - n))


def hchacha20(key, nonce16):
    """HChaCha20 (draft-irtf-cfrg-xchacha §2.2): 20 ChaCha rounds, no feed-forward."""
    s = list(struct.unpack("<4I", b"expand 32-byte k") + struct.unpack("<8I", key)
             + struct.unpack("<4I", nonce16))

    def qr(a, b, c, d):
        s[a] = (s[a] + s[b]) & 0xFFFFFFFF; s[d] = _rotl(s[d] ^ s[a], 16)
        s[c] = (s[c] + s[d]) & 0xFFFFFFFF; s[b] = _rotl(s[b] ^ s[c], 12)
        s[a] = (s[a] + s[b]) & 0xFFFFFFFF; s[d] = _rotl(s[d] ^ s[a], 8)
        s[c] = (s[c] + s[d]) & 0xFFFFFFFF; s[b] = _rotl(s[b] ^ s[c], 7)

    for _ in range(10):
        qr(0, 4, 8, 12); qr(1, 5, 9, 13); qr(2, 6, 10, 14); qr(3, 7, 11, 15)
        qr(0, 5, 10, 15); qr(1, 6, 11, 12); qr(2, 7, 8, 13); qr(3, 4, 9, 14)
    return struct.pack("<8I", *(s[0:4] + s[12:16]))


def xchacha20poly1305_open(key, nonce24, ct_and_tag, aad):
    subkey = hchacha20(key, nonce24[:16])
    return ChaCha20Poly1305(subkey).decrypt(b"\x00" * 4 + nonce24[16:], ct_and_tag, aad)


# --- Key derivation (§3, §6.1) ---------------------------------------------

def object_keys(dk, salt):
    prk = hkdf_extract(salt, dk)
    return {
        "prk": prk,
        "payload_key": hkdf_expand32(prk, b"vaultline v1 payload key"),
        "header_mac_key": hkdf_expand32(prk, b"vaultline v1 header mac key"),
        "commitment": hkdf_expand32(prk, b"vaultline v1 key commitment"),
    }


def local_keys(mk):
    prk_m = hkdf_extract(b"\x00" * 32, mk)
    return {
        "fingerprint": hkdf_expand32(prk_m, b"vaultline v1 local key fingerprint", 16).hex(),
        "wrap_key": hkdf_expand32(prk_m, b"vaultline v1 local wrap key"),
    }


# --- Header parsing (§2, §4; checks 1-4 of §7) -----------------------------

class Cursor:
    """Reads header fields in order; running out of input is HeaderTruncated."""

    def __init__(self, data):
        self.data, self.pos = data, 0

    def take(self, n, field):
        if self.pos + n > len(self.data):
            raise SealedError("HeaderTruncated", len(self.data),
                              f"object ends inside field `{field}`")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u16(self, field):
        return struct.unpack(">H", self.take(2, field))[0]


def parse_header(data):
    # Check 1: magic. Guess: input shorter than 8 bytes that is a prefix of the
    # magic counts as truncated, anything else not matching is BadMagic.
    if data[:8] != MAGIC[:len(data[:8])]:
        raise SealedError("BadMagic", 0)
    c = Cursor(data)
    c.take(8, "magic")
    version = c.u16("version")
    if version != 1:  # check 2
        raise SealedError("UnsupportedVersion", 8, f"version {version}")
    # Check 3: read every field (lengths as declared) before validating any.
    h = {"chunk_size": struct.unpack(">I", c.take(4, "chunk_size"))[0],
         "salt": c.take(32, "salt"), "commitment": c.take(32, "commitment")}
    ctx_start = c.pos
    n = c.u16("context count")
    entries = []
    for _ in range(n):
        k = c.take(c.u16("context key length"), "context key")
        v = c.take(c.u16("context value length"), "context value")
        entries.append((k, v))
    h["A"] = c.pos
    h["context_bytes"] = data[ctx_start:c.pos]
    h["mac"] = c.take(32, "header_mac")
    provider = c.take(c.take(1, "provider length")[0], "provider")
    key_id = c.take(c.u16("key id length"), "key_id")
    wrapped = c.take(c.u16("wrapped key length"), "wrapped_key")
    h["H"] = c.pos

    # Check 4: limits of §2 and §4, canonical context order, UTF-8.
    def bad(why):
        raise SealedError("MalformedHeader", None, why)
    cs = h["chunk_size"]
    if cs & (cs - 1) or not 1024 <= cs <= 16777216:
        bad(f"chunk_size {cs} is not a power of two from 1024 to 16777216")
    if n > 32:
        bad("more than 32 context entries")
    for i, (k, v) in enumerate(entries):
        if not 1 <= len(k) <= 256 or len(v) > 1024:
            bad("context key/value length out of range")
        if i and not entries[i - 1][0] < k:  # bytes compare: shorter first on prefix
            bad("context keys not in strictly increasing order")
    if not 1 <= len(provider) <= 64 or not re.fullmatch(rb"[a-z0-9-]+", provider):
        bad("provider id")
    if not 1 <= len(key_id) <= 2048 or not 1 <= len(wrapped) <= 8192:
        bad("key id / wrapped key length out of range")
    try:
        for k, v in entries:
            k.decode("utf-8"), v.decode("utf-8")
        key_id = key_id.decode("utf-8")
    except UnicodeDecodeError:
        bad("string is not UTF-8")
    h.update(provider=provider.decode("ascii"), key_id=key_id, wrapped=wrapped)
    return h


# --- Local provider unwrap (§6.1; check 5 of §7) ---------------------------

def local_unwrap(h, mk):
    # The order and exact conditions of these provider errors are a guess.
    lk = local_keys(mk)
    if h["provider"] != "local":
        raise SealedError("ProviderMismatch", None, h["provider"])
    if h["key_id"] != lk["fingerprint"]:
        raise SealedError("KeyMismatch", None, h["key_id"])
    w = h["wrapped"]
    if len(w) != 73 or w[0] != 0x01:
        raise SealedError("MalformedWrappedKey", None, f"W={len(w)}")
    try:
        return xchacha20poly1305_open(lk["wrap_key"], w[1:25], w[25:],
                                      WRAP_AAD_PREFIX + h["context_bytes"])
    except InvalidTag:
        raise SealedError("UnwrapFailed", None, "wrapped key failed authentication")


# --- Opening (§5, §7) ------------------------------------------------------

def nonce(i, final):
    """§5.2: 0x000000 || u64 i || flag byte."""
    return b"\x00\x00\x00" + struct.pack(">Q", i) + (b"\x01" if final else b"\x00")


def try_open(aead, i, final, body):
    if not 0 <= i < 2 ** 64:
        return None
    try:
        return aead.decrypt(nonce(i, final), body, b"")
    except InvalidTag:
        return None


def read_chunk(data, pos, C):
    """Checks 9-11: returns (final, len, body) or raises."""
    if len(data) - pos < 4:
        raise SealedError("Truncated", len(data), "no frame word")
    frame = struct.unpack(">I", data[pos:pos + 4])[0]
    final, ln = bool(frame >> 31), frame & 0x7FFFFFFF
    if ln > C or (not final and ln != C):
        raise SealedError("MalformedChunk", pos, f"frame declares {ln}, final={final}")
    if len(data) - (pos + 4) < ln + 16:
        raise SealedError("Truncated", len(data), "chunk body incomplete")
    return final, ln, data[pos + 4:pos + 4 + ln + 16]


def open_sealed(data, mk):
    h = parse_header(data)                              # checks 1-4
    dk = local_unwrap(h, mk)                            # check 5
    keys = object_keys(dk, h["salt"])
    if not hmac.compare_digest(keys["commitment"], h["commitment"]):
        raise SealedError("WrongKey", 46)               # check 6
    mac = hmac.new(keys["header_mac_key"], data[:h["A"]], hashlib.sha256).digest()
    if not hmac.compare_digest(mac, h["mac"]):
        raise SealedError("HeaderTampered", h["A"])     # check 7
    pos, C = h["H"], h["chunk_size"]
    if len(data) < pos + 16:  # guess: a short binding tag is truncation
        raise SealedError("Truncated", len(data), "binding tag incomplete")
    if not hmac.compare_digest(data[pos:pos + 16], h["mac"][:16]):
        raise SealedError("PayloadMismatch", pos)       # check 8
    pos += 16
    aead = ChaCha20Poly1305(keys["payload_key"])
    out, i = [], 0
    while True:
        start = pos
        final, ln, body = read_chunk(data, pos, C)      # checks 9-11
        pt = try_open(aead, i, final, body)             # check 12
        if pt is None:
            for d in range(1, NEARBY + 1):              # name the fault
                if try_open(aead, i - d, final, body) is not None:
                    raise SealedError("ChunkReplayed", start, f"chunk {i} is a copy of {i - d}")
                if try_open(aead, i + d, final, body) is not None:
                    raise SealedError("ChunkOutOfOrder", start, f"chunk {i} sealed as {i + d}")
            raise SealedError("ChunkTampered", start, f"chunk {i}")
        if final and ln == 0 and i != 0:                # check 13
            raise SealedError("EmptyFinalChunk", start, f"chunk {i}")
        out.append(pt)
        pos += 4 + ln + 16
        i += 1
        if final:
            break
    if pos != len(data):                                # check 14
        # Guess: "another authentic final chunk" = a well-formed final chunk
        # that opens as the next counter, nonce(i, final).
        try:
            final, _, body = read_chunk(data, pos, C)
            again = final and try_open(aead, i, True, body) is not None
        except SealedError:
            again = False
        raise SealedError("MultipleFinalChunks" if again else "TrailingData", pos)
    return b"".join(out), dk


# --- Vector runner --------------------------------------------------------

def check_worked_example(manifest):
    """§9's derived values, recomputed from the manifest's fixed keys."""
    k = object_keys(bytes.fromhex(manifest["data_key"]), bytes.fromhex(manifest["salt"]))
    k.update(local_keys(bytes.fromhex(manifest["master_key"])))
    want = {
        "prk": "3609ce61c7b03c79f1023b21258b0f00fad055f483044f3ca3ce2fe47b55600f",
        "payload_key": "46d4f4426012bd69f218f966f0661a55cdb00e3e6bd809b6c6de10194e4ae86d",
        "header_mac_key": "2bb32f0deeb4241104bf6a301ba985dabd9957d62fddfdd36fcd497ff52d6abf",
        "commitment": "1d12a73ce191963776208024b8abff2b876985e6fc38a6309669799d96e3a4b2",
        "fingerprint": "690465d46624a9e12ee453f53dc64cca",
        "wrap_key": "4d5da63ca4fb9ce013e76568641b5541de4cbb4385a3661164443d4782d5ddb9"}
    bad = [n for n, hx in want.items() if (k[n] if isinstance(k[n], str) else k[n].hex()) != hx]
    print(f"{'worked-example (§9)':30} {'FAIL' if bad else 'PASS'} "
          f"{'mismatch: ' + ', '.join(bad) if bad else 'derived keys match'}")
    return not bad


def main():
    vdir = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(vdir, "vectors.json")) as f:
        manifest = json.load(f)
    mk = bytes.fromhex(manifest["master_key"])
    ok = check_worked_example(manifest)
    passed, failed = int(ok), int(not ok)
    for v in manifest["vectors"]:
        with open(os.path.join(vdir, v["file"]), "rb") as f:
            data = f.read()
        try:
            pt, dk = open_sealed(data, mk)
            got = f"ok len={len(pt)} sha256={hashlib.sha256(pt).hexdigest()[:16]}…"
            good = (v["result"] == "ok" and len(pt) == v["plaintext_len"]
                    and hashlib.sha256(pt).hexdigest() == v["plaintext_sha256"]
                    and dk.hex() == manifest["data_key"])
        except SealedError as e:
            got = f"{e.name} @ {e.offset} ({e.detail})" if e.detail else f"{e.name} @ {e.offset}"
            good = v["result"] == "error" and e.name == v["error"]
            # Informational: the manifest message's offset, if any, vs ours.
            m = re.search(r"offset (\d+)", v.get("message", ""))
            if good and m and int(m.group(1)) != e.offset:
                got += f" [note: manifest message says offset {m.group(1)}]"
        want = v["result"] if v["result"] == "ok" else v["error"]
        print(f"{v['name']:30} {'PASS' if good else 'FAIL'} want {want}; got {got}")
        passed, failed = passed + good, failed + (not good)
    print(f"\n{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
