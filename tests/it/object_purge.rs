//! `ObjectStore::purge` on S3 (moto, versioning on unless said), called
//! directly through the fault proxy, which counts the requests by operation:
//! a round of keys close together is listed in a few range pages, a sparse
//! one falls back to one listing per key, and in every case exactly the
//! round's keys lose every version and delete marker (counted afterwards
//! with ListObjectVersions, straight at moto) while every other key keeps all
//! of its own.

use std::collections::BTreeMap;
use std::sync::Arc;

use aws_sdk_s3::primitives::ByteStream;
use futures_util::StreamExt;
use lethe::objstore::{ObjectStore, Purged, Tail};

use crate::common::fault_proxy::{Fault, FaultProxy};
use crate::common::{s3_client, server_env};

/// The store's prefix inside the bucket: keys given to `purge` are under it.
const PREFIX: &str = "app/";

struct Bucket {
    s3: aws_sdk_s3::Client,
    name: String,
    proxy: FaultProxy,
    store: Arc<dyn ObjectStore>,
}

impl Bucket {
    async fn new(versioned: bool) -> Option<Bucket> {
        let moto = server_env("LETHE_TEST_MOTO_URL")?;
        let s3 = s3_client(&moto);
        let name = if versioned {
            crate::common::versioned_bucket(&s3, "purge").await
        } else {
            let name = format!("purge-{}", uuid::Uuid::new_v4().simple());
            s3.create_bucket().bucket(&name).send().await.unwrap();
            name
        };
        let proxy = FaultProxy::start(&moto, Box::new(|_| Fault::Pass)).await;
        // Same value from every test: the store reads its credentials from these.
        std::env::set_var("LETHE_TEST_PURGE_CREDENTIALS", "testing");
        let cfg = lethe::config::ObjectStoreConfig {
            url: format!("s3://{name}/{PREFIX}"),
            endpoint: Some(proxy.url.clone()),
            region: Some("us-east-1".into()),
            path_style: true,
            upload_concurrency: 4,
            credentials_env: Some((
                "LETHE_TEST_PURGE_CREDENTIALS".into(),
                "LETHE_TEST_PURGE_CREDENTIALS".into(),
            )),
        };
        let store = lethe::objstore::open(&cfg).await.unwrap();
        Some(Bucket {
            s3,
            name,
            proxy,
            store,
        })
    }

    /// Writes `versions` versions of each key (under the store's prefix),
    /// 16 at a time, straight at moto.
    async fn put(&self, keys: &[String], versions: usize) {
        let jobs = keys
            .iter()
            .flat_map(|k| (0..versions).map(move |v| (k.clone(), v)))
            .collect::<Vec<_>>();
        // Each key's versions in order: one task a key.
        let mut by_key: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (k, v) in jobs {
            by_key.entry(k).or_default().push(v);
        }
        futures_util::stream::iter(by_key)
            .map(|(key, vs)| async move {
                for v in vs {
                    self.s3
                        .put_object()
                        .bucket(&self.name)
                        .key(format!("{PREFIX}{key}"))
                        .body(ByteStream::from(
                            format!("version {v} of {key}").into_bytes(),
                        ))
                        .send()
                        .await
                        .unwrap();
                }
            })
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await;
    }

    /// A delete marker over `key` (and a new version over it when `again`).
    async fn mark_deleted(&self, key: &str, again: bool) {
        self.s3
            .delete_object()
            .bucket(&self.name)
            .key(format!("{PREFIX}{key}"))
            .send()
            .await
            .unwrap();
        if again {
            self.put(&[key.to_string()], 1).await;
        }
    }

