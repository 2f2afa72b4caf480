//! Output formats: aligned tables (kubectl's look) and JSON, plus the formatting of times and
//! durations.

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
        let mut out = String::new();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (index, ((cell, width), (_, align))) in row.iter().zip(&widths).zip(&self.columns).enumerate() {
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
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// A leader timestamp (ms since the epoch) as RFC 3339 UTC to the second; `-` when unset.
pub fn time(unix_ms: i64) -> String {
    match u64::try_from(unix_ms) {
        Ok(ms) if ms > 0 => humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string(),
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
    fn times_and_durations() {
        assert_eq!(time(0), "-");
        assert_eq!(time(1_700_000_000_123), "2023-11-14T22:13:20Z");
        assert_eq!(duration_ms(30_000), "30s");
        assert_eq!(duration_ms(90_000), "1m 30s");
        assert_eq!(duration_ms(0), "0s");
        assert_eq!(list(&[]), "-");
        assert_eq!(list(&["a".to_owned(), "b".to_owned()]), "a,b");
    }
}
