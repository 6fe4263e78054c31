//! Output: plain tables for humans, JSON for scripts.

use serde::Serialize;

/// Where a command's result goes.
#[derive(Debug, Clone, Copy)]
pub struct Out {
    /// Print JSON instead of tables.
    pub json: bool,
}

impl Out {
    /// Prints `value` as JSON (in `--json` mode) or runs `human`.
    pub fn emit<T: Serialize>(&self, value: &T, human: impl FnOnce()) {
        if self.json {
            match serde_json::to_string_pretty(value) {
                Ok(s) => println!("{s}"),
                Err(e) => eprintln!("error: cannot encode JSON: {e}"),
            }
        } else {
            human();
        }
    }
}

/// A table with left-aligned columns.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Prints it (or `empty` when there are no rows).
    pub fn print(&self, empty: &str) {
        if self.rows.is_empty() {
            println!("{empty}");
            return;
        }
        let mut w: Vec<usize> = self.header.iter().map(String::len).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                if i < w.len() {
                    w[i] = w[i].max(c.len());
                }
            }
        }
        let line = |cells: &[String]| {
            let mut s = String::new();
            for (i, c) in cells.iter().enumerate() {
                if i + 1 == cells.len() {
                    s.push_str(c);
                } else {
                    s.push_str(&format!(
                        "{c:<width$}  ",
                        width = w.get(i).copied().unwrap_or(0)
                    ));
                }
            }
            println!("{}", s.trim_end());
        };
        line(&self.header);
        for r in &self.rows {
            line(r);
        }
    }
}

/// `-` for an empty list, else comma-separated.
pub fn list<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    let v: Vec<String> = items.into_iter().map(|i| i.to_string()).collect();
    if v.is_empty() {
        "-".into()
    } else {
        v.join(",")
    }
}