    /// Every version and delete marker in the bucket, counted per key (without the prefix).
    async fn entries(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        let (mut km, mut vm) = (None, None);
        loop {
            let page = self
                .s3
                .list_object_versions()
                .bucket(&self.name)
                .set_key_marker(km.take())
                .set_version_id_marker(vm.take())
                .send()
                .await
                .unwrap();
            let keys = page
                .versions()
                .iter()
                .filter_map(|v| v.key())
                .chain(page.delete_markers().iter().filter_map(|m| m.key()));
            for k in keys {
                let k = k.strip_prefix(PREFIX).unwrap_or(k).to_string();
                *out.entry(k).or_insert(0) += 1;
            }
            if page.is_truncated() != Some(true) {
                return out;
            }
            km = page.next_key_marker().map(str::to_string);
            vm = page.next_version_id_marker().map(str::to_string);
        }
    }

    /// Purges `keys`, counting this call's requests per operation.
    async fn purge(&self, keys: &[String], tail: Tail) -> (Purged, Counts) {
        self.proxy.reset();
        let purged = self.store.purge(keys, tail).await.unwrap();
        let counts = Counts {
            listings: self.proxy.count_op("ListObjectVersions"),
            deletes: self.proxy.count_op("DeleteObjects"),
            other: self.proxy.count_op("other")
                + self.proxy.count_op("ListObjects")
                + self.proxy.count_op("ListObjectsV2"),
            seeks: self.proxy.count(|r| {
                r.s3_op() == "ListObjectVersions"
                    && r.query("key-marker").is_none()
                    && r.query("prefix")
                        .is_some_and(|p| keys.iter().any(|k| format!("{PREFIX}{k}") == p))
            }),
        };
        (purged, counts)
    }
}

#[derive(Debug)]
struct Counts {
    listings: usize,
    deletes: usize,
    other: usize,
    /// Listings of one key (prefix = the key, from its start).
    seeks: usize,
}

fn keys(range: std::ops::Range<usize>, f: impl Fn(usize) -> String) -> Vec<String> {
    range.map(f).collect()
}

/// What must be left: `before` less the purged keys.
fn without(before: &BTreeMap<String, usize>, purged: &[String]) -> BTreeMap<String, usize> {
    let mut left = before.clone();
    for k in purged {
        left.remove(k);
    }
    left
}

/// 1,200 adjacent keys (a prefix purge's page), 300 with two versions and 20
/// with a delete marker between two versions, between neighbours that stay:
/// one seek plus ⌈entries / 1,000⌉ range pages, ⌈entries / 1,000⌉ deletes.
#[tokio::test(flavor = "multi_thread")]
async fn a_contiguous_round_is_listed_in_a_few_range_pages() {
    let Some(b) = Bucket::new(true).await else {
        return;
    };
    let round = keys(0..1200, |i| format!("frames/7/s{:03}/{i:05}.jpg", i / 10));
    let before_keys = keys(0..30, |i| format!("frames/6/s{i:03}/0.jpg"));
    let after_keys = keys(0..30, |i| format!("frames/8/s{i:03}/0.jpg"));
    b.put(&round, 1).await;
    b.put(&round[..300], 1).await;
    for k in &round[600..620] {
        b.mark_deleted(k, true).await;
    }
    b.put(&before_keys, 2).await;
    b.put(&after_keys, 2).await;
    let before = b.entries().await;
    let entries: usize = round.iter().map(|k| before[k]).sum();
    assert_eq!(entries, 1200 + 300 + 40);

    let (purged, n) = b.purge(&round, Tail::Send).await;
    assert_eq!(b.entries().await, without(&before, &round));
    assert_eq!((purged.objects, purged.versions), (1200, entries as u64));
    assert!(purged.unfinished.is_empty());
    assert_eq!(n.deletes, entries.div_ceil(1000), "{n:?}");
    // A seek of the first key, then range pages: 1,540 entries fill two.
    assert!(n.listings <= 1 + entries.div_ceil(1000) + 1, "{n:?}");
    assert_eq!((n.seeks, n.other), (1, 0), "{n:?}");
}

