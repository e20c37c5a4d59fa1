//! Delivering mail: the SMTP (or file) transport, the blocks a message is
//! made of, and their HTML/text rendering. Knows nothing of the outbox;
//! `notify` queues and `mail.flush` sends through it.

mod blocks;
mod templates;
mod transport;
mod zone;

pub use blocks::{html_escape, Bar, Bars, Block, Row, Table, Tone, BAR_HEIGHT_PX, BAR_MAX_PX};
pub use templates::{render_html, render_text};
pub use transport::Mailer;
pub use zone::{span, Zone};
