//! Bounding text that came from outside (plugins, API callers) before the
//! host logs it, traces it, or puts it into a header or an error.

/// `text` with control characters escaped and cut to at most `max` bytes
/// (on a character boundary, ending in `...` when cut): what the host
/// logs, traces or puts in a header of anything a plugin or a caller wrote.
pub(crate) fn escape_bounded(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    for c in text.chars() {
        if c.is_control() {
            use std::fmt::Write;
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        } else {
            out.push(c);
        }
        if out.len() > max {
            while out.len() > max.saturating_sub(3) {
                out.pop();
            }
            out.push_str("...");
            break;
        }
    }
    out
}

/// The nesting depth of JSON text (brackets outside strings), without
/// parsing it: checked before details are parsed.
pub(crate) fn json_depth(text: &str) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for b in text.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_keeps_text_on_one_line_and_bounded() {
        assert_eq!(escape_bounded("a\nb\u{1b}[31m", 100), "a\\u{a}b\\u{1b}[31m");
        let cut = escape_bounded(&"é".repeat(100), 11);
        assert!(cut.len() <= 11 && cut.ends_with("..."), "{cut}");
        assert_eq!(escape_bounded("short", 100), "short");
    }

    #[test]
    fn depth_ignores_brackets_in_strings() {
        assert_eq!(json_depth(r#"{"a": [1, {"b": "[[[["}]}"#), 3);
        assert_eq!(json_depth("42"), 0);
        assert_eq!(json_depth(&"[".repeat(1000)), 1000);
    }
}
