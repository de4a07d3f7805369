//! Text from outside (servers, input files) made safe to show on a terminal.

use std::borrow::Cow;

/// `text` safe to print on a terminal: control characters (escape sequences that could move
/// the cursor, retitle the window or hide text) and bidirectional overrides are shown escaped,
/// e.g. `\u{1b}`, never sent to the terminal. Servers choose error messages and request ids.
pub fn printable(text: &str) -> Cow<'_, str> {
    let unsafe_char = |c: char| {
        c.is_control()
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .map(|c| {
                if unsafe_char(c) {
                    c.escape_unicode().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn control_characters_and_bidi_overrides_are_shown_escaped() {
        assert_eq!(printable("plain text"), "plain text");
        assert_eq!(printable("red \u{1b}[31mtext"), "red \\u{1b}[31mtext");
        assert_eq!(printable("a\u{202e}b"), "a\\u{202e}b");
        assert_eq!(printable("tab\there"), "tab\\u{9}here");
    }
}
