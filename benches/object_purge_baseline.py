"""The baseline of benches/object_purge.sh: what an `aws s3api` user writes
to purge expired files from a versioned bucket, in boto3. Every version and
delete marker under the prefix is listed (list_object_versions, pages of
1,000); a key is expired when its current entry is older than the retention
and its org (the key's second segment) is not on hold; then every entry of
the expired keys goes in delete_objects requests of 1,000. (`aws s3 rm
--recursive` only puts a delete marker over each current version: every old
version, the data, stays.) The whole listing is kept before the deletes:
deleting while paging breaks on moto, which finds its continuation marker by
looking up that exact version, so a deleted one ends the listing early.

Usage: python object_purge_baseline.py ENDPOINT BUCKET HELD_ORGS(1,2) DAYS
Prints one JSON line: versions listed, entries deleted, keys kept for holds.
"""

import datetime
import json
import sys

import boto3

endpoint, bucket, held, days = sys.argv[1], sys.argv[2], set(sys.argv[3].split(",")), int(sys.argv[4])
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  aws_access_key_id="testing", aws_secret_access_key="testing")
cutoff = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=days)

expired, held_keys, listed, doomed = {}, set(), 0, []
pages = s3.get_paginator("list_object_versions").paginate(
    Bucket=bucket, Prefix="frames/", PaginationConfig={"PageSize": 1000})
for page in pages:
    entries = page.get("Versions", []) + page.get("DeleteMarkers", [])
    listed += len(entries)
    # A key's current entry comes first in the listing: in this page or an earlier one.
    for e in entries:
        if e["IsLatest"]:
            org = e["Key"].split("/")[1]
            old = e["LastModified"] < cutoff
            expired[e["Key"]] = old and org not in held
            if old and org in held:
                held_keys.add(e["Key"])
    doomed.extend({"Key": e["Key"], "VersionId": e["VersionId"]}
                  for e in entries if expired.get(e["Key"]))

for i in range(0, len(doomed), 1000):
    r = s3.delete_objects(Bucket=bucket, Delete={"Objects": doomed[i:i + 1000], "Quiet": True})
    if r.get("Errors"):
        sys.exit(f"delete_objects failed: {r['Errors'][:3]}")
print(json.dumps({"versions_listed": listed, "deleted": len(doomed),
                  "kept_for_holds": len(held_keys)}))
