//! [`Page`]: a page of a batch's records as one buffer, what [`crate::BatchReader`] reads and
//! the persister writes.

/// A page of a batch's records, in push order: their JSON texts in one buffer, each followed
/// by a newline, so a page costs two allocations however many records it holds, and JSON Lines
/// output is [`Page::as_lines`] written as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Page {
    /// Every record followed by `\n`.
    lines: String,
    /// Where each record ends in `lines` (the index of its newline).
    ends: Vec<usize>,
}

impl Page {
    /// A page from its records' texts, copied.
    pub fn from_strings<S: AsRef<str>>(records: &[S]) -> Self {
        let bytes = records.iter().map(|r| r.as_ref().len() + 1).sum();
        let mut page = Self {
            lines: String::with_capacity(bytes),
            ends: Vec::with_capacity(records.len()),
        };
        for record in records {
            page.lines.push_str(record.as_ref());
            page.ends.push(page.lines.len());
            page.lines.push('\n');
        }
        page
    }

    /// A page from its buffer and where each record ends in it (page_socket.rs builds it so:
    /// every `ends[i]` is the index of a newline, in increasing order, the last one the
    /// buffer's last byte).
    pub(crate) fn from_lines(lines: String, ends: Vec<usize>) -> Self {
        debug_assert!(ends.last().is_none_or(|&end| end + 1 == lines.len()));
        Self { lines, ends }
    }

    /// How many records it holds.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// True when it holds no record.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The records' texts, in push order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        (0..self.ends.len()).map(|index| {
            let start = index
                .checked_sub(1)
                .map_or(0, |before| self.ends[before] + 1);
            &self.lines[start..self.ends[index]]
        })
    }

    /// Every record followed by a newline: the page as JSON Lines, when the records hold no
    /// newline of their own (a record pushed by this crate never does: it is compact JSON).
    pub fn as_lines(&self) -> &str {
        &self.lines
    }

    /// The bytes of its records' texts, newlines not counted.
    pub fn text_bytes(&self) -> usize {
        self.lines.len() - self.ends.len()
    }

    /// The records as one `String` each.
    pub fn into_strings(self) -> Vec<String> {
        self.iter().map(str::to_owned).collect()
    }
}