/// Four keys spread over 4,400 others, more than a page apart: a range page
/// finds none of them, so the walk seeks key by key (a range attempt now
/// and then), at most one listing a key plus a few; still exact.
#[tokio::test(flavor = "multi_thread")]
async fn a_sparse_round_falls_back_to_one_listing_a_key() {
    let Some(b) = Bucket::new(true).await else {
        return;
    };
    let others = keys(0..4400, |i| format!("o/{i:05}"));
    let round = keys(0..4, |i| format!("o/{:05}x", i * 1100 + 7));
    b.put(&others, 1).await;
    b.put(&round, 2).await;
    let before = b.entries().await;

    let (purged, n) = b.purge(&round, Tail::Send).await;
    assert_eq!(b.entries().await, without(&before, &round));
    assert_eq!((purged.objects, purged.versions), (4, 8));
    assert_eq!(n.deletes, 1, "{n:?}");
    // Per key it would be 4 listings; ranges alone would read 4,400 others.
    assert_eq!(n.seeks, 4, "every key sought: {n:?}");
    assert!(n.listings <= 4 + 2, "{n:?}");
}

/// `a/1` is purged; `a/10`, `a/1/x` and `a/1 x` extend it and stay. Where
/// both `b/1` and `b/10` go, `b/100` stays.
#[tokio::test(flavor = "multi_thread")]
async fn keys_that_prefix_other_keys_take_only_themselves() {
    let Some(b) = Bucket::new(true).await else {
        return;
    };
    let all: Vec<String> = [
        "a/1", "a/10", "a/1/x", "a/1 x", "a/0", "a/2", "b/1", "b/10", "b/100",
    ]
    .map(String::from)
    .to_vec();
    b.put(&all, 2).await;
    b.mark_deleted("a/1", false).await;
    b.mark_deleted("a/10", false).await;
    let before = b.entries().await;
    assert_eq!(before["a/1"], 3);

    let round: Vec<String> = ["a/1", "b/1", "b/10"].map(String::from).to_vec();
    let (purged, n) = b.purge(&round, Tail::Send).await;
    assert_eq!(b.entries().await, without(&before, &round));
    assert_eq!((purged.objects, purged.versions), (3, 7));
    assert_eq!(purged.by_key["a/1"].0, 3);
    assert_eq!(n.deletes, 1, "{n:?}");
    // Alone, each of them is done with (or before) its own listing.
    let (again, _) = b.purge(&["a/10".to_string()], Tail::Send).await;
    assert_eq!(again.versions, 3);
    let left = b.entries().await;
    assert!(left.contains_key("a/1/x") && left.contains_key("a/1 x") && left.contains_key("b/100"));
    assert!(!left.contains_key("a/10"));
}

/// Spaces, non-ASCII, `+`, `%`, `?`, `#`, `&`, `=` and a ~1,000-byte key:
/// each key's versions go, a neighbour that differs by one character stays.
#[tokio::test(flavor = "multi_thread")]
async fn keys_with_odd_characters_and_long_keys_are_purged_exactly() {
    let Some(b) = Bucket::new(true).await else {
        return;
    };
    let long = format!("long/{}", "é".repeat(200) + &"x".repeat(590));
    assert!(long.len() >= 990 && long.len() + PREFIX.len() <= 1024);
    let round: Vec<String> = [
        "docs/bank statement 2026.pdf",
        "docs/naïve café/日本語.png",
        "docs/a+b.pdf",
        "docs/100%.pdf",
        "docs/%2F encoded.pdf",
        "docs/q?x=1&y=2#frag.pdf",
        "docs/😀.jpg",
        &long,
    ]
    .map(String::from)
    .to_vec();
    let neighbours: Vec<String> = [
        "docs/bank statement 2026.pdf ",
        "docs/a b.pdf",
        "docs/100%25.pdf",
        "docs/naïve café/日本語.png.bak",
    ]
    .map(String::from)
    .into_iter()
    .chain([format!("{long}y")])
    .collect();
    b.put(&round, 2).await;
    b.put(&neighbours, 1).await;
    let before = b.entries().await;
    assert_eq!(before.len(), round.len() + neighbours.len());

    let (purged, n) = b.purge(&round, Tail::Send).await;
    assert_eq!(b.entries().await, without(&before, &round));
    assert_eq!((purged.objects, purged.versions), (8, 16));
    for k in &round {
        assert_eq!(purged.by_key[k].0, 2, "{k}");
    }
    assert_eq!(n.deletes, 1, "{n:?}");
}

