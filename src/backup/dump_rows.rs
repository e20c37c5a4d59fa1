//! Row counts read from pg_dump's custom-format stream as it passes through
//! the backup pipeline, so the manifest costs no second scan of any table.
//!
//! With `--compress=0` a table's data is its `COPY … TO STDOUT` text in
//! length-prefixed chunks. In COPY text format a newline inside a value is
//! escaped (`\n`), so every raw `0x0A` ends one row: a table's row count is
//! the number of newline bytes in its chunks. The archive layout followed
//! here is pg_dump's own (`pg_backup_archiver.c`, `pg_backup_custom.c`) for
//! archive versions 1.12 to 1.16 (PostgreSQL 11 to 17); any other version,
//! or a stream that does not parse, yields an error and the caller counts
//! with `SELECT count(*)` in the same snapshot instead.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;

const MAGIC: &[u8] = b"PGDMP";
const FORMAT_CUSTOM: u8 = 1;
const BLK_DATA: u8 = 1;
const BLK_BLOBS: u8 = 3;
const OLDEST: (u8, u8) = (1, 12);
/// The most a header or table-of-contents entry may take while it is parsed.
const MAX_ITEM: usize = 64 << 20;
const NEWEST: (u8, u8) = (1, 16);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Head,
    Toc(u32),
    Block,
    ChunkLen { blob: bool },
    Chunk { left: u64, blob: bool },
    BlobOid,
}

/// Reads the archive as it streams; counts rows per `schema.table`.
pub struct DumpRows {
    buf: Vec<u8>,
    phase: Phase,
    minor: u8,
    int_size: usize,
    off_size: usize,
    /// dumpId → `schema.table` of the TOC's `TABLE DATA` entries.
    tables: HashMap<i64, String>,
    current: Option<String>,
    /// The current table's last data bytes (its COPY text ends in a newline,
    /// maybe in pg_dump's end-of-data marker) and how many bytes it had.
    tail: Vec<u8>,
    table_bytes: u64,
    counts: BTreeMap<String, i64>,
    error: Option<String>,
}

/// Not enough bytes yet: the item is parsed again when more arrive.
struct More;

/// A cursor over buffered bytes; every read fails with `More` at the end.
struct Cur<'a> {
    b: &'a [u8],
    i: usize,
    int_size: usize,
}

impl Cur<'_> {
    fn bytes(&mut self, n: usize) -> Result<&[u8], More> {
        let s = self.b.get(self.i..self.i + n).ok_or(More)?;
        self.i += n;
        Ok(s)
    }
    fn byte(&mut self) -> Result<u8, More> {
        Ok(self.bytes(1)?[0])
    }
    /// pg_dump's WriteInt: a sign byte, then `int_size` bytes little-endian.
    fn int(&mut self) -> Result<i64, More> {
        let n = self.int_size;
        let sign = self.byte()?;
        let v = self
            .bytes(n)?
            .iter()
            .rev()
            .fold(0i64, |acc, b| (acc << 8) | i64::from(*b));
        Ok(if sign == 0 { v } else { -v })
    }
    /// pg_dump's WriteStr: a length (−1 for NULL), then the bytes.
    fn str(&mut self) -> Result<Option<String>, More> {
        let len = self.int()?;
        if len < 0 {
            return Ok(None);
        }
        let s = self.bytes(len as usize)?;
        Ok(Some(String::from_utf8_lossy(s).into_owned()))
    }
}

type Step = Result<Result<Phase, More>, String>;

impl Default for DumpRows {
    fn default() -> Self {
        DumpRows {
            buf: Vec::new(),
            phase: Phase::Head,
            minor: 0,
            int_size: 4,
            off_size: 8,
            tables: HashMap::new(),
            current: None,
            tail: Vec::new(),
            table_bytes: 0,
            counts: BTreeMap::new(),
            error: None,
        }
    }
}

