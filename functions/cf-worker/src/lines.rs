//! An R2 object's bytes to numbered lines, pushed chunk by chunk as the
//! body streams in: gzip decoded on the fly (flate2, pure Rust), the lines
//! cut by the core's [`LineSplitter`], the rule the Lambda functions read
//! S3 objects by (a line longer than the limit rejected without being
//! buffered; each line with the decoded byte offset after it, the
//! checkpoint a resumed read starts from).

use std::io::Write;

use flate2::write::MultiGzDecoder;
use shared_core::lines::{Line, LineSplitter};

/// Splits an object's stream into [`Line`]s, decoding gzip first when asked.
pub struct ObjectLines {
    gzip: Option<MultiGzDecoder<Vec<u8>>>,
    splitter: LineSplitter,
}

impl ObjectLines {
    /// Lines of an object whose first line is `first_line`, starting at
    /// decoded offset `offset` (a ranged read resuming at a checkpoint).
    pub fn new(gzip: bool, max_line_bytes: usize, first_line: u64, offset: u64) -> Self {
        Self {
            gzip: gzip.then(|| MultiGzDecoder::new(Vec::new())),
            splitter: LineSplitter::new(max_line_bytes, first_line, offset),
        }
    }

    /// Feeds the next bytes of the object; returns the lines they complete.
    /// An error means the object is not valid gzip (permanent).
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Line>, String> {
        match &mut self.gzip {
            Some(decoder) => {
                decoder.write_all(bytes).map_err(not_gzip)?;
                let decoded = std::mem::take(decoder.get_mut());
                Ok(self.splitter.push(&decoded))
            }
            None => Ok(self.splitter.push(bytes)),
        }
    }

    /// Ends the object: the lines its last bytes complete, the last one
    /// without a newline included.
    pub fn finish(&mut self) -> Result<Vec<Line>, String> {
        let mut lines = match self.gzip.take() {
            Some(decoder) => self.splitter.push(&decoder.finish().map_err(not_gzip)?),
            None => Vec::new(),
        };
        lines.extend(self.splitter.finish());
        Ok(lines)
    }
}

fn not_gzip(e: std::io::Error) -> String {
    format!("not valid gzip: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line as the Worker reads it: its text, or why it is not one.
    #[derive(Debug)]
    struct Read {
        number: u64,
        end: u64,
        text: Result<String, String>,
    }

    fn all(splitter: &mut ObjectLines, max: usize, chunks: &[&[u8]]) -> Vec<Read> {
        let mut lines = Vec::new();
        for c in chunks {
            lines.extend(splitter.push(c).unwrap());
        }
        lines.extend(splitter.finish().unwrap());
        let text = |l: &Line| l.content.text(max).map(str::to_owned).map_err(|e| e.to_string());
        lines.iter().map(|l| Read { number: l.number, end: l.end, text: text(l) }).collect()
    }

    #[test]
    fn lines_split_across_chunks_carry_numbers_and_end_offsets() {
        let mut s = ObjectLines::new(false, 100, 1, 0);
        let lines = all(&mut s, 100, &[b"ab", b"c\r\nde\n", b"\nlast"]);
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
        let mut s = ObjectLines::new(false, 100, 7, 40);
        let lines = all(&mut s, 100, &[b"x\ny\n"]);
        assert_eq!((lines[0].number, lines[0].end, lines[1].number, lines[1].end), (7, 42, 8, 44));
    }

    #[test]
    fn an_overlong_line_is_rejected_without_being_kept_and_the_next_one_reads() {
        let mut s = ObjectLines::new(false, 4, 1, 0);
        let lines = all(&mut s, 4, &[b"12", b"345678", b"9\nok\n"]);
        assert_eq!(lines[0].text, Err("line is 9 bytes, over the limit of 4".into()));
        assert_eq!(lines[0].end, 10);
        assert_eq!((lines[1].number, lines[1].end, lines[1].text.clone()), (2, 13, Ok("ok".into())));
    }

    #[test]
    fn gzip_is_decoded_as_it_arrives_and_bad_gzip_is_an_error() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(b"one\ntwo\n").unwrap();
        let bytes = gz.finish().unwrap();
        let mut s = ObjectLines::new(true, 100, 1, 0);
        let chunks: Vec<&[u8]> = bytes.chunks(3).collect();
        let texts: Vec<String> = all(&mut s, 100, &chunks).into_iter().map(|l| l.text.unwrap()).collect();
        assert_eq!(texts, vec!["one", "two"]);
        let mut bad = ObjectLines::new(true, 100, 1, 0);
        assert!(bad.push(b"definitely not gzip").is_err());
    }

    #[test]
    fn invalid_utf8_is_a_bad_line_not_a_failure() {
        let mut s = ObjectLines::new(false, 100, 1, 0);
        let lines = all(&mut s, 100, &[b"\xff\xfe\nfine\n"]);
        assert_eq!(lines[0].text, Err("line is not valid UTF-8".into()));
        assert_eq!(lines[1].text, Ok("fine".into()));
    }

    #[test]
    fn a_gzipped_crlf_line_at_the_limit_reads_as_on_lambda() {
        // The core's rule: the bound is on the content, `\r\n` not counted,
        // wherever the compressed chunks cut the decoded bytes.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(b"abcd\r\nabcde\r\n").unwrap();
        let bytes = gz.finish().unwrap();
        for size in 1..bytes.len() {
            let chunks: Vec<&[u8]> = bytes.chunks(size).collect();
            let got: Vec<(u64, u64, Result<String, String>)> = all(&mut ObjectLines::new(true, 4, 1, 0), 4, &chunks)
                .into_iter()
                .map(|l| (l.number, l.end, l.text))
                .collect();
            assert_eq!(
                got,
                vec![(1, 6, Ok("abcd".into())), (2, 13, Err("line is 5 bytes, over the limit of 4".into()))],
                "gzip chunks of {size} bytes"
            );
        }
    }
}