/// Without versioning a key has one entry (version "null"): deleted by key,
/// listed by range pages all the same.
#[tokio::test(flavor = "multi_thread")]
async fn an_unversioned_bucket_is_purged_by_range_too() {
    let Some(b) = Bucket::new(false).await else {
        return;
    };
    let round = keys(0..1100, |i| format!("u/{i:05}.jpg"));
    let others = keys(0..20, |i| format!("u/{i:05}.jpg.keep"));
    b.put(&round, 1).await;
    b.put(&others, 1).await;
    let before = b.entries().await;

    let (purged, n) = b.purge(&round, Tail::Send).await;
    assert_eq!(b.entries().await, without(&before, &round));
    assert_eq!((purged.objects, purged.versions), (1100, 1100));
    assert_eq!(n.deletes, 2, "{n:?}");
    assert!(n.listings <= 4, "{n:?}");
}

/// `Tail::Defer` sends only full requests and hands back the keys of the
/// part-full rest; passing them again with `Tail::Send` deletes
/// them: two requests for 1,500 versions over two calls, not three.
#[tokio::test(flavor = "multi_thread")]
async fn a_deferred_tail_waits_for_the_next_call() {
    let Some(b) = Bucket::new(true).await else {
        return;
    };
    let first = keys(0..1000, |i| format!("d/{i:05}"));
    let second = keys(1000..1500, |i| format!("d/{i:05}"));
    b.put(&first, 1).await;
    b.put(&first[..250], 1).await;
    b.put(&second, 1).await;

    let (one, n1) = b.purge(&first, Tail::Defer).await;
    assert_eq!(n1.deletes, 1, "{n1:?}");
    assert_eq!(one.versions, 1000);
    assert!(!one.unfinished.is_empty());
    let left = b.entries().await;
    for k in &first {
        let gone = !left.contains_key(k);
        assert_eq!(
            gone,
            !one.unfinished.contains(k),
            "{k}: deleted unless unfinished"
        );
    }
    // Counted once it is gone: no object twice.
    assert_eq!(one.objects, 1000 - one.unfinished.len() as u64);

    let mut rest: Vec<String> = one.unfinished.iter().cloned().collect();
    rest.extend(second.iter().cloned());
    let (two, n2) = b.purge(&rest, Tail::Send).await;
    assert_eq!(n1.deletes + n2.deletes, 2, "{n2:?}");
    assert_eq!(one.versions + two.versions, 1750);
    assert_eq!(one.objects + two.objects, 1500, "every key counted once");
    assert!(b.entries().await.is_empty());
}