impl DumpRows {
    /// Feeds the next bytes of the archive, in order.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() && self.error.is_none() {
            if let Phase::Chunk { left, blob } = self.phase {
                if self.buf.is_empty() {
                    // The bulk of the stream: counted in place, never copied.
                    let n = left.min(data.len() as u64) as usize;
                    self.count(&data[..n], blob);
                    data = &data[n..];
                    self.phase = after_chunk(left - n as u64, blob);
                    continue;
                }
            }
            self.buf.extend_from_slice(data);
            data = &[];
            self.drain_buf();
            if self.buf.len() > MAX_ITEM {
                // A misread length would otherwise buffer the whole dump.
                self.error = Some(format!(
                    "an archive item longer than {} MiB (misread archive?)",
                    MAX_ITEM >> 20
                ));
            }
        }
    }

    /// The counts, once the whole archive went past and parsed cleanly.
    pub fn finish(self) -> Result<BTreeMap<String, i64>, String> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if self.phase != Phase::Block || !self.buf.is_empty() {
            return Err(format!(
                "the dump ended inside an item ({:?}, {} bytes pending)",
                self.phase,
                self.buf.len()
            ));
        }
        if let Some(missing) = self.tables.values().find(|t| !self.counts.contains_key(*t)) {
            return Err(format!(
                "the table of contents lists data for {missing}, the stream had none"
            ));
        }
        Ok(self.counts)
    }

    fn count(&mut self, bytes: &[u8], blob: bool) {
        if blob {
            return;
        }
        if let Some(t) = &self.current {
            self.table_bytes += bytes.len() as u64;
            let keep = bytes.len().min(TAIL);
            self.tail.extend_from_slice(&bytes[bytes.len() - keep..]);
            let excess = self.tail.len().saturating_sub(TAIL);
            self.tail.drain(..excess);
            let rows = bytes.iter().filter(|b| **b == b'\n').count() as i64;
            *self.counts.entry(t.clone()).or_insert(0) += rows;
        }
    }

    fn drain_buf(&mut self) {
        let mut pos = 0;
        while self.error.is_none() {
            if let Phase::Chunk { left, blob } = self.phase {
                let n = left.min((self.buf.len() - pos) as u64) as usize;
                if n == 0 {
                    break;
                }
                let chunk = std::mem::take(&mut self.buf);
                self.count(&chunk[pos..pos + n], blob);
                self.buf = chunk;
                pos += n;
                self.phase = after_chunk(left - n as u64, blob);
                continue;
            }
            let buf = std::mem::take(&mut self.buf);
            let mut cur = Cur {
                b: &buf[pos..],
                i: 0,
                int_size: self.int_size,
            };
            let stepped = self.step(&mut cur);
            let used = cur.i;
            self.buf = buf;
            match stepped {
                Ok(Ok(next)) => {
                    pos += used;
                    self.phase = next;
                }
                Ok(Err(More)) => break,
                Err(e) => self.error = Some(e),
            }
        }
        self.buf.drain(..pos);
    }

    fn step(&mut self, c: &mut Cur) -> Step {
        Ok(Ok(match self.phase {
            Phase::Head => match self.head(c)? {
                Ok(n) => n,
                Err(More) => return Ok(Err(More)),
            },
            Phase::Toc(0) => Phase::Block,
            Phase::Toc(n) => match self.toc_entry(c) {
                Ok(()) => Phase::Toc(n - 1),
                Err(More) => return Ok(Err(More)),
            },
            Phase::Block => match self.block(c)? {
                Ok(n) => n,
                Err(More) => return Ok(Err(More)),
            },
            Phase::ChunkLen { blob } => match c.int() {
                Ok(0) if blob => Phase::BlobOid,
                Ok(0) => {
                    self.end_table()?;
                    Phase::Block
                }
                Ok(n) if n < 0 => return Err(format!("a data chunk of length {n}")),
                Ok(n) => Phase::Chunk {
                    left: n as u64,
                    blob,
                },
                Err(More) => return Ok(Err(More)),
            },
            Phase::BlobOid => match c.int() {
                Ok(0) => Phase::Block,
                Ok(_) => Phase::ChunkLen { blob: true },
                Err(More) => return Ok(Err(More)),
            },
            Phase::Chunk { .. } => unreachable!("chunks are counted before step"),
        }))
    }

    fn head(&mut self, c: &mut Cur) -> Step {
        let fixed = match c.bytes(11) {
            Ok(b) => b.to_vec(),
            Err(More) => return Ok(Err(More)),
        };
        if &fixed[..5] != MAGIC {
            return Err("not a pg_dump archive (no PGDMP magic)".into());
        }
        let (major, minor) = (fixed[5], fixed[6]);
        if (major, minor) < OLDEST || (major, minor) > NEWEST {
            return Err(format!(
                "archive version {major}.{minor} is not one this reader knows"
            ));
        }
        let (int_size, off_size, format) = (fixed[8] as usize, fixed[9] as usize, fixed[10]);
        if format != FORMAT_CUSTOM || !(1..=8).contains(&int_size) || !(1..=8).contains(&off_size) {
            return Err(format!(
                "archive format {format}, int size {int_size}, offset size {off_size}"
            ));
        }
        self.minor = minor;
        self.int_size = int_size;
        self.off_size = off_size;
        c.int_size = int_size;
        let rest = (|| {
            // 1.15 names the compression algorithm in a byte, earlier versions a level.
            let compression = if minor >= 15 {
                i64::from(c.byte()?)
            } else {
                c.int()?
            };
            for _ in 0..7 {
                c.int()?; // creation time
            }
            for _ in 0..3 {
                c.str()?; // database name, server and pg_dump versions
            }
            Ok((compression, c.int()?))
        })();
        match rest {
            Ok((0, toc)) if toc >= 0 => Ok(Ok(Phase::Toc(toc as u32))),
            Ok((0, toc)) => Err(format!("a table of contents of {toc} entries")),
            Ok((other, _)) => Err(format!(
                "the archive is compressed ({other}); the backup asks pg_dump for --compress=0"
            )),
            Err(More) => Ok(Err(More)),
        }
    }

    fn toc_entry(&mut self, c: &mut Cur) -> Result<(), More> {
        let dump_id = c.int()?;
        let _had_dumper = c.int()?;
        let _table_oid = c.str()?;
        let _oid = c.str()?;
        let tag = c.str()?.unwrap_or_default();
        let desc = c.str()?.unwrap_or_default();
        let _section = c.int()?;
        let defn = c.str()?;
        let _drop = c.str()?;
        let _copy = c.str()?;
        let namespace = c.str()?;
        let _tablespace = c.str()?;
        if self.minor >= 14 {
            c.str()?; // table access method
        }
        if self.minor >= 16 {
            c.int()?; // relkind
        }
        let _owner = c.str()?;
        let _with_oids = c.str()?;
        while c.str()?.is_some() {} // dependencies, NULL-terminated
        c.bytes(1 + self.off_size)?; // data offset: a flag byte and the offset
        if desc == "ENCODING" {
            // Names are in the dump's encoding; only UTF-8 (or ASCII) ones match the catalog's.
            let d = defn.unwrap_or_default();
            if !(d.contains("'UTF8'") || d.contains("'SQL_ASCII'")) {
                self.error = Some(format!("the dump's encoding is not UTF-8 ({})", d.trim()));
            }
        }
        if desc == "TABLE DATA" {
            let key = format!("{}.{tag}", namespace.unwrap_or_default());
            if self.tables.values().any(|k| *k == key) {
                // `"s.p".q` and `s."p.q"` share a key: counting both into one would be wrong.
                self.error = Some(format!("two tables are both named {key}"));
            }
            self.tables.insert(dump_id, key);
        }
        Ok(())
    }

    /// At the end of a table's data: takes the marker's newlines off its count.
    fn end_table(&mut self) -> Result<(), String> {
        let Some(t) = &self.current else {
            return Ok(());
        };
        let at_line_start =
            self.table_bytes == END_MARKER.len() as u64 || self.tail.first() == Some(&b'\n');
        if self.tail.ends_with(END_MARKER) && at_line_start {
            *self.counts.entry(t.clone()).or_insert(0) -= 3;
        } else if self.table_bytes > 0 && self.tail.last() != Some(&b'\n') {
            return Err(format!(
                "the data of {t} does not end with a row's newline (misread archive?)"
            ));
        }
        Ok(())
    }

    fn block(&mut self, c: &mut Cur) -> Step {
        let (kind, id) = match (|| Ok((c.byte()?, c.int()?)))() {
            Ok(v) => v,
            Err(More) => return Ok(Err(More)),
        };
        match kind {
            BLK_DATA => {
                self.current = self.tables.get(&id).cloned();
                self.tail.clear();
                self.table_bytes = 0;
                if let Some(t) = &self.current {
                    self.counts.entry(t.clone()).or_insert(0);
                }
                Ok(Ok(Phase::ChunkLen { blob: false }))
            }
            BLK_BLOBS => {
                self.current = None;
                Ok(Ok(Phase::BlobOid))
            }
            other => Err(format!("data block of unknown type {other}")),
        }
    }
}

