//! The streaming halves of a backup, run on a blocking thread:
//! encode: dump bytes → zstd (multithreaded) → age → fixed-size parts (hashed) → channel;
//! decode: stored bytes (hashed) → age → zstd → a writer.
//! Memory stays bounded by the part size times the parts in flight.

use std::io::{self, BufReader, Read, Write};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::error::{Error, Result};

/// Cuts the encrypted stream into equal parts and hashes what is stored.
pub struct PartSink {
    part_size: usize,
    buf: Vec<u8>,
    tx: mpsc::Sender<Bytes>,
    hasher: Option<Sha256>,
    stored: u64,
}

impl PartSink {
    pub fn new(part_size: usize, tx: mpsc::Sender<Bytes>) -> Self {
        PartSink {
            part_size,
            buf: Vec::with_capacity(part_size),
            tx,
            hasher: Some(Sha256::new()),
            stored: 0,
        }
    }

    /// No SHA-256 of the stored bytes (`finish` returns an empty one), for a
    /// caller that hashes what matters to it itself: a WAL file's plain bytes.
    pub fn without_hash(mut self) -> Self {
        self.hasher = None;
        self
    }

    fn send(&mut self, part: Vec<u8>) -> io::Result<()> {
        if let Some(h) = &mut self.hasher {
            h.update(&part);
        }
        self.stored += part.len() as u64;
        // Blocks while the uploader is `concurrency` parts behind: that is the memory bound.
        self.tx
            .blocking_send(Bytes::from(part))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the upload stopped"))
    }

    /// Sends the last (short) part; returns (sha256 hex, stored bytes).
    pub fn finish(mut self) -> io::Result<(String, u64)> {
        if !self.buf.is_empty() {
            let last = std::mem::take(&mut self.buf);
            self.send(last)?;
        }
        let sha256 = self.hasher.map(|h| hex::encode(h.finalize()));
        Ok((sha256.unwrap_or_default(), self.stored))
    }
}

