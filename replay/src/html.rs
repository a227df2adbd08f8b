//! HTML to readable text, and cutting text into reader segments.
//!
//! A tolerant single-pass scanner, not a DOM: pages from the web are often
//! broken, and the reader needs the prose, not the tree. Scripts, styles,
//! navigation, headers, footers, asides, forms and similar chrome are
//! dropped with their contents; headings become `#` lines, list items
//! `- ` lines, table cells are joined with ` | `, and entities are decoded.

/// Elements whose whole content is dropped.
const DROP: &[&str] = &[
    "script", "style", "nav", "header", "footer", "aside", "noscript", "form", "svg", "iframe", "template", "button",
    "select", "canvas", "head",
];

/// Elements that end a block (a line break before and after).
const BLOCK: &[&str] = &[
    "p",
    "div",
    "section",
    "article",
    "main",
    "br",
    "tr",
    "table",
    "ul",
    "ol",
    "dl",
    "dt",
    "dd",
    "blockquote",
    "pre",
    "hr",
    "figure",
    "figcaption",
    "body",
    "html",
];

fn decode_entity(name: &str) -> Option<char> {
    match name {
        "amp" => Some('&'),
        "lt" => Some('<'),
        "gt" => Some('>'),
        "quot" => Some('"'),
        "apos" => Some('\''),
        "nbsp" => Some(' '),
        "mdash" => Some('—'),
        "ndash" => Some('–'),
        "hellip" => Some('…'),
        "copy" => Some('©'),
        "rsquo" => Some('’'),
        "lsquo" => Some('‘'),
        "rdquo" => Some('”'),
        "ldquo" => Some('“'),
        _ => {
            let num = name.strip_prefix('#')?;
            let code = match num.strip_prefix(['x', 'X']) {
                Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                None => num.parse().ok()?,
            };
            char::from_u32(code)
        }
    }
}

/// Appends text with entities decoded and whitespace collapsed.
fn push_text(out: &mut String, text: &str) {
    let mut rest = text;
    while !rest.is_empty() {
        let (chunk, next) = match rest.find('&') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        for c in chunk.chars() {
            push_char(out, c);
        }
        if next.is_empty() {
            break;
        }
        // An entity is `&name;` with a short name; anything else is a plain `&`.
        match next[1..].find(';').filter(|&j| j <= 10) {
            Some(j) => match decode_entity(&next[1..1 + j]) {
                Some(c) => {
                    push_char(out, c);
                    rest = &next[2 + j..];
                }
                None => {
                    push_char(out, '&');
                    rest = &next[1..];
                }
            },
            None => {
                push_char(out, '&');
                rest = &next[1..];
            }
        }
    }
}

fn push_char(out: &mut String, c: char) {
    if c.is_whitespace() {
        if !out.is_empty() && !out.ends_with([' ', '\n']) {
            out.push(' ');
        }
    } else {
        out.push(c);
    }
}

/// Ends the current line.
fn newline(out: &mut String) {
    while out.ends_with(' ') {
        out.pop();
    }
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
}

/// Ends the current paragraph: a blank line follows.
fn blank_line(out: &mut String) {
    newline(out);
    if !out.is_empty() && !out.ends_with("\n\n") {
        out.push('\n');
    }
}

