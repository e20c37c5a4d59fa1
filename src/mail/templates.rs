//! Every message has a plain-text and an HTML part, built from the same paragraphs.

pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

pub fn render_text(subject: &str, paragraphs: &[String]) -> String {
    let mut s = format!(
        "{subject}\n{}\n\n",
        "=".repeat(subject.chars().count().min(72))
    );
    for p in paragraphs {
        s.push_str(p);
        s.push_str("\n\n");
    }
    s.push_str("-- \nSent by Lethe, the data-lifecycle worker.\n");
    s
}

pub fn render_html(subject: &str, paragraphs: &[String], extra: Option<&str>) -> String {
    let mut s = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{0}</title></head>\
         <body style=\"font-family:sans-serif;max-width:720px\"><h2>{0}</h2>",
        html_escape(subject)
    );
    for p in paragraphs {
        s.push_str(&format!("<p>{}</p>", html_escape(p)));
    }
    if let Some(x) = extra {
        s.push_str(x);
    }
    s.push_str("<hr><p style=\"color:#666;font-size:small\">Sent by Lethe, the data-lifecycle worker.</p></body></html>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_is_escaped_and_text_is_plain() {
        let p = vec!["a <b> & \"c\"".to_string()];
        let h = render_html("S<", &p, None);
        assert!(h.contains("a &lt;b&gt; &amp; &quot;c&quot;"));
        assert!(h.contains("<title>S&lt;</title>"));
        assert!(render_text("S", &p).contains("a <b> & \"c\""));
    }
}
