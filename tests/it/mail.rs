//! Mail through the durable outbox to a real SMTP sink (aiosmtpd) and to
//! `.eml` files; an SMTP outage loses nothing and sends nothing twice.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::common::ConfigDir;
use lethe::context::Context;
use lethe::fence::Fence;
use lethe::notify::{self, Block, Message, Role};
use lethe::store::{Attachment, MailState};
use tokio::net::TcpListener;

async fn open(c: &ConfigDir) -> Arc<Context> {
    let ctx = Context::open_unchecked(c.load()).await.unwrap();
    ctx.store.migrate().await.unwrap();
    ctx
}

fn message(subject: &str) -> Message {
    Message {
        role: Role::Dpo,
        subject: subject.into(),
        blocks: vec![Block::Para("Two requests are at risk <soon>.".into())],
        attachments: vec![Attachment {
            filename: "report.csv".into(),
            content_type: "text/csv".into(),
            content: "id,state\n1,at_risk\n".into(),
        }],
        dedupe_key: Some(format!("test:{subject}")),
    }
}

/// Every message file in a Maildir (or an .eml folder) whose text contains `needle`.
fn messages_containing(dir: &Path, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(text) = std::fs::read_to_string(&p) {
                if text.contains(needle) {
                    found.push(text);
                }
            }
        }
    }
    found
}

fn assert_multipart(text: &str) {
    assert!(text.contains("multipart/alternative"), "{text}");
    assert!(text.contains("Content-Type: text/plain"), "{text}");
    assert!(text.contains("Content-Type: text/html"), "{text}");
    assert!(text.contains("&lt;soon&gt;"), "HTML part is escaped");
    assert!(text.contains("filename=\"report.csv\""), "CSV attached");
    assert!(text.contains("To: dpo@test.example"));
}

fn smtp_section(port: u16) -> String {
    format!("transport = \"smtp\"\nretry_base = \"50ms\"\n[mail.smtp]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\ntimeout = \"5s\"")
}

#[tokio::test(flavor = "multi_thread")]
async fn smtp_delivers_html_text_and_attachment_to_the_sink() {
    let Some(smtp) = crate::common::server_env("LETHE_TEST_SMTP") else {
        return;
    };
    let maildir = crate::common::server_env("LETHE_TEST_MAILDIR").unwrap();
    let port: u16 = smtp.rsplit_once(':').unwrap().1.parse().unwrap();
    let c = ConfigDir::new(None, "", &smtp_section(port));
    let ctx = open(&c).await;
    let subject = format!("SLA report {}", uuid::Uuid::new_v4());
    notify::enqueue(&ctx, message(&subject))
        .await
        .unwrap()
        .unwrap();
    let report = notify::flush(&ctx, 10, &Fence::unleased()).await.unwrap();
    assert_eq!((report.sent, report.retrying), (1, 0));
    let found = messages_containing(Path::new(&maildir), &subject);
    assert_eq!(found.len(), 1, "exactly one copy arrived");
    assert_multipart(&found[0]);
    let mail = ctx.store.outbox_list(10).await.unwrap();
    assert_eq!(mail[0].state, MailState::Sent);
}

/// A TCP forwarder to the sink that can be switched off: "SMTP is down" for real.
async fn forwarder(listen_port: u16, target: String) -> tokio::task::JoinHandle<()> {
    let listener = TcpListener::bind(("127.0.0.1", listen_port)).await.unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(mut out) = tokio::net::TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn smtp_outage_keeps_mail_queued_and_delivers_it_once_when_back() {
    let Some(smtp) = crate::common::server_env("LETHE_TEST_SMTP") else {
        return;
    };
    let maildir = crate::common::server_env("LETHE_TEST_MAILDIR").unwrap();
    let port = crate::common::free_port(); // nothing listens here yet: SMTP is down
    let c = ConfigDir::new(None, "", &smtp_section(port));
    c.job(
        "mail",
        "kind = \"mail.flush\"\nschedule = \"0 * * * * *\"\n",
    );
    let ctx = open(&c).await;
    let subject = format!("Breach reminder {}", uuid::Uuid::new_v4());
    notify::enqueue(&ctx, message(&subject)).await.unwrap();

    let spec = ctx.config.job("mail").unwrap().clone();
    let down = lethe::runner::run_now(
        &ctx,
        &lethe::jobs::registry(),
        &spec,
        spec.params.clone(),
        false,
    )
    .await
    .unwrap();
    assert_eq!(
        down.status, "failed",
        "an SMTP outage fails the flush run visibly"
    );
    assert!(down.error.unwrap().contains("not delivered"));
    let queued = ctx.store.outbox_list(10).await.unwrap();
    assert_eq!(
        (queued[0].state, queued[0].attempts),
        (MailState::Pending, 1)
    );
    assert!(queued[0].last_error.is_some());

    let proxy = forwarder(port, smtp).await; // SMTP is back
    tokio::time::sleep(Duration::from_millis(120)).await; // past the 50ms retry backoff
    let report = notify::flush(&ctx, 10, &Fence::unleased()).await.unwrap();
    assert_eq!(report.sent, 1);
    assert_eq!(
        notify::flush(&ctx, 10, &Fence::unleased())
            .await
            .unwrap()
            .sent,
        0,
        "nothing is sent twice"
    );
    proxy.abort();
    let found = messages_containing(Path::new(&maildir), &subject);
    assert_eq!(found.len(), 1, "delivered exactly once after the outage");
}

#[tokio::test(flavor = "multi_thread")]
async fn file_transport_writes_eml_with_both_parts_and_gives_up_after_max_attempts() {
    let c = ConfigDir::new(
        None,
        "",
        "transport = \"file\"\ndir = \"mail\"\nmax_attempts = 1",
    );
    let ctx = open(&c).await;
    let subject = format!("Export ready {}", uuid::Uuid::new_v4());
    notify::enqueue(&ctx, message(&subject)).await.unwrap();
    // The same dedupe key does not queue a second copy.
    notify::enqueue(&ctx, message(&subject)).await.unwrap();
    assert_eq!(
        notify::flush(&ctx, 10, &Fence::unleased())
            .await
            .unwrap()
            .sent,
        1
    );
    let found = messages_containing(&c.path().join("mail"), &subject);
    assert_eq!(found.len(), 1);
    assert_multipart(&found[0]);

    // An unwritable folder: with max_attempts = 1 the message is marked failed, not retried forever.
    let blocked = ConfigDir::new(
        None,
        "",
        "transport = \"file\"\ndir = \"blocked/mail\"\nmax_attempts = 1",
    );
    std::fs::write(blocked.path().join("blocked"), b"a file, not a folder").unwrap();
    let ctx = open(&blocked).await;
    notify::enqueue(&ctx, message("will fail")).await.unwrap();
    let r = notify::flush(&ctx, 10, &Fence::unleased()).await.unwrap();
    assert_eq!((r.sent, r.failed), (0, 1));
    assert_eq!(
        ctx.store.outbox_list(10).await.unwrap()[0].state,
        MailState::Failed
    );
}
