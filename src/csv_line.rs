//! Where a CSV record is, for people: the line it starts on. Files for tiendo (targets,
//! events to publish) may hold `#` comments and blank lines, which the csv reader skips but
//! counts into the next record's position.

/// The line a CSV record starts on, from its byte offset: a record's position includes the
/// blank and comment lines skipped before it, so those are stepped over first.
pub fn line_at(text: &str, p: &csv::Position) -> u64 {
    let bytes = text.as_bytes();
    let mut end = (p.byte() as usize).min(text.len());
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
        break;
    }
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count() as u64
        + 1
}