/// `[[object_retention]]` over S3 through `lethe run`: 5,600 frames of a
/// closed org expire (600 with two versions, 20 with a delete marker between
/// two), an open org's and a held org's stay. The prefix purge goes over
/// several listing pages and rounds of pending deletes, yet sends
/// ⌈versions / 1,000⌉ `DeleteObjects` (no part-full request a round) and
/// far fewer version listings than keys; every expired version is gone,
/// every kept one is there.
#[tokio::test(flavor = "multi_thread")]
async fn a_prefix_purge_sends_full_delete_requests_across_rounds() {
    use crate::common::{app_exec, run_ok, ConfigDir};
    let Some(b) = Bucket::new(true).await else {
        return;
    };
    let frame = |org: usize, i: usize| format!("frames/{org}/{}/{i:05}.jpg", 100 + i / 8);
    let expired = keys(0..5600, |i| frame(1, i));
    let open = keys(0..40, |i| frame(2, i));
    let held = keys(0..40, |i| frame(3, i));
    b.put(&expired, 1).await;
    b.put(&expired[..600], 1).await;
    for k in &expired[3000..3020] {
        b.mark_deleted(k, true).await;
    }
    // Deleted by the application: a delete marker on top, the data below.
    // Invisible to a listing of current objects; retention must see them.
    for k in &expired[4000..4020] {
        b.mark_deleted(k, false).await;
    }
    b.put(&open, 2).await;
    b.put(&held, 2).await;
    let before = b.entries().await;
    let versions: usize = expired.iter().map(|k| before[k]).sum();
    assert_eq!(versions, 5600 + 600 + 40 + 20);
    let entries: usize = before.values().sum();

    let c = ConfigDir::full(
        None,
        None,
        "",
        "",
        &format!(
            "[app]\nsubjects = {{ table = \"users\", id = \"id\", email = \"email\" }}\n\
             orgs = {{ table = \"orgs\", id = \"id\", closed_at = \"closed_at\" }}\n\n\
             [object_stores.captures]\nurl = \"s3://{}/{PREFIX}\"\nendpoint = \"{}\"\n\
             region = \"us-east-1\"\npath_style = true\n\n\
             [[object_retention]]\nstore = \"captures\"\nkeys = \"frames/{{org}}/{{subject}}/\"\n\
             class = \"identity_frames\"\nretention = [\"3650d\", \"org_closed+30d\"]\n",
            b.name, b.proxy.url
        ),
    );
    let url = format!("sqlite://{}", c.path().join("app.db").display());
    app_exec(
        &url,
        "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT);
         CREATE TABLE orgs (id INTEGER PRIMARY KEY, closed_at TEXT);
         INSERT INTO orgs VALUES (1, datetime('now', '-400 days')), (2, NULL),
                                 (3, datetime('now', '-400 days'));",
    )
    .await;
    c.job(
        "purge",
        "kind = \"retention.purge\"\nschedule = \"0 0 3 * * *\"\nmax_attempts = 1\n",
    );
    run_ok(c.lethe().arg("migrate"));
    run_ok(
        c.lethe()
            .args(["hold", "add", "--org", "3", "--reason", "litigation"]),
    );
    b.proxy.reset();
    let r = crate::common::run_job(c.lethe_aws(), "purge", &[]);
    assert_eq!(r["status"], "succeeded", "{r}");
    let (listings, deletes, pages) = (
        b.proxy.count_op("ListObjectVersions"),
        b.proxy.count_op("DeleteObjects"),
        b.proxy.count_op("ListObjectsV2"),
    );
    assert_eq!(b.entries().await, without(&before, &expired));
    let t = &r["result"]["objects"]["identity_frames"]["1"];
    assert_eq!(
        (&t["objects"], &t["versions"]),
        (&5600.into(), &versions.into()),
        "{r}"
    );
    // Each key once, though its versions straddle listing pages.
    assert_eq!(
        r["result"]["object_retention"][0]["listed"],
        5600 + 80,
        "{r}"
    );
    assert_eq!(
        r["result"]["object_retention"][0]["kept_for_holds"], 40,
        "{r}"
    );
    assert_eq!(
        deletes,
        versions.div_ceil(1000),
        "one part-full request in all"
    );
    assert_eq!(
        pages, 0,
        "keys are found by their versions, not current objects"
    );
    // The rule's listing, every entry once, page by page; then per round of
    // 5,000 keys a seek and ~1,000 entries a page.
    assert!(
        listings <= entries.div_ceil(1000) + 1 + 2 * 2 + versions.div_ceil(1000) + 2,
        "{listings} listings"
    );
}
