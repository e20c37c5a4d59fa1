"""A reference application for Lethe's encrypted columns, written the way a
real application would: it reads its org's data key from the key table Lethe
keeps (`org_data_keys`), unwraps it with its KMS, and reads and writes
`customers.nik` in the documented `lethe1:` format with AES-256-GCM.

Usage:
  app.py write DB   encrypt every customer's NIK under its org's newest active key
  app.py read DB    print {"<id>": "<nik>" | null} (null: the value cannot be read)

DB: `sqlite:///path/app.db` or a `postgresql://` URL.
KMS: AWS KMS (or moto) through AWS_ENDPOINT_URL, AWS_REGION and credentials;
or, with LETHE_KEYRING=path, Lethe's local development keyring (see unwrap_local).
"""

import base64
import json
import os
import sqlite3
import struct
import sys

from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

PREFIX = "lethe1:"


class Db:
    """The two drivers differ only in the parameter marker."""

    def __init__(self, url):
        if url.startswith("sqlite://"):
            self.conn, self.marker = sqlite3.connect(url[len("sqlite://"):]), "?"
        else:
            import psycopg
            self.conn, self.marker = psycopg.connect(url), "%s"

    def all(self, sql, *args):
        return self.conn.execute(sql.replace("?", self.marker), args).fetchall()

    def one(self, sql, *args):
        return self.conn.execute(sql.replace("?", self.marker), args).fetchone()


# --- Lethe's local keyring (development only) -------------------------------
# keyring.json: {"keks": {"<kms_key_id>": {"versions": ["<base64 32-byte key>", ...],
#                                         "pending_deletion": null | "<when>"}}}
# A wrapped key: 4-byte big-endian KEK version (1 = versions[0]) || 24-byte
# nonce || XChaCha20-Poly1305 ciphertext of the 32-byte data key (no AAD).
# A shredded KEK has no versions left, so nothing it wrapped opens again.

def _rotl(v, n):
    return ((v << n) & 0xFFFFFFFF) | (v >> (32 - n))


def _quarter(s, a, b, c, d):
    s[a] = (s[a] + s[b]) & 0xFFFFFFFF; s[d] = _rotl(s[d] ^ s[a], 16)
    s[c] = (s[c] + s[d]) & 0xFFFFFFFF; s[b] = _rotl(s[b] ^ s[c], 12)
    s[a] = (s[a] + s[b]) & 0xFFFFFFFF; s[d] = _rotl(s[d] ^ s[a], 8)
    s[c] = (s[c] + s[d]) & 0xFFFFFFFF; s[b] = _rotl(s[b] ^ s[c], 7)


def _hchacha20(key, nonce16):
    s = [0x61707865, 0x3320646E, 0x79622D32, 0x6B206574]
    s += list(struct.unpack("<8I", key)) + list(struct.unpack("<4I", nonce16))
    for _ in range(10):
        for a, b, c, d in ((0, 4, 8, 12), (1, 5, 9, 13), (2, 6, 10, 14), (3, 7, 11, 15),
                           (0, 5, 10, 15), (1, 6, 11, 12), (2, 7, 8, 13), (3, 4, 9, 14)):
            _quarter(s, a, b, c, d)
    return struct.pack("<8I", *(s[0:4] + s[12:16]))


def unwrap_local(keyring_path, kms_key_id, wrapped):
    """XChaCha20-Poly1305 = ChaCha20-Poly1305 under an HChaCha20 subkey."""
    with open(keyring_path) as f:
        kek = json.load(f)["keks"].get(kms_key_id)
    version = struct.unpack(">I", wrapped[:4])[0]
    if kek is None or not 1 <= version <= len(kek["versions"]):
        return None
    key = base64.b64decode(kek["versions"][version - 1])
    nonce = wrapped[4:28]
    subkey = _hchacha20(key, nonce[:16])
    return ChaCha20Poly1305(subkey).decrypt(b"\0\0\0\0" + nonce[16:], wrapped[28:], None)


def unwrapper():
    keyring = os.environ.get("LETHE_KEYRING")
    if keyring:
        return lambda key_id, wrapped: unwrap_local(keyring, key_id, wrapped)
    import boto3
    client = boto3.client("kms", endpoint_url=os.environ.get("AWS_ENDPOINT_URL"),
                          region_name=os.environ.get("AWS_REGION", "us-east-1"))
    return lambda key_id, wrapped: client.decrypt(CiphertextBlob=wrapped, KeyId=key_id)["Plaintext"]


# --- The documented value format ---------------------------------------------

def aad(table, column, org, header):
    return b"\0".join(p.encode() for p in ("lethe1", table, column, str(org))) + b"\0" + header


def data_key(db, unwrap, org, version=None):
    """The org's key (a given version, or the newest active one), unwrapped; None if destroyed."""
    if version is None:
        row = db.one("SELECT version, wrapped_key, kms_key_id FROM org_data_keys "
                     "WHERE org_id = ? AND state = 'active' ORDER BY version DESC LIMIT 1", org)
    else:
        row = db.one("SELECT version, wrapped_key, kms_key_id FROM org_data_keys "
                     "WHERE org_id = ? AND version = ? AND state <> 'destroyed'", org, version)
    if row is None or not row[1]:
        return None
    plain = unwrap(row[2], base64.b64decode(row[1]))
    return None if plain is None else (row[0], plain)


def seal(key, version, org, plaintext):
    header = bytes([1]) + struct.pack(">I", version)
    nonce = os.urandom(12)
    ct = AESGCM(key).encrypt(nonce, plaintext.encode(), aad("customers", "nik", org, header))
    return PREFIX + base64.b64encode(header + nonce + ct).decode()


def open_value(db, unwrap, org, text, cache):
    if not text.startswith(PREFIX):
        return text  # stored in plaintext (from before encryption, or an erasure's pseudonym)
    raw = base64.b64decode(text[len(PREFIX):])
    header, nonce, ct = raw[:5], raw[5:17], raw[17:]
    version = struct.unpack(">I", header[1:5])[0]
    if (org, version) not in cache:
        cache[(org, version)] = data_key(db, unwrap, org, version)
    found = cache[(org, version)]
    if found is None:
        return None
    return AESGCM(found[1]).decrypt(nonce, ct, aad("customers", "nik", org, header)).decode()


def main():
    command, url = sys.argv[1], sys.argv[2]
    db, unwrap, cache = Db(url), unwrapper(), {}
    rows = db.all("SELECT id, org_id, nik FROM customers ORDER BY id")
    if command == "write":
        for cid, org, nik in rows:
            plain = open_value(db, unwrap, org, nik, cache)
            version, key = data_key(db, unwrap, org)
            db.conn.execute("UPDATE customers SET nik = ? WHERE id = ?".replace("?", db.marker),
                            (seal(key, version, org, plain), cid))
        db.conn.commit()
    elif command == "read":
        out = {str(cid): open_value(db, unwrap, org, nik, cache) for cid, org, nik in rows}
        print(json.dumps(out))
    else:
        sys.exit(f"unknown command {command}")


if __name__ == "__main__":
    main()
