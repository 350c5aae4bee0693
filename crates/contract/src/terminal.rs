//! Terminal-safe display of strings a job supplied (or could have influenced).
//!
//! Human-readable output (`audit show`, policy messages in the job log, the built-in steps'
//! tables and progress lines) prints values a job controls: its requested devstage, object
//! keys, file names, a P3 client's output. Printed raw, a newline forges an extra row, and an
//! escape sequence reaches the operator's terminal (clearing it, retitling it, hiding text).
//! [`escape`] turns every such character into a visible escape so a value always stays on its
//! own line and shows what it really contains. Machine-readable output (JSON) is never passed
//! through it: JSON has its own escaping, and must stay byte-identical.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Whether `c` must never reach a terminal unescaped: C0 controls (including `\n`, `\r`,
/// `\t` and ESC), DEL, C1 controls (U+0080..U+009F, among them the 8-bit CSI U+009B), and the
/// invisible format characters that can make a line look like something it is not: zero-width
/// spaces and joiners, bidi marks, embeddings, overrides and isolates, line and paragraph
/// separators, the BOM, interlinear annotations and tag characters.
pub fn is_unsafe(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{1f}'            // C0 controls
        | '\u{7f}'..='\u{9f}'         // DEL, C1 controls
        | '\u{ad}'                    // soft hyphen (invisible)
        | '\u{61c}'                   // Arabic letter mark (bidi)
        | '\u{180e}'                  // Mongolian vowel separator (invisible)
        | '\u{200b}'..='\u{200f}'     // zero-width space/non-joiner/joiner, LRM, RLM
        | '\u{2028}'..='\u{202e}'     // line/paragraph separators; bidi embeddings, overrides
        | '\u{2060}'..='\u{206f}'     // word joiner, invisible operators, bidi isolates
        | '\u{feff}'                  // BOM / zero-width no-break space
        | '\u{fff9}'..='\u{fffb}'     // interlinear annotation controls
        | '\u{e0000}'..='\u{e007f}' // tag characters
    )
}

/// `s` made safe to print on one line of a terminal.
///
/// Every [`is_unsafe`] character becomes a visible escape: `\n`, `\r`, `\t`, `\xHH` for the
/// other C0 controls and DEL (`\x1b` for ESC), and `\u{H..}` for everything else (`\u{9b}`,
/// `\u{202e}`). A backslash becomes `\\`, so a job cannot forge an escape: `\n` in the output
/// always stands for a newline in the value. Everything else, including non-ASCII text, is
/// kept as is. Borrows `s` when nothing needs escaping.
pub fn escape(s: &str) -> Cow<'_, str> {
    let Some(first) = s.find(|c| c == '\\' || is_unsafe(c)) else {
        return Cow::Borrowed(s);
    };
    let mut out = String::with_capacity(s.len() + 8);
    out.push_str(&s[..first]);
    for c in s[first..].chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{0}'..='\u{1f}' | '\u{7f}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if is_unsafe(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Longest cell, in characters, that a [`table`] shows whole; the rest is counted, not shown.
/// comfy-table keeps column widths in a `u16` and splits wider content onto extra lines even
/// with wrapping disabled; at most two columns per character keeps every cell far below that,
/// so a row stays one line however long a job made its fields.
pub const MAX_CELL_CHARS: usize = 16 * 1024;

/// `text`, cut to `max_chars` characters with a note of how much was left out: a table cell
/// (at [`MAX_CELL_CHARS`]), or a job's own text in an audit record.
pub fn clip(text: String, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        None => text,
        Some((at, _)) => {
            let more = text[at..].chars().count();
            format!("{}… ({more} more characters)", &text[..at])
        }
    }
}

