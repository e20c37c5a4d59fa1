//! The subject's own copy of an export: a ZIP of the same JSON files, a CSV
//! beside each for spreadsheets, the files and the README, every entry
//! AES-256 encrypted (WinZip AE-2) under a one-time passphrase that travels
//! in a separate mail.
//!
//! ZIP rather than age: the subject is a person, not an operator. 7-Zip,
//! Keka, The Unarchiver and Linux file managers open an AES ZIP without a
//! terminal; age needs a tool few people have. The format's key derivation
//! (PBKDF2-SHA1, 1,000 rounds) is weak, so the passphrase carries the
//! strength: 25 random symbols of 32, 125 bits, beyond any guessing.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek};

use serde_json::{Map, Value};
use zip::write::SimpleFileOptions;

/// Unambiguous when read aloud or copied by hand: no 0/o, 1/l.
const ALPHABET: &[u8; 32] = b"abcdefghijkmnpqrstuvwxyz23456789";

/// A fresh passphrase: five groups of five, `xxxxx-xxxxx-…`.
pub(super) fn passphrase() -> String {
    use rand::Rng;
    // ThreadRng: a CSPRNG (ChaCha) seeded from the OS.
    let mut rng = rand::rng();
    let groups: Vec<String> = (0..5)
        .map(|_| {
            (0..5)
                .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
                .collect()
        })
        .collect();
    groups.join("-")
}

/// Rewrites the finished export tar as the subject's ZIP into `out`, and
/// returns it rewound. Runs on a blocking thread: every entry streams through
/// temporary files, so memory stays flat whatever the export's size.
pub(super) fn build(tar: File, out: File, passphrase: &str) -> io::Result<File> {
    let mut zip = zip::ZipWriter::new(out);
    let mut archive = tar::Archive::new(tar);
    let mut seen = std::collections::HashSet::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let name = entry.path()?.to_string_lossy().into_owned();
        // One stored file that two rows name is one entry (ZIP refuses two).
        if !seen.insert(name.clone()) {
            continue;
        }
        let size = entry.header().size()?;
        let mut body = tempfile::tempfile()?;
        io::copy(&mut entry, &mut body)?;
        body.rewind()?;
        let table = (!name.contains('/'))
            .then(|| name.strip_suffix(".json"))
            .flatten()
            .map(str::to_string);
        put(&mut zip, &name, size, passphrase, &mut body)?;
        if let Some(table) = table {
            body.rewind()?;
            let mut csv = tempfile::tempfile()?;
            let csv_size = to_csv(&mut body, &mut csv)?;
            csv.rewind()?;
            put(
                &mut zip,
                &format!("{table}.csv"),
                csv_size,
                passphrase,
                &mut csv,
            )?;
        }
    }
    let mut out = zip.finish().map_err(io::Error::other)?;
    out.rewind()?;
    Ok(out)
}

fn put(
    zip: &mut zip::ZipWriter<File>,
    name: &str,
    size: u64,
    passphrase: &str,
    body: &mut File,
) -> io::Result<()> {
    let options = SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .large_file(size >= u64::from(u32::MAX) / 2)
        .unix_permissions(0o600)
        .with_aes_encryption(zip::AesMode::Aes256, passphrase);
    zip.start_file(name, options).map_err(io::Error::other)?;
    io::copy(body, zip)?;
    Ok(())
}

/// One table's JSON array as CSV: a header of every column met (first seen
/// first), one line per row. Read twice (columns, then rows), one row in
/// memory at a time. Returns the CSV's size.
fn to_csv(json: &mut File, out: &mut File) -> io::Result<u64> {
    let mut columns: Vec<String> = Vec::new();
    for_each_row(BufReader::new(&mut *json), |row| {
        for k in row.keys() {
            if !columns.contains(k) {
                columns.push(k.clone());
            }
        }
        Ok(())
    })?;
    json.rewind()?;
    let mut w = csv::Writer::from_writer(io::BufWriter::new(&mut *out));
    w.write_record(&columns)?;
    for_each_row(BufReader::new(&mut *json), |row| {
        let cells = columns.iter().map(|c| cell(row.get(c)));
        w.write_record(cells).map_err(io::Error::from)
    })?;
    w.flush()?;
    drop(w);
    out.stream_position()
}

