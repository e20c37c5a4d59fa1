//! What a message says, as blocks rendered twice: to HTML that mail clients
//! display as intended (tables and inline styles only: no SVG, no scripts, no
//! `<style>`, nothing fetched) and to plain text carrying the same words and
//! numbers. Charts are table cells with a background colour, which Gmail,
//! Outlook and Apple Mail all draw, even with images blocked.

use std::fmt::Write as _;

/// How a row or notice is marked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    Plain,
    /// Missed, or about to be: act now.
    Alert,
    /// Close: act soon.
    Warn,
    Good,
}

impl Tone {
    /// (background, accent) colours.
    fn colors(self) -> (&'static str, &'static str) {
        match self {
            Tone::Plain => ("#ffffff", "#dde1e6"),
            Tone::Alert => ("#fdecea", "#c0392b"),
            Tone::Warn => ("#fff4e5", "#e67e22"),
            Tone::Good => ("#eaf7ee", "#27ae60"),
        }
    }

    fn text_mark(self) -> &'static str {
        match self {
            Tone::Alert => "!! ",
            Tone::Warn => "! ",
            Tone::Plain | Tone::Good => "",
        }
    }
}

#[derive(Debug, Clone)]
pub enum Block {
    Heading(String),
    Para(String),
    /// A marked sentence: what needs action, or that all is well.
    Notice(Tone, String),
    /// A command to run, shown verbatim.
    Command(String),
    Link {
        text: String,
        url: String,
    },
    /// Label and value pairs.
    Facts(Vec<(String, String)>),
    Table(Table),
    Bars(Bars),
}

#[derive(Debug, Clone, Default)]
pub struct Table {
    pub head: Vec<String>,
    pub rows: Vec<Row>,
    /// Shown instead of an empty table.
    pub empty: String,
}

#[derive(Debug, Clone)]
pub struct Row {
    pub cells: Vec<String>,
    pub tone: Tone,
    /// Commands for this row, shown under it.
    pub commands: Vec<String>,
}

/// A horizontal bar chart: one bar per label, lengths proportional to `value`.
#[derive(Debug, Clone, Default)]
pub struct Bars {
    pub bars: Vec<Bar>,
}

#[derive(Debug, Clone)]
pub struct Bar {
    pub label: String,
    pub value: f64,
    /// The number as written next to the bar.
    pub shown: String,
    /// `#rrggbb`.
    pub color: &'static str,
}

/// The longest bar, in CSS pixels (the chart fits a 600 px mail with its labels).
pub const BAR_MAX_PX: u32 = 240;
pub const BAR_HEIGHT_PX: u32 = 16;

impl Bars {
    /// Each bar's length in pixels: the largest value gets [`BAR_MAX_PX`], a
    /// positive value at least 2 px so it stays visible, zero none.
    pub fn widths(&self) -> Vec<u32> {
        let max = self.bars.iter().map(|b| b.value).fold(0.0_f64, f64::max);
        self.bars
            .iter()
            .map(|b| {
                if b.value <= 0.0 || max <= 0.0 || !b.value.is_finite() {
                    0
                } else {
                    ((b.value / max * f64::from(BAR_MAX_PX)).round() as u32).max(2)
                }
            })
            .collect()
    }
}

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

const MONO: &str =
    "font-family:Menlo,Consolas,'Courier New',monospace;font-size:12px;line-height:17px";
const CELL: &str = "padding:5px 6px;font-size:13px;line-height:18px;vertical-align:top";

