//! Parsing TOML documents (manifests, signature files, config files) with
//! errors an operator can act on: `line 7, column 1: unknown field ...`.

use serde::de::DeserializeOwned;

pub fn parse<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    toml::from_str(text).map_err(|e| describe(text, &e))
}

fn describe(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

#[cfg(test)]
mod tests {
    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Doc {
        name: String,
    }

    #[test]
    fn names_line_column_and_key() {
        let e = super::parse::<Doc>("name = \"x\"\n  nmae = 3\n").unwrap_err();
        assert!(
            e.starts_with("line 2, column 3: unknown field `nmae`"),
            "{e}"
        );
    }
}