/// pg_dump (up to at least 15) ends each table's COPY data with this marker
/// line and two blank lines; restore strips it. No row can be the line `\.`
/// (COPY text escapes a backslash as `\\`), so the marker is unambiguous.
const END_MARKER: &[u8] = b"\\.\n\n\n";
/// The marker and the byte before it.
const TAIL: usize = END_MARKER.len() + 1;

fn after_chunk(left: u64, blob: bool) -> Phase {
    if left == 0 {
        Phase::ChunkLen { blob }
    } else {
        Phase::Chunk { left, blob }
    }
}

/// A reader that passes the archive through unchanged while counting it.
pub struct CountingReader<R> {
    inner: R,
    pub rows: DumpRows,
}

impl<R: Read> CountingReader<R> {
    pub fn new(inner: R) -> Self {
        CountingReader {
            inner,
            rows: DumpRows::default(),
        }
    }
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(out)?;
        self.rows.feed(&out[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal custom-format archive as pg_dump 15 (archive 1.14) writes it.
    struct Archive(Vec<u8>);

    impl Archive {
        fn int(&mut self, v: i64) {
            self.0.push(u8::from(v < 0));
            self.0
                .extend_from_slice(&(v.unsigned_abs() as u32).to_le_bytes());
        }
        fn str(&mut self, s: Option<&str>) {
            match s {
                None => self.int(-1),
                Some(s) => {
                    self.int(s.len() as i64);
                    self.0.extend_from_slice(s.as_bytes());
                }
            }
        }
        fn new(minor: u8, compression: i64, toc: &[(i64, &str, &str, &str)]) -> Archive {
            let mut a = Archive(b"PGDMP".to_vec());
            a.0.extend_from_slice(&[1, minor, 0, 4, 8, FORMAT_CUSTOM]);
            a.int(compression);
            for v in [0, 0, 0, 1, 0, 125, 0] {
                a.int(v);
            }
            for s in ["app", "15.1", "15.1"] {
                a.str(Some(s));
            }
            a.int(toc.len() as i64);
            for (id, schema, tag, desc) in toc {
                a.int(*id);
                a.int(1);
                a.str(Some("1259"));
                a.str(Some("16384"));
                a.str(Some(tag));
                a.str(Some(desc));
                a.int(2);
                for s in [Some(""), Some(""), None, Some(schema), Some("")] {
                    a.str(s);
                }
                a.str(Some("heap"));
                a.str(Some("app"));
                a.str(Some("false"));
                a.str(Some("3"));
                a.str(None);
                a.0.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 0]);
            }
            a
        }
        fn data(&mut self, id: i64, chunks: &[&[u8]]) {
            self.0.push(BLK_DATA);
            self.int(id);
            for c in chunks {
                self.int(c.len() as i64);
                self.0.extend_from_slice(c);
            }
            self.int(0);
        }
        fn blobs(&mut self, id: i64, blobs: &[&[u8]]) {
            self.0.push(BLK_BLOBS);
            self.int(id);
            for (oid, b) in blobs.iter().enumerate() {
                self.int(16500 + oid as i64);
                self.int(b.len() as i64);
                self.0.extend_from_slice(b);
                self.int(0);
            }
            self.int(0);
        }
    }