/// A spreadsheet runs a cell that starts like a formula; a leading `'`
/// makes it text (the JSON beside it keeps the exact value).
fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => match s.chars().next() {
            Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{s}"),
            _ => s.clone(),
        },
        // A number (-5 included) or a nested value is data, never a formula.
        Some(other) => other.to_string(),
    }
}

/// Calls `f` with each object of a JSON array, read as a stream.
fn for_each_row(
    r: impl Read,
    f: impl FnMut(&Map<String, Value>) -> io::Result<()>,
) -> io::Result<()> {
    use serde::de::{Deserializer, Error as _, SeqAccess, Visitor};
    struct Rows<F>(F);
    impl<'de, F: FnMut(&Map<String, Value>) -> io::Result<()>> Visitor<'de> for Rows<F> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON array of row objects")
        }
        fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
            while let Some(row) = seq.next_element::<Map<String, Value>>()? {
                (self.0)(&row).map_err(A::Error::custom)?;
            }
            Ok(())
        }
    }
    let mut de = serde_json::Deserializer::from_reader(r);
    de.deserialize_seq(Rows(f)).map_err(io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn passphrases_are_long_unambiguous_and_fresh() {
        let (a, b) = (passphrase(), passphrase());
        assert_ne!(a, b);
        assert_eq!(a.len(), 29, "{a}");
        assert!(a
            .split('-')
            .all(|g| g.len() == 5 && g.bytes().all(|c| ALPHABET.contains(&c))));
    }

    #[test]
    fn a_file_two_rows_name_is_one_entry_and_every_entry_is_encrypted() {
        let mut tar = tar::Builder::new(tempfile::tempfile().unwrap());
        for (name, body) in [
            ("t.json", &b"[]"[..]),
            ("files/t/a.txt", b"x"),
            ("files/t/a.txt", b"x"),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_size(body.len() as u64);
            h.set_cksum();
            tar.append_data(&mut h, name, body).unwrap();
        }
        let mut file = tar.into_inner().unwrap();
        file.rewind().unwrap();
        let zip = build(file, tempfile::tempfile().unwrap(), "pass").unwrap();
        let mut z = zip::ZipArchive::new(zip).unwrap();
        let names: Vec<String> = z.file_names().map(str::to_string).collect();
        assert_eq!(
            names.len(),
            3,
            "t.json, t.csv, files/t/a.txt once: {names:?}"
        );
        for (i, name) in names.iter().enumerate() {
            assert!(z.by_index_raw(i).unwrap().encrypted(), "{name}");
        }
    }

    #[test]
    fn csv_has_every_column_and_neutralises_formulas() {
        let mut json = tempfile::tempfile().unwrap();
        json.write_all(
            br#"[{"id":1,"name":"=HYPERLINK(\"x\")","tags":["a"],"n":-5},
{"id":2,"name":null,"extra":"b, \"c\""}]"#,
        )
        .unwrap();
        json.rewind().unwrap();
        let mut out = tempfile::tempfile().unwrap();
        let n = to_csv(&mut json, &mut out).unwrap();
        out.rewind().unwrap();
        let mut text = String::new();
        out.read_to_string(&mut text).unwrap();
        assert_eq!(n as usize, text.len());
        assert_eq!(
            text,
            "id,n,name,tags,extra\n1,-5,\"'=HYPERLINK(\"\"x\"\")\",\"[\"\"a\"\"]\",\n2,,,,\"b, \"\"c\"\"\"\n"
        );
    }
}
