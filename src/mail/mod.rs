//! Delivering mail: the SMTP (or file) transport and the HTML/text templates.
//! Knows nothing of the outbox; `notify` queues and `mail.flush` sends through it.

mod templates;
mod transport;

pub use templates::{html_escape, render_html, render_text};
pub use transport::Mailer;
