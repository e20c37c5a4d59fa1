#!/usr/bin/env python3
"""Checks a Lethe Merkle proof (`lethe audit prove --json`) with RFC 9162's
algorithms, from the README's recipe. usage: proof.py PROOF.json [KEY]
(KEY: the audit signing key, to check the anchors' HMACs). Exit 0 if it holds."""
import hashlib, hmac, json, sys
from verify import event_hash  # the recipe's hash rule (verify.py, beside this file)


def H(b): return hashlib.sha256(b).digest()
def node(l, r): return H(b"\x01" + l + r)


def inclusion_root(fn, size, r, path):  # RFC 9162 2.1.3.2
    if fn >= size: return None
    sn = size - 1
    for p in path:
        if sn == 0: return None
        if fn & 1 or fn == sn:
            r = node(p, r)
            while not fn & 1 and fn: fn, sn = fn >> 1, sn >> 1
        else:
            r = node(r, p)
        fn, sn = fn >> 1, sn >> 1
    return r if sn == 0 else None


def consistent(m, n, old, new, path):  # RFC 9162 2.1.4.2
    if m == n: return not path and old == new
    if m & (m - 1) == 0: path = [old] + path
    if not path or m > n: return False
    fn, sn = m - 1, n - 1
    while fn & 1: fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0: return False
        if fn & 1 or fn == sn:
            fr, sr = node(c, fr), node(c, sr)
            while not fn & 1 and fn: fn, sn = fn >> 1, sn >> 1
        else:
            sr = node(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and fr == old and sr == new


def anchor_ok(a, key):
    msg = "lethe-anchor-v2\n%d\n%s\n%s\n%d\n%s" % (a["seq"], a["hash"], a["time"], a["tree_size"], a["root"])
    mac = key and hmac.new(key.encode(), msg.encode(), hashlib.sha256).hexdigest()
    return a["lethe_anchor"] == 2 and a["tree_size"] == a["seq"] and (not key or hmac.compare_digest(mac, a["hmac"]))


def check(p, key):
    path = [bytes.fromhex(h) for h in p["path"]]
    if p["proof"] == "inclusion":
        e, a = p["event"], p["anchor"]
        leaf = H(b"\x00" + bytes.fromhex(e["hash"]))
        return (event_hash(e) == e["hash"] and e["seq"] == p["seq"] and anchor_ok(a, key)
                and a["tree_size"] == p["tree_size"]
                and inclusion_root(p["seq"] - 1, p["tree_size"], leaf, path) == bytes.fromhex(a["root"]))
    o, n = p["old_anchor"], p["new_anchor"]
    return (anchor_ok(o, key) and anchor_ok(n, key)
            and consistent(o["tree_size"], n["tree_size"], bytes.fromhex(o["root"]), bytes.fromhex(n["root"]), path))


if __name__ == "__main__":
    proof = json.load(open(sys.argv[1]))
    ok = check(proof, sys.argv[2] if len(sys.argv) > 2 else None)
    print(json.dumps({"proof": proof["proof"], "ok": ok}))
    sys.exit(0 if ok else 1)
