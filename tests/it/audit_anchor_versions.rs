//! Anchors on S3 are read at their current version only, so an anchor
//! written again (a new version over the locked one: Object Lock keeps old
//! versions, it does not stop new ones) or hidden by a delete marker would
//! pass unseen. `audit verify --live` lists every version of the anchor keys
//! on the (always versioned) Object Lock bucket and reports any key with
//! more than one version or a delete marker as tampering, naming the key.

use crate::audit_anchors::Rig;
use crate::common::{s3_client, server_env};

fn bucket(rig: &Rig) -> String {
    let toml = std::fs::read_to_string(rig.c.config()).unwrap();
    let rest = toml.split("s3://").nth(1).unwrap();
    rest.split('/').next().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overwritten_or_deleted_s3_anchor_is_reported_as_tampering() {
    let Some(rig) = Rig::postgres().await else {
        return;
    };
    let a = rig.build();
    let (code, v) = rig.live();
    assert_eq!((code, &v["verdict"]), (0, &"anchored".into()), "{v}");
    assert_eq!(v["anchors"]["overwritten"], serde_json::json!([]), "{v}");

    let s3 = s3_client(&server_env("LETHE_TEST_MOTO_URL").unwrap());
    let b = bucket(&rig);
    // The same bytes written again over anchor a[1]: its content still
    // verifies, but the key now has two versions.
    let name = format!("{:020}.json", a[1]);
    let key = format!("anchors/{name}");
    let got = s3.get_object().bucket(&b).key(&key).send().await.unwrap();
    let body = got.body.collect().await.unwrap().into_bytes();
    s3.put_object()
        .bucket(&b)
        .key(&key)
        .body(body.into())
        .send()
        .await
        .unwrap();
    let (code, v) = rig.live();
    assert_eq!((code, &v["verdict"]), (1, &"broken".into()), "{v}");
    assert_eq!(v["first_bad_seq"], a[1], "{v}");
    let problem = v["finding"]["problem"].as_str().unwrap();
    assert!(
        problem.contains(&format!("anchor object {name}")) && problem.contains("2 versions"),
        "{problem}"
    );

    // A delete marker over anchor a[2] hides it from a listing; the
    // versions show it.
    let hidden = format!("{:020}.json", a[2]);
    s3.delete_object()
        .bucket(&b)
        .key(format!("anchors/{hidden}"))
        .send()
        .await
        .unwrap();
    let (code, v) = rig.live();
    assert_eq!(code, 1, "{v}");
    let overwritten = v["anchors"]["overwritten"].as_array().unwrap();
    assert_eq!(overwritten.len(), 2, "{v}");
    assert_eq!(
        (&overwritten[1]["key"], &overwritten[1]["delete_markers"]),
        (&hidden.into(), &1.into()),
        "{v}"
    );
}