impl Write for PartSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = self.part_size - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == self.part_size {
            let full = std::mem::replace(&mut self.buf, Vec::with_capacity(self.part_size));
            self.send(full)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Counts bytes read through it.
pub struct Counting<R> {
    pub inner: R,
    pub count: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

/// Hashes bytes read through it.
pub struct Hashing<R> {
    pub inner: R,
    pub hasher: Sha256,
    pub count: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

pub struct Encoded {
    pub raw_bytes: u64,
    pub stored_bytes: u64,
    pub sha256: String,
}

pub fn parse_recipients(keys: &[String]) -> Result<Vec<age::x25519::Recipient>> {
    if keys.is_empty() {
        return Err(Error::Usage(
            "backup.recipients is empty: add the age public key(s) (age1…) that may decrypt backups".into(),
        ));
    }
    keys.iter()
        .map(|k| {
            k.parse()
                .map_err(|e| Error::Usage(format!("backup.recipients: `{k}`: {e}")))
        })
        .collect()
}

/// dump → zstd → age → parts. Returns sizes and the hash of what was stored.
pub fn encode(
    input: impl Read,
    sink: PartSink,
    recipients: &[age::x25519::Recipient],
    level: i32,
    threads: u32,
) -> Result<Encoded> {
    let io_err = |what: &str, e: io::Error| Error::Backup(format!("{what}: {e}"));
    let encryptor =
        age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
            .map_err(|e| Error::Backup(format!("age: {e}")))?;
    let age_out = encryptor.wrap_output(sink).map_err(|e| io_err("age", e))?;
    let mut z = zstd::stream::Encoder::new(age_out, level).map_err(|e| io_err("zstd", e))?;
    if threads > 1 {
        z.multithread(threads)
            .map_err(|e| io_err("zstd threads", e))?;
    }
    let mut input = Counting {
        inner: input,
        count: 0,
    };
    io::copy(&mut input, &mut z).map_err(|e| io_err("compressing the dump", e))?;
    let age_out = z.finish().map_err(|e| io_err("zstd", e))?;
    let sink = age_out.finish().map_err(|e| io_err("age", e))?;
    let (sha256, stored_bytes) = sink.finish().map_err(|e| io_err("upload", e))?;
    Ok(Encoded {
        raw_bytes: input.count,
        stored_bytes,
        sha256,
    })
}

pub fn parse_identities(text: &str) -> Result<Vec<Box<dyn age::Identity>>> {
    let file = age::IdentityFile::from_buffer(BufReader::new(text.as_bytes()))
        .map_err(|e| Error::Usage(format!("age identity: {e}")))?;
    let ids = file
        .into_identities()
        .map_err(|e| Error::Usage(format!("age identity: {e}")))?;
    if ids.is_empty() {
        return Err(Error::Usage(
            "the age identity file holds no key (AGE-SECRET-KEY-1…)".into(),
        ));
    }
    Ok(ids)
}

#[derive(Debug)]
pub struct Decoded {
    pub stored_bytes: u64,
    pub sha256: String,
    pub raw_bytes: u64,
}

/// stored bytes → age → zstd → `out`; hashes every stored byte (reading to the end).
pub fn decode(
    input: impl Read,
    identities: &[Box<dyn age::Identity>],
    out: &mut dyn Write,
) -> Result<Decoded> {
    let mut hashed = Hashing {
        inner: input,
        hasher: Sha256::new(),
        count: 0,
    };
    let raw = {
        let decryptor = age::Decryptor::new_buffered(BufReader::new(&mut hashed))
            .map_err(|e| Error::Backup(format!("not an age file or corrupted header: {e}")))?;
        let plain = decryptor
            .decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity))
            .map_err(|e| {
                Error::Backup(format!(
                    "cannot decrypt (wrong identity or corrupted object): {e}"
                ))
            })?;
        let mut z =
            zstd::stream::Decoder::new(plain).map_err(|e| Error::Backup(format!("zstd: {e}")))?;
        io::copy(&mut z, out).map_err(|e| {
            Error::Backup(format!("decrypting/decompressing (corrupted object?): {e}"))
        })?
    };
    io::copy(&mut hashed, &mut io::sink())
        .map_err(|e| Error::Backup(format!("reading the object: {e}")))?;
    Ok(Decoded {
        stored_bytes: hashed.count,
        sha256: hex::encode(hashed.hasher.finalize()),
        raw_bytes: raw,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_equal_parts_and_matching_hash() {
        let id = age::x25519::Identity::generate();
        let recipients = vec![id.to_public()];
        // Incompressible (xorshift) bytes, so the stored stream spans several parts.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let data: Vec<u8> = (0..200_000)
            .flat_map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()
            })
            .collect();
        let (tx, mut rx) = mpsc::channel(1024);
        let enc = encode(&data[..], PartSink::new(64 * 1024, tx), &recipients, 3, 2).unwrap();
        let mut parts = Vec::new();
        while let Ok(p) = rx.try_recv() {
            parts.push(p);
        }
        assert!(parts.len() > 1, "several parts");
        assert!(
            parts[..parts.len() - 1]
                .iter()
                .all(|p| p.len() == 64 * 1024),
            "equal parts but the last"
        );
        let stored: Vec<u8> = parts.concat();
        assert_eq!(enc.stored_bytes, stored.len() as u64);
        assert_eq!(enc.raw_bytes, data.len() as u64);
        assert!(
            stored.starts_with(b"age-encryption.org/v1"),
            "the stored object is an age file"
        );

        let ids: Vec<Box<dyn age::Identity>> = vec![Box::new(id)];
        let mut out = Vec::new();
        let dec = decode(&stored[..], &ids, &mut out).unwrap();
        assert_eq!(out, data);
        assert_eq!(dec.sha256, enc.sha256);
    }

    #[test]
    fn corruption_and_wrong_keys_are_detected() {
        let id = age::x25519::Identity::generate();
        let (tx, mut rx) = mpsc::channel(1024);
        encode(
            &b"hello world"[..],
            PartSink::new(1 << 20, tx),
            &[id.to_public()],
            3,
            1,
        )
        .unwrap();
        let mut stored = rx.try_recv().unwrap().to_vec();
        let ids: Vec<Box<dyn age::Identity>> = vec![Box::new(id)];
        let other: Vec<Box<dyn age::Identity>> = vec![Box::new(age::x25519::Identity::generate())];
        assert!(decode(&stored[..], &other, &mut Vec::new())
            .unwrap_err()
            .to_string()
            .contains("cannot decrypt"));
        let n = stored.len();
        stored[n - 5] ^= 0xff;
        assert!(decode(&stored[..], &ids, &mut Vec::new()).is_err());
    }
}
