#!/usr/bin/env python3
"""An auditor's verifier for Lethe's evidence, written from the README's
"Auditor's recipe" alone (nothing imported from Lethe): checks an export's
hash chain and signature block, and every anchor in a folder of anchors.

usage: verify.py EXPORT.jsonl [ANCHOR_DIR] [KEY]   (KEY: the audit signing key)
prints one JSON object; exit 0 when everything checks out, 1 otherwise.
"""
import hashlib
import hmac
import json
import math
import os
import sys


def jcs(v):
    """RFC 8785: keys sorted by UTF-16 code units, minimal string escapes,
    numbers in ECMAScript form."""
    if isinstance(v, dict):
        keys = sorted(v, key=lambda k: k.encode("utf-16-be"))
        return "{" + ",".join(jcs(k) + ":" + jcs(v[k]) for k in keys) + "}"
    if isinstance(v, list):
        return "[" + ",".join(jcs(x) for x in v) + "]"
    if isinstance(v, bool) or v is None:
        return json.dumps(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if v.is_integer() and abs(v) < 1e21:
            return str(int(v))
        r = repr(v)
        if "e" in r:
            mant, exp = r.split("e")
            exp = int(exp)
            return mant + "e" + ("+" if exp > 0 else "-") + str(abs(exp))
        return r
    return json.dumps(v, ensure_ascii=False)


def sorted_json(v):
    """Rule 1: compact JSON, keys sorted by UTF-8 bytes."""
    if isinstance(v, dict):
        keys = sorted(v, key=lambda k: k.encode("utf-8"))
        return "{" + ",".join(json.dumps(k, ensure_ascii=False) + ":" + sorted_json(v[k]) for k in keys) + "}"
    if isinstance(v, list):
        return "[" + ",".join(sorted_json(x) for x in v) + "]"
    return json.dumps(v, ensure_ascii=False)


def event_hash(line):
    body = {k: line[k] for k in ("seq", "at", "actor", "action", "target", "details")}
    rule = line.get("rule", 1)
    if rule == 2:
        body["rule"] = 2
        text = jcs(body)
    elif rule == 1:
        text = sorted_json(body)
    else:
        raise ValueError("unknown rule %r" % rule)
    return hashlib.sha256((line["prev_hash"] + "\n" + text).encode("utf-8")).hexdigest()


def verify_export(path, key):
    out = {"events": 0, "last_hash": "0" * 64, "signature": "absent", "problem": None, "hashes": {}}
    mac = hmac.new(key.encode("utf-8"), digestmod=hashlib.sha256) if key else None
    with open(path, "rb") as f:
        for n, raw in enumerate(f.read().split(b"\n"), start=1):
            if not raw:
                continue
            line = json.loads(raw)
            if "signature" in line:
                sig = line["signature"]
                if sig["events"] != out["events"] or sig["last_hash"] != out["last_hash"]:
                    out["problem"] = "line %d: signature block does not match the events" % n
                elif mac is None:
                    out["signature"] = "unchecked"
                elif hmac.compare_digest(mac.hexdigest(), sig["hmac"]):
                    out["signature"] = "valid"
                else:
                    out["signature"] = "invalid"
                    out["problem"] = "line %d: HMAC does not match" % n
                continue
            if line["seq"] != out["events"] + 1 or line["prev_hash"] != out["last_hash"]:
                out["problem"] = "line %d: sequence or link broken" % n
                break
            if event_hash(line) != line["hash"]:
                out["problem"] = "line %d: hash does not match" % n
                break
            out["events"] += 1
            out["last_hash"] = line["hash"]
            out["hashes"][line["seq"]] = line["hash"]
            if mac is not None:
                mac.update(raw + b"\n")
    return out


def merkle_root(leaves):
    """RFC 9162: leaf = SHA-256(0x00 || data), node = SHA-256(0x01 || left || right),
    split at the largest power of two below the size."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + merkle_root(leaves[:k]) + merkle_root(leaves[k:])).digest()


def verify_anchors(folder, key, hashes, last_seq):
    res = {"matched": 0, "later": 0, "problem": None}
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".json"):
            continue
        with open(os.path.join(folder, name), "rb") as f:
            a = json.load(f)
        if name != "%020d.json" % a["seq"] or a["lethe_anchor"] not in (1, 2):
            res["problem"] = "%s: not an anchor for its name" % name
            break
        msg = "lethe-anchor-v1\n%d\n%s\n%s" % (a["seq"], a["hash"], a["time"])
        if a["lethe_anchor"] == 2:
            msg = "lethe-anchor-v2\n%s\n%d\n%s" % (msg[len("lethe-anchor-v1\n"):], a["tree_size"], a["root"])
        want = hmac.new(key.encode("utf-8"), msg.encode("utf-8"), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(want, a["hmac"]):
            res["problem"] = "%s: HMAC does not match" % name
            break
        if a["seq"] > last_seq:
            res["later"] += 1
        elif hashes.get(a["seq"]) != a["hash"]:
            res["problem"] = "seq %d does not hold what was anchored at %s" % (a["seq"], a["time"])
            break
        elif a["lethe_anchor"] == 2 and (a["tree_size"] != a["seq"] or merkle_root(
                [bytes.fromhex(hashes[s]) for s in range(1, a["seq"] + 1)]).hex() != a["root"]):
            res["problem"] = "%s: the Merkle root is not that of events 1..%d" % (name, a["seq"])
            break
        else:
            res["matched"] += 1
    return res


def main():
    path = sys.argv[1]
    folder = sys.argv[2] if len(sys.argv) > 2 else None
    key = sys.argv[3] if len(sys.argv) > 3 else os.environ.get("AUDIT_SIGNING_KEY")
    out = verify_export(path, key)
    hashes = out.pop("hashes")
    if folder and out["problem"] is None:
        out["anchors"] = verify_anchors(folder, key, hashes, out["events"])
        out["problem"] = out["anchors"]["problem"]
    out["ok"] = out["problem"] is None
    print(json.dumps(out))
    sys.exit(0 if out["ok"] else 1)


if __name__ == "__main__":
    main()
