"""moto's S3 for benches/object_purge.sh, with three additions that change no
S3 answer:

- Every request is counted by bucket and operation (ListObjectVersions,
  ListObjectsV2, ListObjects, DeleteObjects, other) as it arrives: the
  counting proxy of the benchmark, inside the server instead of one more hop.
- moto deep-copies every version of the bucket on each ListObjectVersions
  call (~200 us a version: 20-30 s a call at 100 k versions on this machine),
  only to set `is_latest` on the copies. Those copies are made shallow here
  (same attributes, same answer), unless STOCK_MOTO=1. A call still sorts the
  whole bucket (O(versions in the bucket)), which no real S3 does.
- Control endpoints under /_bench/ (no bucket name starts with `_`):
    POST /_bench/seed?bucket=B&n=N&seed=S&held=1,2  fills a new versioned
         bucket in-process (the same content for the same n and seed) and
         writes what must remain after the purge to ?expect=PATH (JSON);
    GET  /_bench/counts?bucket=B  the counts so far, as JSON;
    POST /_bench/drop?bucket=B    empties and deletes a bucket.
  Filling in-process takes seconds where 100 k PUTs over HTTP take minutes.

Usage: python object_purge_server.py PORT
"""

import datetime
import json
import os
import random
import sys
import threading
import urllib.parse
from collections import defaultdict

import moto.s3.models as s3models
from moto.core import DEFAULT_ACCOUNT_ID
from moto.server import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple

if os.environ.get("STOCK_MOTO") != "1":

    class _ListedKey(s3models.FakeKey):
        """A listing's copy of a version: shares the original's value buffer,
        so it must never close it (a FakeKey closes its buffer when collected)."""

        __module__ = "moto.s3.models"  # moto's model registry files classes by service

        def dispose(self, garbage=False):
            pass

        def __del__(self):
            pass

    def _shallow_key(self, memo):
        new = object.__new__(_ListedKey)
        new.__dict__.update(self.__dict__)
        return new

    def _shallow_marker(self, memo):
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        return new

    s3models.FakeKey.__deepcopy__ = _shallow_key
    s3models.FakeDeleteMarker.__deepcopy__ = _shallow_marker

COUNTS = defaultdict(lambda: defaultdict(int))
LOCK = threading.Lock()
DAY = datetime.timedelta(days=1)


def operation(method, path, query):
    """The S3 operation of a path-style request: (bucket, name)."""
    parts = path.strip("/").split("/", 1)
    bucket = urllib.parse.unquote(parts[0])
    on_bucket = len(parts) == 1 or parts[1] == ""
    q = urllib.parse.parse_qs(query, keep_blank_values=True)
    if on_bucket and method == "GET" and "versions" in q:
        return bucket, "ListObjectVersions"
    if on_bucket and method == "GET" and q.get("list-type") == ["2"]:
        return bucket, "ListObjectsV2"
    if on_bucket and method == "GET" and not q:
        return bucket, "ListObjects"
    if on_bucket and method == "POST" and "delete" in q:
        return bucket, "DeleteObjects"
    return bucket, "other"


def backend():
    return s3models.s3_backends[DEFAULT_ACCOUNT_ID]["aws"]


def seed(bucket, n, seed_value, held_orgs, expect_path):
    """A versioned bucket of `n` identity-capture frames under
    frames/{org}/{subject}/{frame}.jpg, 100 orgs, 5 frames a subject, 0.5-1.5 KB
    each. 10 % of the frames have an older version, 1 % a delete marker
    between two versions. 5 % of the subjects captured recently (kept: under
    the 90 days); the frames of `held_orgs` are as old as the rest (kept by
    their orgs' legal hold). Everything else is 100-400 days old."""
    rng = random.Random(seed_value)
    b = backend()
    b.create_bucket(bucket, "us-east-1")
    b.put_bucket_versioning(bucket, "Enabled")
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    kept, expired_keys, expired_versions, total_versions = {}, 0, 0, 0
    subjects = max(1, n // 5)
    recent = False
    for i in range(n):
        subject = i // 5
        org = 1 + subject % 100
        key = f"frames/{org}/u{subject:07d}/{i % 5:02d}-{rng.getrandbits(32):08x}.jpg"
        if i % 5 == 0:  # a subject's frames are captured together
            recent = rng.random() < 0.05
        age = rng.uniform(0, 80) if recent else rng.uniform(100, 400)
        kind = rng.random()
        bodies = 2 if kind < 0.11 else 1
        entries = []
        for v in range(bodies):
            body = b"\xff\xd8\xff\xe0" + rng.randbytes(rng.randint(508, 1532))
            entries.append(b.put_object(bucket, key, body))
            if kind < 0.01 and v == 0:  # v1, delete marker, v2
                b.delete_object(bucket, key)
                entries.append(b.get_bucket(bucket).keys.getlist(key)[-1])
        # Oldest first: each older entry a few days before the next.
        for j, e in enumerate(reversed(entries)):
            e.last_modified = now - (age + 3 * j) * DAY
        total_versions += len(entries)
        if recent or org in held_orgs:
            kept[key] = len(entries)
        else:
            expired_keys += 1
            expired_versions += len(entries)
    summary = {
        "bucket": bucket, "objects": n, "subjects": subjects, "versions": total_versions,
        "expired_objects": expired_keys, "expired_versions": expired_versions,
        "kept_objects": len(kept), "kept_versions": sum(kept.values()),
    }
    with open(expect_path, "w") as f:
        json.dump({"summary": summary, "kept": kept}, f)
    return summary


def drop(bucket):
    b = backend()
    bk = b.get_bucket(bucket)
    for name in list(bk.keys.keys()):
        for v in list(bk.keys.getlist(name)):
            b.delete_object(bucket, name, v.version_id, bypass=True)
    b.delete_bucket(bucket)


def control(environ, start_response):
    path = environ["PATH_INFO"]
    q = {k: v[0] for k, v in urllib.parse.parse_qs(environ.get("QUERY_STRING", "")).items()}
    if path == "/_bench/seed":
        held = {int(x) for x in q.get("held", "").split(",") if x}
        out = seed(q["bucket"], int(q["n"]), int(q.get("seed", "1")), held, q["expect"])
    elif path == "/_bench/counts":
        with LOCK:
            out = dict(COUNTS[q["bucket"]])
    elif path == "/_bench/drop":
        drop(q["bucket"])
        out = {"dropped": q["bucket"]}
    else:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"unknown control path\n"]
    body = json.dumps(out).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


class Counting:
    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        if environ["PATH_INFO"].startswith("/_bench/"):
            return control(environ, start_response)
        bucket, op = operation(environ["REQUEST_METHOD"], environ["PATH_INFO"],
                               environ.get("QUERY_STRING", ""))
        with LOCK:
            COUNTS[bucket][op] += 1
        return self.app(environ, start_response)


if __name__ == "__main__":
    app = DomainDispatcherApplication(create_backend_app)
    run_simple("127.0.0.1", int(sys.argv[1]), Counting(app), threaded=True)