    fn sample() -> Archive {
        let mut a = Archive::new(
            14,
            0,
            &[
                (3, "public", "users", "TABLE DATA"),
                (4, "Odd \"S\"", "e mpty", "TABLE DATA"),
                (5, "public", "users", "TABLE"),
                (6, "", "LARGE OBJECTS", "BLOBS"),
                (7, "public", "blanks", "TABLE DATA"),
            ],
        );
        a.data(3, &[b"1\ta@x\\nb\n2\t\\\\.\n", b"3\tc\n", b"\\.\n\n\n"]);
        a.data(4, &[b"\\.\n\n\n"]);
        a.blobs(6, &[b"\n\n\n\n", b"\\.\n\n\n"]);
        // A one-column table of empty strings: its rows are blank lines.
        a.data(7, &[b"\n\n", b"\n\\.\n\n\n"]);
        a
    }

    fn read_in_pieces(bytes: &[u8], piece: usize) -> Result<BTreeMap<String, i64>, String> {
        let mut r = DumpRows::default();
        for c in bytes.chunks(piece) {
            r.feed(c);
        }
        r.finish()
    }

    #[test]
    fn counts_rows_per_table_whatever_the_read_sizes() {
        let a = sample();
        let want: BTreeMap<String, i64> = [
            ("public.users".to_string(), 3),
            ("Odd \"S\".e mpty".to_string(), 0),
            ("public.blanks".to_string(), 3),
        ]
        .into();
        for piece in [1, 2, 3, 7, 64, a.0.len()] {
            assert_eq!(read_in_pieces(&a.0, piece), Ok(want.clone()), "{piece}");
        }
    }

