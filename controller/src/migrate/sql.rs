//! The text of a migration file, read without a database: whether it asks
//! to run outside a transaction, its statements one by one as `psql`
//! sends them (PostgreSQL refuses `CREATE INDEX CONCURRENTLY` in a
//! multi-statement query, and an error without a position is placed by
//! the statement that failed), and the line of an error position
//! PostgreSQL reports.

/// The first line that makes a file run outside a transaction.
pub const NO_TRANSACTION: &str = "-- cutover:no-transaction";

/// Whether the file's first line is [`NO_TRANSACTION`] (trailing blanks
/// and a CR allowed).
pub fn wants_no_transaction(text: &str) -> bool {
    text.lines()
        .next()
        .is_some_and(|l| l.trim_end() == NO_TRANSACTION)
}

/// One statement of a file: its text and the number of characters before
/// it in the file (PostgreSQL counts positions in characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement<'a> {
    pub text: &'a str,
    pub chars_before: usize,
}

/// The statements of `text`, split as `psql` splits a file: at `;`
/// outside quotes, quoted identifiers, dollar quotes, comments and
/// parentheses, and outside the `BEGIN ATOMIC … END` body of a `CREATE
/// [OR REPLACE] FUNCTION|PROCEDURE` (where a `CASE … END` inside the body
/// nests); strings as with `standard_conforming_strings` on. Statements
/// holding only blanks and comments are left out. Lazy: a 16 MiB file of
/// `a;` is eight million statements, never all held at once.
pub fn statements(text: &str) -> Statements<'_> {
    Statements {
        text,
        start: 0,
        chars_before: 0,
    }
}

/// The statements of a text, one at a time ([`statements`]).
pub struct Statements<'a> {
    text: &'a str,
    start: usize,
    /// Characters before `start`, counted as `start` moves on: counting
    /// from the file's beginning for each statement would be quadratic.
    chars_before: usize,
}

impl<'a> Iterator for Statements<'a> {
    type Item = Statement<'a>;

    fn next(&mut self) -> Option<Statement<'a>> {
        while self.start < self.text.len() {
            let end = statement_end(self.text, self.start);
            let piece = &self.text[self.start..end];
            let chars_before = self.chars_before;
            self.chars_before += piece.chars().count();
            self.start = end;
            if !only_comments(piece) {
                return Some(Statement {
                    text: piece,
                    chars_before,
                });
            }
        }
        None
    }
}

/// Just past the `;` that ends the statement starting at `start`, or the
/// end of `text`.
fn statement_end(text: &str, start: usize) -> usize {
    let bytes = text.as_bytes();
    let mut i = start;
    let mut body = Body::default();
    while i < bytes.len() {
        match bytes[i] {
            b'\'' => {
                // `E'…'` only when the E is a token of its own: `time'…'`
                // is a typed literal, no backslash escapes.
                let escapes = i > 0
                    && matches!(bytes[i - 1], b'e' | b'E')
                    && (i < 2 || !in_identifier(bytes[i - 2]));
                i = skip_quoted(bytes, i, b'\'', escapes)
            }
            b'"' => i = skip_quoted(bytes, i, b'"', false),
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                i = bytes[i..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(bytes.len(), |p| i + p + 1)
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => i = skip_block_comment(bytes, i),
            // `$` inside an identifier (`a$b`) opens no dollar quote.
            b'$' if i > 0 && in_identifier(bytes[i - 1]) => i += 1,
            b'$' => i = skip_dollar(text, i),
            b'(' => {
                body.parens = body.parens.saturating_add(1);
                i += 1;
            }
            b')' => {
                body.parens = body.parens.saturating_sub(1);
                i += 1;
            }
            b';' if body.depth == 0 && body.parens == 0 => return i + 1,
            b if starts_word(b) => {
                let end = bytes[i..]
                    .iter()
                    .position(|&b| !in_identifier(b))
                    .map_or(bytes.len(), |p| i + p);
                body.word(&bytes[i..end]);
                i = end;
            }
            _ => i += 1,
        }
    }
    bytes.len()
}

/// Why a statement of `text` may not run as a migration, with its line:
/// transaction control (cutover runs each file in its own transaction
/// and records it there, or by the protocol outside one, which a file's
/// own `BEGIN` or `COMMIT` would break), `COPY` from or to the client,
/// and `psql` meta-commands (cutover sends SQL, not a `psql` script).
pub fn refusal(text: &str) -> Option<(usize, String)> {
    for stmt in statements(text) {
        let b = stmt.text.as_bytes();
        let at = leading(b, false);
        let rest = &stmt.text[at..];
        let line = first_line(text, &stmt).unwrap_or(1);
        if rest.starts_with('\\') {
            let cmd: String = rest
                .chars()
                .take_while(|c| !c.is_whitespace())
                .take(32)
                .collect();
            return Some((
                line,
                format!("`{cmd}` is a psql command, not SQL: cutover sends SQL alone"),
            ));
        }
        let mut words = rest
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| !w.is_empty())
            .map(str::to_ascii_uppercase);
        let first = words.next().unwrap_or_default();
        let second = words.next().unwrap_or_default();
        let controls = match first.as_str() {
            "BEGIN" | "START" | "COMMIT" | "END" | "ABORT" => true,
            "ROLLBACK" => second != "TO",
            "PREPARE" => second == "TRANSACTION",
            _ => false,
        };
        if controls {
            return Some((
                line,
                format!("`{first}` controls the transaction, and cutover runs each file in a transaction of its own (or, with `{NO_TRANSACTION}` as its first line, statement by statement) and records it there: take it out"),
            ));
        }
        if first == "COPY"
            && rest
                .to_ascii_uppercase()
                .split_whitespace()
                .any(|w| w.starts_with("STDIN") || w.starts_with("STDOUT"))
        {
            return Some((
                line,
                "`COPY … STDIN/STDOUT` needs a client to send or take the data: use INSERT, or COPY from a file on the database server".into(),
            ));
        }
    }
    None
}