/// The one table style of the human-readable outputs (`audit show`, step result tables): a
/// header, then one line per row, columns left-aligned and separated by two spaces, no borders,
/// never wrapped, trailing spaces trimmed, so every row stays one grep-able line. Cells must
/// already be [`escape`]d; overlong ones are clipped.
pub fn table<const N: usize>(
    header: [&str; N],
    rows: impl IntoIterator<Item = [String; N]>,
) -> String {
    use comfy_table::{ContentArrangement, Table, presets};
    let mut t = Table::new();
    t.load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header)
        .add_rows(
            rows.into_iter()
                .map(|row| row.map(|cell| clip(cell, MAX_CELL_CHARS))),
        );
    for column in t.column_iter_mut() {
        column.set_padding((0, 2));
    }
    t.trim_fmt() + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_table() {
        let cases: &[(&str, &str)] = &[
            ("", ""),
            ("client_dev", "client_dev"),
            (
                "grp/app main (protected) → ü 日本",
                "grp/app main (protected) → ü 日本",
            ),
            ("a\nb", r"a\nb"),
            ("a\r\nb", r"a\r\nb"),
            ("tab\there", r"tab\there"),
            ("\x1b[2J\x1b[31mred", r"\x1b[2J\x1b[31mred"),
            ("\x00\x07\x08\x1f\x7f", r"\x00\x07\x08\x1f\x7f"),
            (
                "\u{80}\u{85}\u{9b}31m\u{9f}",
                r"\u{80}\u{85}\u{9b}31m\u{9f}",
            ),
            ("evil\u{202e}txt.exe", r"evil\u{202e}txt.exe"),
            (
                "\u{202a}\u{202b}\u{202c}\u{202d}",
                r"\u{202a}\u{202b}\u{202c}\u{202d}",
            ),
            (
                "\u{2066}\u{2067}\u{2068}\u{2069}",
                r"\u{2066}\u{2067}\u{2068}\u{2069}",
            ),
            (
                "z\u{200b}w\u{200c}\u{200d}\u{200e}\u{200f}",
                r"z\u{200b}w\u{200c}\u{200d}\u{200e}\u{200f}",
            ),
            ("l\u{2028}p\u{2029}", r"l\u{2028}p\u{2029}"),
            ("\u{feff}bom", r"\u{feff}bom"),
            ("\u{e0041}tag", r"\u{e0041}tag"),
            // A backslash is doubled, so a literal `\n` cannot pass for an escaped newline.
            (r"a\nb", r"a\\nb"),
            (r"C:\x1b", r"C:\\x1b"),
            ("\\\n", r"\\\n"),
            ("ends in \\", r"ends in \\"),
        ];
        for (input, expected) in cases {
            assert_eq!(escape(input), *expected, "input {input:?}");
        }
    }

    #[test]
    fn nothing_to_escape_borrows() {
        for s in ["", "client_dev", "s3://bkt/dir/file name.txt", "日本語 ü →"] {
            assert!(matches!(escape(s), Cow::Borrowed(b) if b == s), "{s:?}");
        }
        assert!(matches!(escape("a\nb"), Cow::Owned(_)));
        assert!(matches!(escape("a\\b"), Cow::Owned(_)));
    }

    #[test]
    fn the_forged_audit_row_stays_on_one_line() {
        let evil = "client_dev\n2026-01-01 00:00:00  999  grant  granted  client_prod\x1b[2J";
        let shown = escape(evil);
        assert_eq!(shown.lines().count(), 1);
        assert_eq!(
            shown,
            r"client_dev\n2026-01-01 00:00:00  999  grant  granted  client_prod\x1b[2J"
        );
    }

    /// Every Unicode scalar value: escaping leaves no control character and no invisible
    /// format character, escapes exactly the unsafe ones (and `\\`), and keeps the rest.
    #[test]
    fn output_never_contains_a_control_for_any_char() {
        let mut escaped_count = 0u32;
        for c in (0..=0x10FFFFu32).filter_map(char::from_u32) {
            let input = format!("a{c}b");
            let out = escape(&input);
            for o in out.chars() {
                assert!(
                    !(o < '\u{20}' || ('\u{7f}'..='\u{9f}').contains(&o)),
                    "U+{:04X} left control U+{:04X} in {out:?}",
                    c as u32,
                    o as u32
                );
                assert!(!is_unsafe(o), "U+{:04X} left {o:?} in {out:?}", c as u32);
            }
            if is_unsafe(c) || c == '\\' {
                escaped_count += 1;
                assert!(out.starts_with("a\\") && out.ends_with('b'), "{out:?}");
                assert!(out.len() > input.len(), "{out:?}");
            } else {
                assert_eq!(out, input);
            }
        }
        // 32 C0 + DEL + 32 C1 + the format characters + backslash: a sanity bound, so a
        // typo in a range cannot silently escape half of Unicode.
        assert!((65..400).contains(&escaped_count), "{escaped_count}");
    }

    /// `policy` quotes job-supplied values with `{:?}`; Rust's Debug escaping must cover every
    /// character this module considers unsafe, or those messages would need [`escape`] too.
    #[test]
    fn debug_quoting_escapes_every_unsafe_char() {
        for c in (0..=0x10FFFFu32)
            .filter_map(char::from_u32)
            .filter(|c| is_unsafe(*c))
        {
            let quoted = format!("{:?}", format!("x{c}y"));
            assert!(
                !quoted.chars().any(is_unsafe),
                "U+{:04X} survives Debug: {quoted:?}",
                c as u32
            );
        }
    }
}
