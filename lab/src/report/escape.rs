//! Escaping for the HTML and XML reports. Everything that comes from a run
//! (names, reasons, diffs, console lines) goes through [`text`]: console
//! output carries ANSI escapes and other control characters that XML 1.0
//! forbids outright, so they are shown as their Unicode control pictures.

/// `s` safe as element content and as a quoted attribute value, in HTML and XML.
pub fn text(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\t' | '\n' => out.push(c),
            // CR would be normalised away by XML parsers; show it.
            '\r' => out.push('\u{240D}'),
            c if (c as u32) < 0x20 => out.push(char::from_u32(0x2400 + c as u32).unwrap_or('\u{FFFD}')),
            '\u{7F}' => out.push('\u{2421}'),
            // Not characters in XML 1.0.
            '\u{FFFE}' | '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// `s` as a quoted attribute value where newlines must survive (XML
/// normalises literal newlines in attributes to spaces).
pub fn attr(s: &str) -> String {
    text(s).replace('\n', "&#10;").replace('\t', "&#9;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_and_quotes_are_escaped() {
        assert_eq!(text(r#"<a href="x">&'</a>"#), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;");
    }

    #[test]
    fn control_characters_become_visible_and_xml_legal() {
        assert_eq!(text("\x1b[31mred\x1b[0m\r\n\0"), "\u{241B}[31mred\u{241B}[0m\u{240D}\n\u{2400}");
        assert_eq!(attr("a\nb\tc"), "a&#10;b&#9;c");
    }
}