    #[test]
    fn a_truncated_stream_is_an_error_not_a_short_count() {
        let a = sample();
        for cut in [3, 40, a.0.len() - 30, a.0.len() - 1] {
            assert!(read_in_pieces(&a.0[..cut], 5).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn data_that_does_not_end_a_row_is_an_error() {
        let mut a = Archive::new(14, 0, &[(3, "public", "t", "TABLE DATA")]);
        a.data(3, &[b"1\tno newline"]);
        let e = read_in_pieces(&a.0, 4).unwrap_err();
        assert!(e.contains("public.t"), "{e}");
    }

    #[test]
    fn compressed_unknown_or_foreign_archives_are_refused() {
        let compressed = Archive::new(14, 6, &[]);
        assert!(read_in_pieces(&compressed.0, 9)
            .unwrap_err()
            .contains("compressed"));
        let newer = Archive::new(NEWEST.1 + 1, 0, &[]);
        assert!(read_in_pieces(&newer.0, 9).unwrap_err().contains("version"));
        assert!(read_in_pieces(b"SQLite format 3\0........", 9).is_err());
    }

    #[test]
    fn ambiguous_names_and_non_utf8_dumps_are_refused() {
        let a = Archive::new(
            14,
            0,
            &[(3, "s.p", "q", "TABLE DATA"), (4, "s", "p.q", "TABLE DATA")],
        );
        assert!(read_in_pieces(&a.0, 8).unwrap_err().contains("s.p.q"));
        // The builder writes an empty definition, so no `SET client_encoding = 'UTF8'`.
        let latin = Archive::new(14, 0, &[(1, "", "ENCODING", "ENCODING")]);
        assert!(read_in_pieces(&latin.0, 8)
            .unwrap_err()
            .contains("encoding"));
    }

    #[test]
    fn a_table_listed_but_never_streamed_is_an_error() {
        let a = Archive::new(14, 0, &[(3, "public", "t", "TABLE DATA")]);
        let e = read_in_pieces(&a.0, 8).unwrap_err();
        assert!(e.contains("public.t"), "{e}");
    }
}