pub(super) fn block_html(b: &Block, out: &mut String) {
    let e = html_escape;
    let _ = match b {
        Block::Heading(t) => write!(
            out,
            "<h3 style=\"margin:22px 0 8px;font-size:16px;line-height:22px;color:#1f2933;overflow-wrap:anywhere\">{}</h3>",
            e(t)
        ),
        Block::Para(t) => write!(
            out,
            "<p style=\"margin:0 0 12px;overflow-wrap:anywhere\">{}</p>",
            e(t)
        ),
        Block::Notice(tone, t) => {
            let (bg, accent) = tone.colors();
            write!(
                out,
                "<table role=\"presentation\" width=\"100%\" cellpadding=\"0\" cellspacing=\"0\" style=\"margin:0 0 12px\"><tr>\
                 <td bgcolor=\"{bg}\" style=\"padding:10px 12px;background-color:{bg};border-left:4px solid {accent};font-weight:bold;overflow-wrap:anywhere\">{}</td></tr></table>",
                e(t)
            )
        }
        Block::Command(c) => write!(
            out,
            "<table role=\"presentation\" width=\"100%\" cellpadding=\"0\" cellspacing=\"0\" style=\"margin:0 0 12px\"><tr>\
             <td bgcolor=\"#f4f5f7\" style=\"padding:6px 8px;background-color:#f4f5f7;border:1px solid #dde1e6;{MONO};word-break:break-all\">$ {}</td></tr></table>",
            e(c)
        ),
        Block::Link { text, url } => write!(
            out,
            "<p style=\"margin:0 0 12px\"><a href=\"{}\" style=\"color:#1a5fb4;word-break:break-all\">{}</a></p>",
            e(url),
            e(text)
        ),
        Block::Facts(pairs) => {
            out.push_str("<table role=\"presentation\" cellpadding=\"0\" cellspacing=\"0\" style=\"margin:0 0 12px\">");
            for (k, v) in pairs {
                let _ = write!(
                    out,
                    "<tr><td style=\"{CELL};color:#52606d;padding-left:0;white-space:nowrap\">{}</td><td style=\"{CELL};overflow-wrap:anywhere\">{}</td></tr>",
                    e(k),
                    e(v)
                );
            }
            out.push_str("</table>");
            Ok(())
        }
        Block::Table(t) => {
            table_html(t, out);
            Ok(())
        }
        Block::Bars(b) => {
            bars_html(b, out);
            Ok(())
        }
    };
}

fn table_html(t: &Table, out: &mut String) {
    let e = html_escape;
    if t.rows.is_empty() {
        let _ = write!(
            out,
            "<p style=\"margin:0 0 12px;color:#52606d\">{}</p>",
            e(&t.empty)
        );
        return;
    }
    out.push_str("<table role=\"presentation\" width=\"100%\" cellpadding=\"0\" cellspacing=\"0\" style=\"margin:0 0 12px;border-collapse:collapse\"><tr>");
    for h in &t.head {
        let _ = write!(
            out,
            "<th align=\"left\" bgcolor=\"#f4f5f7\" style=\"{CELL};background-color:#f4f5f7;border-bottom:1px solid #dde1e6;font-weight:bold\">{}</th>",
            e(h)
        );
    }
    out.push_str("</tr>");
    for r in &t.rows {
        let (bg, accent) = r.tone.colors();
        out.push_str("<tr>");
        for (i, c) in r.cells.iter().enumerate() {
            let edge = if i == 0 && r.tone != Tone::Plain {
                format!(";border-left:4px solid {accent}")
            } else {
                String::new()
            };
            let _ = write!(
                out,
                "<td bgcolor=\"{bg}\" style=\"{CELL};background-color:{bg}{edge}\">{}</td>",
                e(c)
            );
        }
        out.push_str("</tr>");
        if !r.commands.is_empty() {
            let _ = write!(
                out,
                "<tr><td colspan=\"{}\" bgcolor=\"{bg}\" style=\"padding:0 6px 6px 10px;background-color:{bg};{MONO};word-break:break-all;color:#323f4b\">",
                r.cells.len().max(1)
            );
            let lines: Vec<String> = r.commands.iter().map(|c| format!("$ {}", e(c))).collect();
            out.push_str(&lines.join("<br>"));
            out.push_str("</td></tr>");
        }
        let _ = write!(
            out,
            "<tr><td colspan=\"{}\" style=\"height:1px;line-height:1px;font-size:0;border-bottom:1px solid #eef0f2\">&nbsp;</td></tr>",
            r.cells.len().max(1)
        );
    }
    out.push_str("</table>");
}

fn bars_html(b: &Bars, out: &mut String) {
    let e = html_escape;
    out.push_str("<table role=\"presentation\" cellpadding=\"0\" cellspacing=\"0\" style=\"margin:0 0 12px\">");
    for (bar, w) in b.bars.iter().zip(b.widths()) {
        let _ = write!(
            out,
            "<tr><td width=\"110\" style=\"width:110px;padding:3px 8px 3px 0;font-size:13px;line-height:16px;white-space:nowrap\">{}</td>\
             <td style=\"padding:3px 0\">",
            e(&bar.label)
        );
        if w > 0 {
            let _ = write!(
                out,
                "<table role=\"presentation\" cellpadding=\"0\" cellspacing=\"0\"><tr>\
                 <td width=\"{w}\" height=\"{BAR_HEIGHT_PX}\" bgcolor=\"{c}\" style=\"width:{w}px;height:{BAR_HEIGHT_PX}px;background-color:{c};font-size:0;line-height:0\">&nbsp;</td>\
                 <td style=\"padding-left:6px;font-size:13px;line-height:16px;white-space:nowrap\">{}</td></tr></table>",
                e(&bar.shown),
                c = bar.color
            );
        } else {
            let _ = write!(
                out,
                "<span style=\"font-size:13px;line-height:16px\">{}</span>",
                e(&bar.shown)
            );
        }
        out.push_str("</td></tr>");
    }
    out.push_str("</table>");
}

