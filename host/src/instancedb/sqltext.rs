//! The text of SQL statements, read the way both dialects read it: where a
//! string, quoted identifier, comment or PostgreSQL dollar-quoted body starts
//! and ends, so that code looking for parameters or statement ends skips them.

/// If a string, quoted identifier, comment or dollar-quoted body starts at
/// byte `i` of `sql`, the index just past its end (the end of `sql` when it is
/// not closed).
pub fn skip_quoted(sql: &str, i: usize) -> Option<usize> {
    let bytes = sql.as_bytes();
    match *bytes.get(i)? {
        b'\'' => {
            // E'…' strings take backslash escapes; others only ''.
            let escapes = i > 0 && matches!(bytes[i - 1], b'e' | b'E') && (i < 2 || !is_word(bytes[i - 2]));
            let mut j = i + 1;
            while j < bytes.len() {
                if escapes && bytes[j] == b'\\' {
                    j += 2;
                } else if bytes[j] == b'\'' {
                    if bytes.get(j + 1) == Some(&b'\'') {
                        j += 2;
                    } else {
                        return Some(j + 1);
                    }
                } else {
                    j += 1;
                }
            }
            Some(sql.len())
        }
        quote @ (b'"' | b'`') => {
            let mut j = i + 1;
            while j < bytes.len() {
                if bytes[j] == quote {
                    if bytes.get(j + 1) == Some(&quote) {
                        j += 2;
                        continue;
                    }
                    return Some(j + 1);
                }
                j += 1;
            }
            Some(sql.len())
        }
        b'-' if bytes.get(i + 1) == Some(&b'-') => {
            Some(bytes[i..].iter().position(|b| *b == b'\n').map(|p| i + p).unwrap_or(sql.len()))
        }
        b'/' if bytes.get(i + 1) == Some(&b'*') => Some(sql.len() - skip_block_comment(&sql[i..]).len()),
        // $tag$ … $tag$ (a tag never starts with a digit: $1 is a parameter).
        b'$' if i == 0 || !is_word(bytes[i - 1]) => {
            let end = bytes[i + 1..].iter().position(|b| !is_word(*b)).map(|p| i + 1 + p)?;
            if bytes[end] != b'$' || bytes.get(i + 1).is_some_and(u8::is_ascii_digit) {
                return None;
            }
            let tag = &sql[i..=end];
            Some(match sql[end + 1..].find(tag) {
                Some(at) => end + 1 + at + tag.len(),
                None => sql.len(),
            })
        }
        _ => None,
    }
}

/// What follows a block comment (they nest) at the start of `s`.
pub fn skip_block_comment(s: &str) -> &str {
    let bytes = s.as_bytes();
    let (mut depth, mut i) = (0usize, 0usize);
    while i + 1 < bytes.len() {
        match (bytes[i], bytes[i + 1]) {
            (b'/', b'*') => {
                depth += 1;
                i += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return &s[i..];
                }
            }
            _ => i += 1,
        }
    }
    ""
}

/// A byte that may be part of an identifier or keyword.
pub fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80
}

/// Split a script into statements at `;`, outside what [`skip_quoted`] skips
/// and outside SQLite trigger bodies (`CREATE TRIGGER … BEGIN …; …; END`).
/// Empty statements are dropped.
pub fn split_statements(sql: &str) -> Vec<String> {
    let bytes = sql.as_bytes();
    let mut out = Vec::new();
    let (mut start, mut i) = (0usize, 0usize);
    // BEGIN/CASE … END nesting inside a trigger, and the statement's first words.
    let mut depth = 0usize;
    let mut words: Vec<String> = Vec::new();
    while i < bytes.len() {
        if let Some(next) = skip_quoted(sql, i) {
            i = next;
            continue;
        }
        match bytes[i] {
            b';' if depth == 0 => {
                let statement = sql[start..i].trim();
                if !statement.is_empty() {
                    out.push(statement.to_string());
                }
                words.clear();
                i += 1;
                start = i;
            }
            b if is_word(b) && (i == 0 || !is_word(bytes[i - 1])) => {
                let begin = i;
                while i < bytes.len() && is_word(bytes[i]) {
                    i += 1;
                }
                let word = sql[begin..i].to_ascii_uppercase();
                let in_trigger = words.first().is_some_and(|w| w == "CREATE")
                    && (words.get(1).is_some_and(|w| w == "TRIGGER") || words.get(2).is_some_and(|w| w == "TRIGGER"));
                if in_trigger {
                    match word.as_str() {
                        "BEGIN" | "CASE" => depth += 1,
                        "END" => depth = depth.saturating_sub(1),
                        _ => {}
                    }
                }
                if words.len() < 3 {
                    words.push(word);
                }
            }
            _ => i += 1,
        }
    }
    let statement = sql[start.min(sql.len())..].trim();
    if !statement.is_empty() {
        out.push(statement.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::split_statements;

    #[test]
    fn statements_split_outside_quotes_comments_and_bodies() {
        let sql = "CREATE TABLE a (x TEXT DEFAULT ';'); -- a; comment\n\
                   /* b; /* nested; */ */ INSERT INTO a VALUES ('it''s; fine'), (E'\\'; still');\n\
                   CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql;\n\
                   CREATE TRIGGER t AFTER INSERT ON a BEGIN UPDATE a SET x = CASE WHEN 1 THEN 'y' END; DELETE FROM a; END;\n\
                   SELECT $1;;";
        let statements = split_statements(sql);
        assert_eq!(statements.len(), 5, "{statements:#?}");
        assert!(statements[1].ends_with("still')"), "{statements:#?}");
        assert!(statements[2].ends_with("LANGUAGE sql"));
        assert!(statements[3].starts_with("CREATE TRIGGER") && statements[3].ends_with("END"));
        assert_eq!(statements[4], "SELECT $1");
    }
}
