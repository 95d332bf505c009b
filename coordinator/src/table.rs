//! Plain-text and Markdown tables for the command-line reports (gate, compare, sweep).

/// Rows of already formatted cells under a header; numbers (cells that parse as one) align right.
#[derive(Debug, Clone, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

fn numeric(s: &str) -> bool {
    let t = s.trim_start_matches(['+', '-']).trim_end_matches('%');
    !t.is_empty() && t.parse::<f64>().is_ok()
}

impl Table {
    pub fn new<S: Into<String>>(header: impl IntoIterator<Item = S>) -> Self {
        Table {
            header: header.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    fn widths(&self) -> Vec<usize> {
        let mut w: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                if i < w.len() {
                    w[i] = w[i].max(c.chars().count());
                }
            }
        }
        w
    }

    /// A column whose every non-empty cell is a number aligns right.
    fn right_aligned(&self) -> Vec<bool> {
        (0..self.header.len())
            .map(|i| {
                !self.rows.is_empty()
                    && self
                        .rows
                        .iter()
                        .all(|r| r.get(i).is_none_or(|c| c.is_empty() || numeric(c)))
            })
            .collect()
    }

    /// Aligned columns separated by two spaces, a dashed rule under the header.
    pub fn render(&self) -> String {
        let w = self.widths();
        let right = self.right_aligned();
        let line = |cells: &[String]| {
            let parts: Vec<String> = cells
                .iter()
                .zip(w.iter().zip(&right))
                .map(|(c, (&w, &r))| {
                    if r {
                        format!("{c:>w$}")
                    } else {
                        format!("{c:<w$}")
                    }
                })
                .collect();
            parts.join("  ").trim_end().to_string()
        };
        let mut out = line(&self.header) + "\n";
        let rule: Vec<String> = w.iter().map(|&n| "-".repeat(n)).collect();
        out += &(rule.join("  ") + "\n");
        for r in &self.rows {
            out += &(line(r) + "\n");
        }
        out
    }

    /// GitHub-flavoured Markdown; `|` inside cells is escaped.
    pub fn markdown(&self) -> String {
        let esc = |c: &String| c.replace('|', "\\|");
        let mut out = format!(
            "| {} |\n",
            self.header.iter().map(esc).collect::<Vec<_>>().join(" | ")
        );
        let align: Vec<&str> = self
            .right_aligned()
            .into_iter()
            .map(|r| if r { "---:" } else { "---" })
            .collect();
        out += &format!("| {} |\n", align.join(" | "));
        for r in &self.rows {
            out += &format!(
                "| {} |\n",
                r.iter().map(esc).collect::<Vec<_>>().join(" | ")
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::Table;

    #[test]
    fn numbers_align_right_and_markdown_escapes_pipes() {
        let mut t = Table::new(["name", "top1"]);
        t.row(["a|b", "9.5"]);
        t.row(["long name", "-12.25"]);
        let text = t.render();
        assert_eq!(
            text,
            "name         top1\n---------  ------\na|b           9.5\nlong name  -12.25\n"
        );
        let md = t.markdown();
        assert!(md.contains("| a\\|b | 9.5 |"), "{md}");
        assert!(md.contains("| --- | ---: |"), "{md}");
    }
}