/// Where the statement being split stands: its first words (to know a
/// `CREATE [OR REPLACE] FUNCTION|PROCEDURE`), its open parentheses, and
/// how deep in `BEGIN … END` it is.
#[derive(Default)]
struct Body {
    /// The first letters of its first four words, where each is one of
    /// `create`, `or`, `replace`, `function`, `procedure` (0 otherwise).
    head: [u8; 4],
    words: usize,
    parens: usize,
    depth: usize,
}

impl Body {
    fn word(&mut self, w: &[u8]) {
        let is = |k: &[u8]| w.eq_ignore_ascii_case(k);
        if self.words < self.head.len()
            && (is(b"create") || is(b"or") || is(b"replace") || is(b"function") || is(b"procedure"))
        {
            self.head[self.words] = w[0].to_ascii_lowercase();
        }
        self.words = self.words.saturating_add(1);
        let routine = matches!(
            self.head,
            [b'c', b'f' | b'p', ..] | [b'c', b'o', b'r', b'f' | b'p']
        );
        if !routine || self.parens > 0 {
            return;
        }
        if is(b"begin") || (is(b"case") && self.depth > 0) {
            self.depth = self.depth.saturating_add(1);
        } else if is(b"end") {
            self.depth = self.depth.saturating_sub(1);
        }
    }
}

/// Whether `b` can begin an unquoted identifier or key word.
fn starts_word(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || !b.is_ascii()
}

/// Whether `b` can be part of an unquoted identifier (non-ASCII bytes
/// can: PostgreSQL takes any of them as letters).
fn in_identifier(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || !b.is_ascii()
}

/// Past a quoted string or identifier opened at `i`; `''` (and `\'` in an
/// `E''` string) stays inside.
fn skip_quoted(b: &[u8], mut i: usize, quote: u8, backslashes: bool) -> usize {
    i += 1;
    while i < b.len() {
        if backslashes && b[i] == b'\\' {
            i += 2;
            continue;
        }
        if b[i] == quote {
            if b.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    b.len()
}

/// Past a `/* */` comment opened at `i` (they nest in PostgreSQL).
fn skip_block_comment(b: &[u8], mut i: usize) -> usize {
    let mut depth = 0usize;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            depth += 1;
            i += 2;
        } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            i += 1;
        }
    }
    b.len()
}

/// Past a `$tag$ … $tag$` string opened at `i`, or just past the `$` when
/// it opens none (a parameter such as `$1`).
fn skip_dollar(text: &str, i: usize) -> usize {
    let rest = &text[i + 1..];
    // A tag is a letter, `_` or any non-ASCII character, then those or
    // digits, as psql reads it.
    let tag_len = rest
        .bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_' || !b.is_ascii())
        .count();
    if rest.as_bytes().get(tag_len) != Some(&b'$')
        || rest.as_bytes().first().is_some_and(u8::is_ascii_digit)
    {
        return i + 1;
    }
    let tag = &text[i..i + tag_len + 2];
    let body = i + tag.len();
    text[body..]
        .find(tag)
        .map_or(text.len(), |p| body + p + tag.len())
}

