//! Output formats: aligned tables (kubectl's look), tables printed a row at a time for streams,
//! and JSON, plus the formatting of times and durations.

use std::time::Duration;
use std::time::UNIX_EPOCH;

use clap::ValueEnum;

/// The `-o` formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Format {
    /// Aligned columns with a header.
    #[default]
    Table,
    /// The table with more columns.
    Wide,
    /// The server's messages as JSON (proto field names; enums by their proto names).
    Json,
}

/// How a column's cells line up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Text: left.
    Left,
    /// Numbers: right.
    Right,
}

/// A table: a header and rows of cells, rendered with columns three spaces apart.
#[derive(Debug, Clone, Default)]
pub struct Table {
    /// The column names and alignments.
    columns: Vec<(String, Align)>,
    /// The rows; each has one cell per column.
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these columns (upper-case names, as kubectl prints them).
    pub fn new(columns: &[(&str, Align)]) -> Self {
        Self {
            columns: columns
                .iter()
                .map(|(name, align)| ((*name).to_owned(), *align))
                .collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are empty, extra cells are dropped.
    pub fn push(&mut self, mut cells: Vec<String>) {
        cells.resize(self.columns.len(), String::new());
        self.rows.push(cells);
    }

    /// Whether the table has no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as text, one line per row after the header, each line ending in `\n`, no
    /// trailing spaces.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.columns.iter().map(|(name, _)| name.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let header: Vec<String> = self.columns.iter().map(|(name, _)| name.clone()).collect();
        let aligns: Vec<Align> = self.columns.iter().map(|(_, align)| *align).collect();
        let mut out = String::new();
        for row in std::iter::once(&header).chain(&self.rows) {
            out.push_str(&line(row, &widths, &aligns));
        }
        out
    }
}

/// One line of a table: cells padded to `widths`, three spaces apart, no trailing spaces, `\n`.
fn line(cells: &[String], widths: &[usize], aligns: &[Align]) -> String {
    let mut line = String::new();
    for (index, ((cell, width), align)) in cells.iter().zip(widths).zip(aligns).enumerate() {
        if index > 0 {
            line.push_str("   ");
        }
        let pad = width.saturating_sub(cell.chars().count());
        match align {
            Align::Left => {
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', pad));
            }
            Align::Right => {
                line.extend(std::iter::repeat_n(' ', pad));
                line.push_str(cell);
            }
        }
    }
    let mut line = line.trim_end().to_owned();
    line.push('\n');
    line
}

/// A table printed a row at a time, for a stream whose rows are not known in advance: the
/// columns have fixed widths, and a longer cell pushes the rest of its row right rather than
/// realigning the rows already printed (as `kubectl get --watch`).
#[derive(Debug, Clone)]
pub struct StreamingTable {
    /// The column names.
    names: Vec<String>,
    /// The alignments.
    aligns: Vec<Align>,
    /// The widths: the given one, or the name's if longer.
    widths: Vec<usize>,
}

impl StreamingTable {
    /// A table with these columns and widths.
    pub fn new(columns: &[(&str, Align, usize)]) -> Self {
        Self {
            names: columns.iter().map(|(name, _, _)| (*name).to_owned()).collect(),
            aligns: columns.iter().map(|(_, align, _)| *align).collect(),
            widths: columns
                .iter()
                .map(|(name, _, width)| (*width).max(name.chars().count()))
                .collect(),
        }
    }

    /// The header line.
    pub fn header(&self) -> String {
        line(&self.names, &self.widths, &self.aligns)
    }