pub(super) fn block_text(b: &Block, out: &mut String) {
    let _ = match b {
        Block::Heading(t) => write!(out, "{t}\n{}\n\n", "-".repeat(t.chars().count())),
        Block::Para(t) => write!(out, "{t}\n\n"),
        Block::Notice(tone, t) => write!(out, "{}{t}\n\n", tone.text_mark()),
        Block::Command(c) => write!(out, "    $ {c}\n\n"),
        Block::Link { text, url } => write!(out, "{text}:\n{url}\n\n"),
        Block::Facts(pairs) => {
            let w = pairs
                .iter()
                .map(|(k, _)| k.chars().count())
                .max()
                .unwrap_or(0);
            for (k, v) in pairs {
                let _ = writeln!(out, "{k:<w$}  {v}");
            }
            out.push('\n');
            Ok(())
        }
        Block::Table(t) => {
            table_text(t, out);
            Ok(())
        }
        Block::Bars(b) => {
            bars_text(b, out);
            Ok(())
        }
    };
}

fn table_text(t: &Table, out: &mut String) {
    if t.rows.is_empty() {
        let _ = write!(out, "{}\n\n", t.empty);
        return;
    }
    let mut widths: Vec<usize> = t.head.iter().map(|h| h.chars().count()).collect();
    for r in &t.rows {
        for (i, c) in r.cells.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: &[String], mark: &str| {
        let mut s = format!("{mark:<3}");
        for (i, c) in cells.iter().enumerate() {
            let w = widths.get(i).copied().unwrap_or(0);
            let _ = write!(s, "{c:<w$}  ");
        }
        s.trim_end().to_string()
    };
    let _ = writeln!(out, "{}", line(&t.head, ""));
    for r in &t.rows {
        let _ = writeln!(out, "{}", line(&r.cells, r.tone.text_mark()));
        for c in &r.commands {
            let _ = writeln!(out, "      $ {c}");
        }
    }
    out.push('\n');
}

fn bars_text(b: &Bars, out: &mut String) {
    let w = b
        .bars
        .iter()
        .map(|x| x.label.chars().count())
        .max()
        .unwrap_or(0);
    for (bar, px) in b.bars.iter().zip(b.widths()) {
        // 40 characters for the longest bar, as the HTML gives it BAR_MAX_PX.
        let n = (px as usize * 40).div_ceil(BAR_MAX_PX as usize);
        let bar_text = if n == 0 {
            String::new()
        } else {
            "#".repeat(n) + " "
        };
        let _ = writeln!(out, "{:<w$}  {bar_text}{}", bar.label, bar.shown);
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bar(label: &str, value: f64) -> Bar {
        Bar {
            label: label.into(),
            value,
            shown: format!("{value}"),
            color: "#c0392b",
        }
    }

    #[test]
    fn bar_lengths_are_proportional_and_visible() {
        let b = Bars {
            bars: vec![bar("a", 10.0), bar("b", 5.0), bar("c", 0.0), bar("d", 0.01)],
        };
        assert_eq!(b.widths(), vec![BAR_MAX_PX, BAR_MAX_PX / 2, 0, 2]);
        let none = Bars {
            bars: vec![bar("a", 0.0), bar("b", f64::NAN)],
        };
        assert_eq!(none.widths(), vec![0, 0]);
    }

    #[test]
    fn text_and_html_carry_the_same_cells_escaped() {
        let t = Block::Table(Table {
            head: vec!["id".into(), "what".into()],
            rows: vec![Row {
                cells: vec!["7".into(), "<b>&".into()],
                tone: Tone::Alert,
                commands: vec!["lethe dsr show 7".into()],
            }],
            empty: "none".into(),
        });
        let (mut h, mut s) = (String::new(), String::new());
        block_html(&t, &mut h);
        block_text(&t, &mut s);
        assert!(h.contains("&lt;b&gt;&amp;") && !h.contains("<b>&"), "{h}");
        assert!(h.contains("$ lethe dsr show 7"));
        assert!(
            s.contains("!! 7   <b>&") && s.contains("$ lethe dsr show 7"),
            "{s}"
        );
    }
}
