//! Printing: tables for people, JSON for scripts.

use std::io::Write;

use comfy_table::presets::UTF8_BORDERS_ONLY;
use comfy_table::{ContentArrangement, Table};
use serde_json::Value;

/// Print a line to stdout; a closed pipe (`stratus server list | head`) ends the program quietly.
pub fn emit_line(text: &str) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{text}")
        && e.kind() == std::io::ErrorKind::BrokenPipe
    {
        std::process::exit(0);
    }
}

macro_rules! emit {
    ($($arg:tt)*) => { emit_line(&format!($($arg)*)) };
}

/// A column: header and where its value is in each item (a JSON pointer).
pub type Column = (&'static str, &'static str);

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(" "),
        other => other.to_string(),
    }
}

pub fn table(items: &[Value], columns: &[Column]) -> String {
    let mut t = Table::new();
    t.load_style(UTF8_BORDERS_ONLY)
        .set_content_arrangement(ContentArrangement::Dynamic);
    t.set_header(columns.iter().map(|(h, _)| *h));
    for item in items {
        t.add_row(
            columns
                .iter()
                .map(|(_, p)| cell(item.pointer(p).unwrap_or(&Value::Null))),
        );
    }
    t.to_string()
}

/// Print a list: JSON array, or a table (with a note when empty).
pub fn list(json: bool, items: &[Value], columns: &[Column]) {
    if json {
        emit!("{}", serde_json::to_string_pretty(items).unwrap_or_default());
    } else if items.is_empty() {
        emit!("(none)");
    } else {
        emit!("{}", table(items, columns));
    }
}

/// Print one resource: JSON, or `field: value` lines (nested values as compact JSON).
pub fn show(json: bool, v: &Value) {
    if json {
        emit!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        return;
    }
    match v {
        Value::Object(map) => {
            let width = map.keys().map(String::len).max().unwrap_or(0);
            for (k, val) in map {
                let text = match val {
                    Value::String(s) if s.contains('\n') => format!("|\n{}", indent(s)),
                    Value::String(s) => s.clone(),
                    Value::Null => "-".into(),
                    other => other.to_string(),
                };
                emit!("{k:>width$}: {text}");
            }
        }
        other => emit!("{other}"),
    }
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
}