/// Converts an HTML page to Markdown-like text (see the module docs).
pub fn to_text(html: &str) -> String {
    let mut out = String::with_capacity(html.len() / 3);
    let mut rest = html;
    // The element whose content is being dropped, and how deep inside it.
    let mut dropping: Option<(&'static str, usize)> = None;
    while let Some(lt) = rest.find('<') {
        if dropping.is_none() {
            push_text(&mut out, &rest[..lt]);
        }
        let tag_src = &rest[lt..];
        // `<` not followed by a tag-name character is text ("a < b").
        if !tag_src[1..].starts_with(|c: char| c.is_ascii_alphabetic() || c == '/' || c == '!' || c == '?') {
            if dropping.is_none() {
                push_char(&mut out, '<');
            }
            rest = &tag_src[1..];
            continue;
        }
        if tag_src.starts_with("<!--") {
            rest = tag_src.find("-->").map_or("", |e| &tag_src[e + 3..]);
            continue;
        }
        let Some(gt) = tag_src.find('>') else {
            // A broken tag at the end: keep it as text.
            if dropping.is_none() {
                push_text(&mut out, tag_src);
            }
            rest = "";
            break;
        };
        let inner = &tag_src[1..gt];
        rest = &tag_src[gt + 1..];
        let closing = inner.starts_with('/');
        // The tag name, lowercased into a small buffer (names are short;
        // longer ones match nothing we act on).
        let raw = inner.trim_start_matches('/').as_bytes();
        let len = raw.iter().take_while(|b| b.is_ascii_alphanumeric()).count();
        let mut buf = [0u8; 12];
        let name = if len <= buf.len() {
            for (d, s) in buf.iter_mut().zip(&raw[..len]) {
                *d = s.to_ascii_lowercase();
            }
            std::str::from_utf8(&buf[..len]).unwrap_or("")
        } else {
            "x-long"
        };
        if name.is_empty() {
            continue; // `<!DOCTYPE …>`, `<?xml …>` and stray `<`-like noise.
        }
        let self_closing = inner.ends_with('/');
        if let Some((dropped, depth)) = &mut dropping {
            if *dropped == name {
                if closing {
                    *depth -= 1;
                    if *depth == 0 {
                        dropping = None;
                    }
                } else if !self_closing {
                    *depth += 1;
                }
            }
            continue;
        }
        if let Some(&dropped) = DROP.iter().find(|d| **d == name) {
            if !closing && !self_closing {
                dropping = Some((dropped, 1));
            }
            continue;
        }
        match name {
            "h1" | "h2" | "h3" | "h4" | "h5" | "h6" => {
                blank_line(&mut out);
                if !closing {
                    let level = name[1..].parse::<usize>().unwrap_or(1);
                    out.push_str(&"#".repeat(level));
                    out.push(' ');
                }
            }
            "li" => {
                newline(&mut out);
                if !closing {
                    out.push_str("- ");
                }
            }
            "td" | "th" if closing => out.push_str(" | "),
            "p" | "table" | "ul" | "ol" | "dl" | "blockquote" | "pre" | "figure" => blank_line(&mut out),
            _ if BLOCK.contains(&name) => newline(&mut out),
            _ => {}
        }
    }
    if dropping.is_none() {
        push_text(&mut out, rest);
    }
    // Tidy: trim line ends, at most one blank line in a row.
    let mut tidy = String::with_capacity(out.len());
    let mut blank = true;
    for line in out.lines() {
        let line = line.trim().trim_end_matches('|').trim_end();
        if line.is_empty() {
            if !blank {
                tidy.push('\n');
            }
            blank = true;
        } else {
            tidy.push_str(line);
            tidy.push('\n');
            blank = false;
        }
    }
    tidy.trim_end().to_string()
}

/// Default length of a reader segment in characters (the paper's).
pub const SEGMENT_CHARS: usize = 40_960;

/// Cuts `text` into segments of at most `max_chars` characters, cutting at
/// the last whitespace before the limit (or at the limit when a segment has
/// no whitespace). Concatenating the segments gives back the text.
pub fn segment(text: &str, max_chars: usize) -> Vec<&str> {
    let max_chars = max_chars.max(1);
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let Some((limit, _)) = rest.char_indices().nth(max_chars) else {
            out.push(rest);
            break;
        };
        let cut = rest[..limit]
            .rfind(char::is_whitespace)
            .map(|i| i + rest[i..].chars().next().map_or(1, char::len_utf8))
            .filter(|&i| i > 0)
            .unwrap_or(limit);
        out.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chrome_is_dropped_and_structure_kept() {
        let html = r#"<!DOCTYPE html><html><head><title>T</title><style>p{color:red}</style></head>
<body><header><nav><a href="/">Home</a> <a href="/x">Random</a></nav></header>
<script>var x = "<p>not text</p>";</script>
<main><h1>Zest &amp; Co</h1><p>Founded by <b>Ada&nbsp;Lind</b> in 2011.</p>
<h2>Products</h2><ul><li>Phones</li><li>Tablets &#8212; since 2015</li></ul>
<table><tr><td>Founded</td><td>2011</td></tr></table>
<!-- a comment <p>hidden</p> -->
<aside class="ad">Buy now!</aside><div><div>Nested <span>text</span></div></div></main>
<footer>Terms of use</footer></body></html>"#;
        expect_test::expect![[r#"
            # Zest & Co

            Founded by Ada Lind in 2011.

            ## Products

            - Phones
            - Tablets — since 2015

            Founded | 2011

            Nested text"#]]
        .assert_eq(&to_text(html));
    }

    #[test]
    fn broken_html_never_panics_and_keeps_the_text() {
        let cases = [
            ("<p>unclosed <b>bold", "unclosed bold"),
            ("a < b and c > d", "a < b and c > d"),
            ("<script>never closed", ""),
            ("&amp", "&amp"),
            ("&#xZZ; &unknown; x &#65;", "&#xZZ; &unknown; x A"),
            ("<", "<"),
            ("<p", "<p"),
            ("</div></div>text", "text"),
            ("<div><nav><nav>x</nav>still nav</nav>after</div>", "after"),
        ];
        for (html, text) in cases {
            assert_eq!(to_text(html), text, "{html}");
        }
    }

    #[test]
    fn segments_cut_on_whitespace_and_rejoin() {
        let text = "alpha beta gamma delta epsilon";
        let segs = segment(text, 12);
        assert_eq!(segs, vec!["alpha beta ", "gamma delta ", "epsilon"]);
        assert_eq!(segs.concat(), text);
        assert_eq!(segment("abcdefghij", 4), vec!["abcd", "efgh", "ij"]);
        assert_eq!(segment("", 10), Vec::<&str>::new());
        let long = "wörd ".repeat(30_000);
        let segs = segment(&long, SEGMENT_CHARS);
        assert_eq!(segs.concat(), long);
        assert!(segs.iter().all(|s| s.chars().count() <= SEGMENT_CHARS));
        assert_eq!(segs.len(), 4);
    }
}
