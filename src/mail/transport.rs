//! SMTP and `.eml`-file transports via lettre.

use lettre::message::header::ContentType;
use lettre::message::{Attachment as LettreAttachment, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::config::{MailConfig, MailTransportKind, SmtpTls};
use crate::error::{Error, Result};
use crate::store::OutboxMail;

pub enum Mailer {
    File {
        dir: std::path::PathBuf,
        from: Mailbox,
    },
    Smtp {
        transport: AsyncSmtpTransport<Tokio1Executor>,
        from: Mailbox,
        describe: String,
    },
}

impl Mailer {
    pub fn new(cfg: &MailConfig) -> Result<Self> {
        let from: Mailbox = cfg
            .from
            .parse()
            .map_err(|e| Error::Mail(format!("mail.from `{}`: {e}", cfg.from)))?;
        match (cfg.transport, &cfg.smtp) {
            (MailTransportKind::File, _) => Ok(Mailer::File {
                dir: cfg.dir.clone(),
                from,
            }),
            (MailTransportKind::Smtp, None) => Err(Error::Mail(
                "mail.transport = \"smtp\" needs [mail.smtp]".into(),
            )),
            (MailTransportKind::Smtp, Some(s)) => {
                let mut b = match s.tls {
                    SmtpTls::None => {
                        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&s.host)
                    }
                    SmtpTls::Starttls => {
                        AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&s.host)
                            .map_err(|e| Error::Mail(format!("SMTP host {}: {e}", s.host)))?
                    }
                    SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&s.host)
                        .map_err(|e| Error::Mail(format!("SMTP host {}: {e}", s.host)))?,
                };
                b = b.port(s.port).timeout(Some(s.timeout));
                if let Some(user) = &s.username {
                    let password = s.password.load().map_err(Error::Mail)?.ok_or_else(|| {
                        Error::Mail(format!(
                            "mail.smtp.username is set but no password was found in {}",
                            s.password.describe()
                        ))
                    })?;
                    b = b.credentials(Credentials::new(
                        user.clone(),
                        password.expose().to_string(),
                    ));
                }
                Ok(Mailer::Smtp {
                    transport: b.build(),
                    from,
                    describe: format!("smtp://{}:{} ({:?})", s.host, s.port, s.tls),
                })
            }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Mailer::File { dir, .. } => format!("file:{}", dir.display()),
            Mailer::Smtp { describe, .. } => describe.clone(),
        }
    }

    /// Checks the transport can be used: folder writable, or SMTP server answering.
    pub async fn test(&self) -> Result<()> {
        match self {
            Mailer::File { dir, .. } => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| Error::io(format!("mail folder {}", dir.display()), e))?;
                let probe = dir.join(".lethe-write-test");
                std::fs::write(&probe, b"ok")
                    .map_err(|e| Error::io(format!("mail folder {}", dir.display()), e))?;
                let _ = std::fs::remove_file(probe);
                Ok(())
            }
            Mailer::Smtp {
                transport,
                describe,
                ..
            } => match transport.test_connection().await {
                Ok(true) => Ok(()),
                Ok(false) => Err(Error::Mail(format!(
                    "{describe} did not accept a connection"
                ))),
                Err(e) => Err(Error::Mail(format!("{describe}: {e}"))),
            },
        }
    }

    pub async fn send(&self, mail: &OutboxMail) -> Result<()> {
        let from = match self {
            Mailer::File { from, .. } | Mailer::Smtp { from, .. } => from,
        };
        let message = build(from, mail)?;
        match self {
            Mailer::File { dir, .. } => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| Error::io(format!("mail folder {}", dir.display()), e))?;
                AsyncFileTransport::<Tokio1Executor>::new(dir)
                    .send(message)
                    .await
                    .map(|_| ())
                    .map_err(|e| Error::Mail(format!("writing .eml to {}: {e}", dir.display())))
            }
            Mailer::Smtp {
                transport,
                describe,
                ..
            } => transport
                .send(message)
                .await
                .map(|_| ())
                .map_err(|e| Error::Mail(format!("{describe}: {e}"))),
        }
    }
}

fn build(from: &Mailbox, mail: &OutboxMail) -> Result<Message> {
    let mut b = Message::builder()
        .from(from.clone())
        .subject(mail.subject.clone())
        // Stable per outbox row: a resend after a crash is recognisable as the same message.
        .message_id(Some(format!(
            "<lethe.outbox.{}.{}@lethe.local>",
            mail.id,
            mail.created_at.timestamp()
        )));
    for r in &mail.recipients {
        let to: Mailbox = r
            .parse()
            .map_err(|e| Error::Mail(format!("recipient `{r}` of outbox mail {}: {e}", mail.id)))?;
        b = b.to(to);
    }
    let alternative = MultiPart::alternative()
        .singlepart(SinglePart::plain(mail.text.clone()))
        .singlepart(SinglePart::html(mail.html.clone()));
    let body = if mail.attachments.is_empty() {
        alternative
    } else {
        let mut mixed = MultiPart::mixed().multipart(alternative);
        for a in &mail.attachments {
            let ct = ContentType::parse(&a.content_type)
                .map_err(|e| Error::Mail(format!("attachment {} content type: {e}", a.filename)))?;
            mixed = mixed
                .singlepart(LettreAttachment::new(a.filename.clone()).body(a.content.clone(), ct));
        }
        mixed
    };
    b.multipart(body)
        .map_err(|e| Error::Mail(format!("building outbox mail {}: {e}", mail.id)))
}