    /// One row's line; missing cells are empty, extra cells are dropped.
    pub fn row(&self, mut cells: Vec<String>) -> String {
        cells.resize(self.names.len(), String::new());
        line(&cells, &self.widths, &self.aligns)
    }
}

/// A leader timestamp (ms since the epoch) as RFC 3339 UTC to the second; `-` when unset.
pub fn time(unix_ms: i64) -> String {
    match u64::try_from(unix_ms) {
        Ok(ms) if ms > 0 => humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string(),
        _ => "-".to_owned(),
    }
}

/// A leader timestamp (ms since the epoch) as RFC 3339 UTC to the millisecond, as the audit
/// commands print event times; `-` when unset.
pub fn time_ms(unix_ms: i64) -> String {
    match u64::try_from(unix_ms) {
        Ok(ms) if ms > 0 => humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string(),
        _ => "-".to_owned(),
    }
}

/// A duration in ms the way humans write it (`30s`, `1m 30s`).
pub fn duration_ms(ms: u64) -> String {
    if ms == 0 {
        return "0s".to_owned();
    }
    humantime::format_duration(Duration::from_millis(ms)).to_string()
}

/// A list of strings for a cell: comma-separated, `-` when empty.
pub fn list(items: &[String]) -> String {
    if items.is_empty() {
        "-".to_owned()
    } else {
        items.join(",")
    }
}

/// A string for a cell: `-` when empty.
pub fn text(value: &str) -> String {
    if value.is_empty() {
        "-".to_owned()
    } else {
        value.to_owned()
    }
}

/// A number for a cell: `-` when zero (unset, by the proto's conventions).
pub fn number_or_dash(value: u64) -> String {
    if value == 0 { "-".to_owned() } else { value.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_lines_have_no_trailing_spaces() {
        let mut table = Table::new(&[("NAME", Align::Left), ("TOTAL", Align::Right), ("AZ", Align::Left)]);
        table.push(vec![
            "us-west-2a".to_owned(),
            "8187".to_owned(),
            "us-west-2a".to_owned(),
        ]);
        table.push(vec!["b".to_owned(), "3".to_owned(), String::new()]);
        let expected = "\
NAME         TOTAL   AZ
us-west-2a    8187   us-west-2a
b                3
";
        assert_eq!(table.render(), expected);
    }

    #[test]
    fn empty_table_is_its_header() {
        let table = Table::new(&[("CIDR", Align::Left), ("CREATED", Align::Left)]);
        assert!(table.is_empty());
        assert_eq!(table.render(), "CIDR   CREATED\n");
    }

    #[test]
    fn short_rows_are_padded() {
        let mut table = Table::new(&[("A", Align::Left), ("B", Align::Left)]);
        table.push(vec!["x".to_owned()]);
        table.push(vec!["1".to_owned(), "2".to_owned(), "3".to_owned()]);
        assert_eq!(table.render(), "A   B\nx\n1   2\n");
    }

    #[test]
    fn streaming_tables_keep_their_widths() {
        let table = StreamingTable::new(&[
            ("SEQ", Align::Right, 4),
            ("KIND", Align::Left, 7),
            ("IP", Align::Left, 0),
        ]);
        assert_eq!(table.header(), " SEQ   KIND      IP\n");
        assert_eq!(
            table.row(vec!["7".to_owned(), "IpBound".to_owned(), "100.64.0.9".to_owned()]),
            "   7   IpBound   100.64.0.9\n"
        );
        // Too long: pushes the rest right, later rows are unaffected.
        assert_eq!(
            table.row(vec!["12345".to_owned(), "NodeHeartbeat".to_owned()]),
            "12345   NodeHeartbeat\n"
        );
    }

    #[test]
    fn times_and_durations() {
        assert_eq!(time(0), "-");
        assert_eq!(time(1_700_000_000_123), "2023-11-14T22:13:20Z");
        assert_eq!(time_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(time_ms(1_700_000_000_000), "2023-11-14T22:13:20.000Z");
        assert_eq!(time_ms(-1), "-");
        assert_eq!(duration_ms(30_000), "30s");
        assert_eq!(duration_ms(90_000), "1m 30s");
        assert_eq!(duration_ms(0), "0s");
        assert_eq!(list(&[]), "-");
        assert_eq!(list(&["a".to_owned(), "b".to_owned()]), "a,b");
    }
}
