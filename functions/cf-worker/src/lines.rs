//! An object's bytes to numbered lines, pushed chunk by chunk as the object
//! streams in: gzip decoded on the fly, a line longer than the limit
//! rejected without being buffered, each line with the decoded byte offset
//! after it (the checkpoint a resumed read starts from).

use std::io::Write;

use flate2::write::MultiGzDecoder;

/// One physical line of the decoded object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// 1-based line number.
    pub number: u64,
    /// Decoded byte offset just past this line (and its newline).
    pub end: u64,
    /// The text without its line ending, or why it is not a line we read.
    pub text: Result<String, String>,
}

/// Splits a byte stream into [`Line`]s.
pub struct LineSplitter {
    gzip: Option<MultiGzDecoder<Vec<u8>>>,
    pending: Vec<u8>,
    max_line_bytes: usize,
    overlong: bool,
    next_number: u64,
    /// Decoded offset of `pending[0]`.
    offset: u64,
}

impl LineSplitter {
    /// A splitter whose first line is `first_line`, starting at decoded
    /// offset `offset` (a ranged read resuming at a checkpoint).
    pub fn new(gzip: bool, max_line_bytes: usize, first_line: u64, offset: u64) -> Self {
        Self {
            gzip: gzip.then(|| MultiGzDecoder::new(Vec::new())),
            pending: Vec::new(),
            max_line_bytes,
            overlong: false,
            next_number: first_line,
            offset,
        }
    }

    /// Feeds the next bytes of the object; returns the lines they complete.
    /// An error means the object is not valid gzip (permanent).
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Line>, String> {
        match &mut self.gzip {
            Some(decoder) => {
                decoder.write_all(bytes).map_err(|e| format!("not valid gzip: {e}"))?;
                let decoded = std::mem::take(decoder.get_mut());
                Ok(self.split(&decoded))
            }
            None => Ok(self.split(bytes)),
        }
    }

    /// Ends the object: the last line, if it had no newline.
    pub fn finish(&mut self) -> Result<Vec<Line>, String> {
        let mut lines = Vec::new();
        if let Some(decoder) = self.gzip.take() {
            let rest = decoder.finish().map_err(|e| format!("not valid gzip: {e}"))?;
            lines = self.split(&rest);
        }
        if !self.pending.is_empty() || self.overlong {
            let end = self.offset + self.pending.len() as u64;
            let raw = std::mem::take(&mut self.pending);
            lines.push(self.line(raw, end));
        }
        Ok(lines)
    }

    fn split(&mut self, mut bytes: &[u8]) -> Vec<Line> {
        let mut lines = Vec::new();
        while let Some(i) = bytes.iter().position(|&b| b == b'\n') {
            let (head, rest) = bytes.split_at(i);
            self.take(head);
            let end = self.offset + self.pending.len() as u64 + 1;
            let raw = std::mem::take(&mut self.pending);
            lines.push(self.line(raw, end));
            bytes = &rest[1..];
        }
        self.take(bytes);
        lines
    }

    /// Buffers part of a line, unless the line is already too long.
    fn take(&mut self, part: &[u8]) {
        if self.overlong {
            self.offset += part.len() as u64;
        } else if self.pending.len() + part.len() > self.max_line_bytes {
            self.overlong = true;
            self.offset += (self.pending.len() + part.len()) as u64;
            self.pending.clear();
        } else {
            self.pending.extend_from_slice(part);
        }
    }

    fn line(&mut self, mut raw: Vec<u8>, end: u64) -> Line {
        let number = self.next_number;
        self.next_number += 1;
        self.offset = end;
        let text = if std::mem::take(&mut self.overlong) {
            Err(format!("line longer than {} bytes", self.max_line_bytes))
        } else {
            if raw.last() == Some(&b'\r') {
                raw.pop();
            }
            String::from_utf8(raw).map_err(|_| "line is not valid UTF-8".to_owned())
        };
        Line { number, end, text }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(splitter: &mut LineSplitter, chunks: &[&[u8]]) -> Vec<Line> {
        let mut lines = Vec::new();
        for c in chunks {
            lines.extend(splitter.push(c).unwrap());
        }
        lines.extend(splitter.finish().unwrap());
        lines
    }

    #[test]
    fn lines_split_across_chunks_carry_numbers_and_end_offsets() {
        let mut s = LineSplitter::new(false, 100, 1, 0);
        let lines = all(&mut s, &[b"ab", b"c\r\nde\n", b"\nlast"]);
        let got: Vec<(u64, u64, Result<String, String>)> =
            lines.into_iter().map(|l| (l.number, l.end, l.text)).collect();
        assert_eq!(
            got,
            vec![
                (1, 5, Ok("abc".into())),
                (2, 8, Ok("de".into())),
                (3, 9, Ok(String::new())),
                (4, 13, Ok("last".into()))
            ]
        );
    }

    #[test]
    fn a_resumed_read_numbers_from_its_checkpoint() {
        let mut s = LineSplitter::new(false, 100, 7, 40);
        let lines = all(&mut s, &[b"x\ny\n"]);
        assert_eq!((lines[0].number, lines[0].end, lines[1].number, lines[1].end), (7, 42, 8, 44));
    }

    #[test]
    fn an_overlong_line_is_rejected_without_being_kept_and_the_next_one_reads() {
        let mut s = LineSplitter::new(false, 4, 1, 0);
        let lines = all(&mut s, &[b"12", b"345678", b"9\nok\n"]);
        assert_eq!(lines[0].text, Err("line longer than 4 bytes".into()));
        assert_eq!(lines[0].end, 10);
        assert_eq!((lines[1].number, lines[1].end, lines[1].text.clone()), (2, 13, Ok("ok".into())));
    }

    #[test]
    fn gzip_is_decoded_as_it_arrives_and_bad_gzip_is_an_error() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(b"one\ntwo\n").unwrap();
        let bytes = gz.finish().unwrap();
        let mut s = LineSplitter::new(true, 100, 1, 0);
        let chunks: Vec<&[u8]> = bytes.chunks(3).collect();
        let texts: Vec<String> = all(&mut s, &chunks).into_iter().map(|l| l.text.unwrap()).collect();
        assert_eq!(texts, vec!["one", "two"]);
        let mut bad = LineSplitter::new(true, 100, 1, 0);
        assert!(bad.push(b"definitely not gzip").is_err());
    }

    #[test]
    fn invalid_utf8_is_a_bad_line_not_a_failure() {
        let mut s = LineSplitter::new(false, 100, 1, 0);
        let lines = all(&mut s, &[b"\xff\xfe\nfine\n"]);
        assert_eq!(lines[0].text, Err("line is not valid UTF-8".into()));
        assert_eq!(lines[1].text, Ok("fine".into()));
    }
}
