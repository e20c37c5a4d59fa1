"""A reference application for Lethe's encrypted columns, written the way a
real application would: it reads its org's data key from the key table Lethe
keeps (`org_data_keys`), unwraps it with KMS Decrypt, and reads and writes
`customers.nik` in the documented `lethe1:` format with AES-256-GCM.

Usage (SQLite application database, AWS KMS or a compatible endpoint):
  app.py write DB   encrypt every customer's NIK under its org's newest active key
  app.py read DB    print {"<id>": "<nik>" | null} (null: the value cannot be read)

Environment: AWS_ENDPOINT_URL (moto in the tests), AWS_REGION and credentials.
"""

import base64
import json
import os
import sqlite3
import struct
import sys

import boto3
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PREFIX = "lethe1:"


def kms():
    return boto3.client("kms", endpoint_url=os.environ.get("AWS_ENDPOINT_URL"),
                        region_name=os.environ.get("AWS_REGION", "us-east-1"))


def aad(table, column, org, header):
    return b"\0".join(p.encode() for p in ("lethe1", table, column, str(org))) + b"\0" + header


def data_key(db, client, org, version=None):
    """The org's key (a given version, or the newest active one), unwrapped; None if destroyed."""
    if version is None:
        row = db.execute("SELECT version, wrapped_key, kms_key_id FROM org_data_keys "
                         "WHERE org_id = ? AND state = 'active' ORDER BY version DESC LIMIT 1", (org,)).fetchone()
    else:
        row = db.execute("SELECT version, wrapped_key, kms_key_id FROM org_data_keys "
                         "WHERE org_id = ? AND version = ? AND state <> 'destroyed'", (org, version)).fetchone()
    if row is None or not row[1]:
        return None
    plain = client.decrypt(CiphertextBlob=base64.b64decode(row[1]), KeyId=row[2])["Plaintext"]
    return row[0], plain


def seal(key, version, org, plaintext):
    header = bytes([1]) + struct.pack(">I", version)
    nonce = os.urandom(12)
    ct = AESGCM(key).encrypt(nonce, plaintext.encode(), aad("customers", "nik", org, header))
    return PREFIX + base64.b64encode(header + nonce + ct).decode()


def open_value(db, client, org, text, cache):
    raw = base64.b64decode(text[len(PREFIX):])
    header, nonce, ct = raw[:5], raw[5:17], raw[17:]
    version = struct.unpack(">I", header[1:5])[0]
    if (org, version) not in cache:
        cache[(org, version)] = data_key(db, client, org, version)
    found = cache[(org, version)]
    if found is None:
        return None
    return AESGCM(found[1]).decrypt(nonce, ct, aad("customers", "nik", org, header)).decode()


def main():
    command, path = sys.argv[1], sys.argv[2]
    db = sqlite3.connect(path)
    client = kms()
    cache = {}
    rows = db.execute("SELECT id, org_id, nik FROM customers ORDER BY id").fetchall()
    if command == "write":
        for cid, org, nik in rows:
            plain = open_value(db, client, org, nik, cache) if nik.startswith(PREFIX) else nik
            version, key = data_key(db, client, org)
            db.execute("UPDATE customers SET nik = ? WHERE id = ?", (seal(key, version, org, plain), cid))
        db.commit()
    elif command == "read":
        out = {str(cid): open_value(db, client, org, nik, cache) for cid, org, nik in rows}
        print(json.dumps(out))
    else:
        sys.exit(f"unknown command {command}")


if __name__ == "__main__":
    main()
