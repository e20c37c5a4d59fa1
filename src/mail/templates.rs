//! The frame every message shares: a 600 px column (the width mail clients
//! are designed for), the subject as title, the blocks, and a footer saying
//! which zone the times are in. Text and HTML come from the same blocks.

use super::blocks::{block_html, block_text, html_escape, Block};
use super::Zone;

fn footer(zone: &Zone) -> String {
    let zone = if zone.0 == chrono_tz::UTC {
        "Times are in UTC.".to_string()
    } else {
        format!("Times are in {}, with UTC alongside.", zone.0.name())
    };
    format!("Sent by Lethe, the data-lifecycle worker. {zone}")
}

pub fn render_text(subject: &str, blocks: &[Block], zone: &Zone) -> String {
    let mut s = format!(
        "{subject}\n{}\n\n",
        "=".repeat(subject.chars().count().min(72))
    );
    for b in blocks {
        block_text(b, &mut s);
    }
    s.push_str("-- \n");
    s.push_str(&footer(zone));
    s.push('\n');
    s
}

pub fn render_html(subject: &str, blocks: &[Block], zone: &Zone) -> String {
    let mut s = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{0}</title></head>\
         <body style=\"margin:0;padding:0;background-color:#f4f5f7\">\
         <table role=\"presentation\" width=\"100%\" cellpadding=\"0\" cellspacing=\"0\" bgcolor=\"#f4f5f7\" style=\"background-color:#f4f5f7\"><tr>\
         <td align=\"center\" style=\"padding:12px 6px\">\
         <table role=\"presentation\" width=\"100%\" cellpadding=\"0\" cellspacing=\"0\" bgcolor=\"#ffffff\" \
         style=\"max-width:588px;background-color:#ffffff;border:1px solid #dde1e6;font-family:Arial,Helvetica,sans-serif;\
         font-size:14px;line-height:20px;color:#1f2933;text-align:left\"><tr>\
         <td style=\"padding:18px 20px;overflow-wrap:break-word\">\
         <h2 style=\"margin:0 0 14px;font-size:19px;line-height:25px;overflow-wrap:anywhere\">{0}</h2>",
        html_escape(subject)
    );
    for b in blocks {
        block_html(b, &mut s);
    }
    s.push_str(&format!(
        "<p style=\"margin:18px 0 0;padding-top:10px;border-top:1px solid #dde1e6;color:#52606d;font-size:12px;line-height:16px\">{}</p>\
         </td></tr></table></td></tr></table></body></html>",
        html_escape(&footer(zone))
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_is_escaped_and_text_is_plain() {
        let p = vec![Block::Para("a <b> & \"c\"".to_string())];
        let h = render_html("S<", &p, &Zone::UTC);
        assert!(h.contains("a &lt;b&gt; &amp; &quot;c&quot;"));
        assert!(h.contains("<title>S&lt;</title>"));
        assert!(render_text("S", &p, &Zone::UTC).contains("a <b> & \"c\""));
    }

    #[test]
    fn the_footer_names_the_zone() {
        let z = Zone(chrono_tz::Europe::Berlin);
        assert!(
            render_text("S", &[], &z).contains("Times are in Europe/Berlin, with UTC alongside.")
        );
        assert!(render_html("S", &[], &Zone::UTC).contains("Times are in UTC."));
    }
}
