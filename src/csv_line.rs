//! Where a CSV record is, for people: the line it starts on. Files for tiendo (targets,
//! events to publish) may hold `#` comments and blank lines, which the csv reader skips but
//! counts into the next record's position.

/// The line a CSV record starts on, from its byte offset: a record's position includes the
/// blank and comment lines skipped before it, so those are stepped over first.
pub fn line_at(text: &str, p: &csv::Position) -> u64 {
    Lines::new(text).of(p)
}

/// The lines of records read in order, each counted on from the one before: a file of a
/// million rows is read once, not once per row.
pub struct Lines<'a> {
    text: &'a str,
    /// Byte offset and line of the last record asked for.
    at: usize,
    line: u64,
}

impl<'a> Lines<'a> {
    pub fn new(text: &'a str) -> Lines<'a> {
        Lines {
            text,
            at: 0,
            line: 1,
        }
    }

    /// The line the record at `p` starts on (from the start again if `p` is before the last).
    pub fn of(&mut self, p: &csv::Position) -> u64 {
        let start = record_start(self.text.as_bytes(), p.byte() as usize);
        if start < self.at {
            (self.at, self.line) = (0, 1);
        }
        self.line += self.text.as_bytes()[self.at..start]
            .iter()
            .filter(|b| **b == b'\n')
            .count() as u64;
        self.at = start;
        self.line
    }
}

/// Where the record whose position is `byte` begins: past blank and comment lines.
fn record_start(bytes: &[u8], byte: usize) -> usize {
    let mut end = byte.min(bytes.len());
    loop {
        while end < bytes.len() && bytes[end].is_ascii_whitespace() {
            end += 1;
        }
        if end < bytes.len() && bytes[end] == b'#' {
            end += bytes[end..]
                .iter()
                .position(|b| *b == b'\n')
                .unwrap_or(bytes.len() - end);
            continue;
        }
        return end;
    }
}