/// Past the blanks and comments (and, with `semicolons`, the `;`) that
/// `b` starts with.
fn leading(b: &[u8], semicolons: bool) -> usize {
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            c if c.is_ascii_whitespace() || (semicolons && c == b';') => i += 1,
            b'-' if b.get(i + 1) == Some(&b'-') => {
                i = b[i..]
                    .iter()
                    .position(|&c| c == b'\n')
                    .map_or(b.len(), |p| i + p + 1)
            }
            b'/' if b.get(i + 1) == Some(&b'*') => i = skip_block_comment(b, i),
            _ => return i,
        }
    }
    b.len()
}

/// Whether `piece` holds nothing but blanks, `;` and comments.
fn only_comments(piece: &str) -> bool {
    leading(piece.as_bytes(), true) == piece.len()
}

/// The line in `text` where its statement `stmt` begins (past the blanks
/// and comments before it).
pub fn first_line(text: &str, stmt: &Statement<'_>) -> Option<usize> {
    let skip = leading(stmt.text.as_bytes(), false);
    let chars = stmt.text.get(..skip)?.chars().count();
    line_of(text, stmt.chars_before.checked_add(chars)?.checked_add(1)?)
}

/// The 1-based line of the 1-based character `position` of `text`, as
/// PostgreSQL reports an error's position; `None` past the end.
pub fn line_of(text: &str, position: usize) -> Option<usize> {
    let before = position.checked_sub(1)?;
    let mut line = 1usize;
    let mut seen = 0usize;
    for c in text.chars() {
        if seen == before {
            return Some(line);
        }
        if c == '\n' {
            line = line.checked_add(1)?;
        }
        seen += 1;
    }
    (seen == before).then_some(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(sql: &str) -> Vec<&str> {
        statements(sql).map(|s| s.text.trim()).collect()
    }

    #[test]
    fn statements_split_at_semicolons_outside_quotes_comments_and_dollar_quotes() {
        let sql = "-- cutover:no-transaction\nCREATE TABLE a (x text DEFAULT 'a;b');\n/* c; /* nested; */ still; */\nCREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql;\nSELECT \"we;ird\", E'it\\'s;', $1 FROM t -- trailing; comment\n;\n-- only a comment;\n";
        assert_eq!(
            texts(sql),
            [
                "-- cutover:no-transaction\nCREATE TABLE a (x text DEFAULT 'a;b');",
                "/* c; /* nested; */ still; */\nCREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql;",
                "SELECT \"we;ird\", E'it\\'s;', $1 FROM t -- trailing; comment\n;",
            ]
        );
        assert_eq!(texts("SELECT 1"), ["SELECT 1"]);
        assert!(texts("  \n-- nothing\n").is_empty());
    }

    #[test]
    fn dollars_inside_identifiers_and_typed_literals_open_nothing() {
        let sql = "SELECT a$b$c FROM t$;\nSELECT time'10:00', x FROM t;\nSELECT date'it\\';\n";
        assert_eq!(
            texts(sql),
            [
                "SELECT a$b$c FROM t$;",
                "SELECT time'10:00', x FROM t;",
                "SELECT date'it\\';",
            ]
        );
    }

    #[test]
    fn a_begin_atomic_body_and_a_case_are_one_statement() {
        let sql = "BEGIN;\nCREATE OR REPLACE FUNCTION f(x int) RETURNS int LANGUAGE sql\nBEGIN ATOMIC\n  SELECT CASE WHEN x > 0 THEN 1 ELSE 0 END;\n  SELECT 2;\nEND;\nCREATE TABLE t (begin int, \"end\" int);\nSELECT CASE WHEN true THEN 1 END;\nCOMMIT;\n";
        assert_eq!(
            texts(sql),
            [
                "BEGIN;",
                "CREATE OR REPLACE FUNCTION f(x int) RETURNS int LANGUAGE sql\nBEGIN ATOMIC\n  SELECT CASE WHEN x > 0 THEN 1 ELSE 0 END;\n  SELECT 2;\nEND;",
                "CREATE TABLE t (begin int, \"end\" int);",
                "SELECT CASE WHEN true THEN 1 END;",
                "COMMIT;",
            ]
        );
        assert_eq!(
            texts("CREATE PROCEDURE p() BEGIN ATOMIC INSERT INTO t VALUES (1); END;\nSELECT 1;"),
            [
                "CREATE PROCEDURE p() BEGIN ATOMIC INSERT INTO t VALUES (1); END;",
                "SELECT 1;"
            ]
        );
        // Key words in quotes and comments count for nothing.
        assert_eq!(
            texts("SELECT 'begin', \"case\" /* begin */ -- case\n;\nSELECT 1;"),
            [
                "SELECT 'begin', \"case\" /* begin */ -- case\n;",
                "SELECT 1;"
            ]
        );
    }

    #[test]
    fn semicolons_inside_parentheses_and_non_ascii_dollar_tags_end_nothing() {
        assert_eq!(
            texts("CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO a VALUES (new.x); INSERT INTO b VALUES (new.x));\nSELECT 1;"),
            [
                "CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO a VALUES (new.x); INSERT INTO b VALUES (new.x));",
                "SELECT 1;"
            ]
        );
        assert_eq!(
            texts("CREATE FUNCTION f() RETURNS void AS $função$ BEGIN PERFORM 1; END $função$ LANGUAGE plpgsql;\nSELECT $1;"),
            [
                "CREATE FUNCTION f() RETURNS void AS $função$ BEGIN PERFORM 1; END $função$ LANGUAGE plpgsql;",
                "SELECT $1;"
            ]
        );
    }

    #[test]
    fn transaction_control_copy_with_the_client_and_psql_commands_are_refused_with_their_line() {
        for (sql, line, says) in [
            (
                "CREATE TABLE a ();\nBEGIN;\nCREATE TABLE b ();\nCOMMIT;\n",
                2,
                "`BEGIN` controls the transaction",
            ),
            (
                "CREATE TABLE a ();\n-- done\ncommit;",
                3,
                "`COMMIT` controls",
            ),
            ("START TRANSACTION;", 1, "`START` controls"),
            ("SELECT 1;\nROLLBACK;", 2, "`ROLLBACK` controls"),
            ("PREPARE TRANSACTION 'x';", 1, "`PREPARE` controls"),
            ("END;", 1, "`END` controls"),
            ("COPY t FROM stdin;\n1\n\\.\n", 1, "COPY"),
            ("COPY t TO STDOUT;", 1, "COPY"),
            (
                "\\set ON_ERROR_STOP on\nSELECT 1;",
                1,
                "`\\set` is a psql command",
            ),
        ] {
            let (at, why) = refusal(sql).unwrap_or_else(|| panic!("{sql:?} passed"));
            assert_eq!(at, line, "{sql:?}");
            assert!(why.contains(says), "{sql:?}: {why}");
        }
        for fine in [
            "SAVEPOINT s; INSERT INTO t VALUES (1); ROLLBACK TO SAVEPOINT s; RELEASE s;",
            "PREPARE q AS SELECT 1; EXECUTE q;",
            "COPY t FROM '/srv/seed.csv';",
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END;",
            "SELECT 'BEGIN;', \"commit\"; -- COMMIT;",
        ] {
            assert_eq!(refusal(fine), None, "{fine:?}");
        }
    }

    #[test]
    fn a_large_file_splits_in_linear_time() {
        // 200,000 statements: quadratic counting would take minutes.
        let sql = "SELECT 'é';\n".repeat(200_000);
        let s: Vec<_> = statements(&sql).collect();
        assert_eq!(s.len(), 200_000);
        // Each statement but the first begins with the newline before it.
        let first = "SELECT 'é';".chars().count();
        assert_eq!(s[199_999].chars_before, first + 199_998 * (first + 1));
    }

    #[test]
    fn a_statement_knows_how_many_characters_come_before_it() {
        let sql = "SELECT 'é';\nSELECT 2;";
        let s: Vec<_> = statements(sql).collect();
        assert_eq!(s[1].chars_before, "SELECT 'é';".chars().count());
        // PostgreSQL's position 2 of the second statement ("S" of SELECT after the newline).
        assert_eq!(line_of(sql, s[1].chars_before + 2), Some(2));
    }

    #[test]
    fn a_statement_begins_past_the_comments_before_it() {
        let sql = "SELECT 1;\n-- why\n/* more\n */\n  INSERT INTO t VALUES (1);";
        let s: Vec<_> = statements(sql).collect();
        assert_eq!(first_line(sql, &s[0]), Some(1));
        assert_eq!(first_line(sql, &s[1]), Some(5));
    }

    #[test]
    fn line_of_counts_characters_not_bytes() {
        let sql = "é\né\nSELECT x";
        assert_eq!(line_of(sql, 1), Some(1));
        assert_eq!(line_of(sql, 3), Some(2));
        assert_eq!(line_of(sql, 5), Some(3));
        assert_eq!(line_of(sql, 0), None);
        assert_eq!(line_of(sql, 1000), None);
    }

    #[test]
    fn only_the_first_line_asks_for_no_transaction() {
        assert!(wants_no_transaction(
            "-- cutover:no-transaction\r\nCREATE INDEX CONCURRENTLY i ON t (x);"
        ));
        assert!(!wants_no_transaction("\n-- cutover:no-transaction\n"));
        assert!(!wants_no_transaction("-- cutover:no-transactions\n"));
    }
}
