//! How commands print for people or for scripts (`--json`): one JSON document on stdout, the JSON
//! error object, and whether a live progress line may be drawn. Commands build a typed report
//! (`serde::Serialize`) and a function that prints it for people; [`Format::render`] picks one.
//! Field names of every report are a contract, documented in README's "Command line".

use serde::Serialize;

use crate::config::Located;

/// Text for people, or one JSON document for scripts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Human,
    Json,
}

impl Format {
    /// `--json` given or not.
    pub fn from_flag(json: bool) -> Self {
        match json {
            true => Self::Json,
            false => Self::Human,
        }
    }

    /// Whether a progress line may be drawn: never under `--json` (a script reads the result;
    /// stderr is left for errors); [`crate::progress`] also wants stderr to be a terminal.
    pub fn allows_progress(self) -> bool {
        self == Self::Human
    }

    /// `report` as `human` prints it, or as pretty JSON; either ends with a newline.
    pub fn render<T: Serialize>(self, report: &T, human: impl FnOnce(&T) -> String) -> String {
        match self {
            Self::Human => human(report),
            Self::Json => json(report),
        }
    }
}

/// `value` as pretty JSON and a newline.
pub fn json<T: Serialize>(value: &T) -> String {
    // Our reports are plain structs of strings and numbers: serializing cannot fail.
    let mut text = serde_json::to_string_pretty(value).expect("reports serialize");
    text.push('\n');
    text
}

/// What a command prints on stdout under `--json` when it fails (the message also goes to
/// stderr): `{"error": {"message": "...", "problems": [{"file", "line", "message"}]}}`;
/// `problems` lists the configuration's problems when that is what failed, else is empty.
#[derive(Debug, Serialize)]
pub struct ErrorDoc {
    pub error: ErrorBody,
}

#[derive(Debug, Serialize)]
pub struct ErrorBody {
    pub message: String,
    pub problems: Vec<Located>,
}

/// The JSON error document for `message` (and the configuration's `problems`, if any).
pub fn error_json(message: impl Into<String>, problems: Vec<Located>) -> String {
    json(&ErrorDoc {
        error: ErrorBody {
            message: message.into(),
            problems,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Report {
        n: u32,
    }

    #[test]
    fn renders_for_people_or_as_one_json_document() {
        let human = |r: &Report| format!("{} things\n", r.n);
        assert_eq!(Format::Human.render(&Report { n: 2 }, human), "2 things\n");
        let text = Format::Json.render(&Report { n: 2 }, human);
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["n"], 2);
        assert!(text.ends_with("}\n"));
        assert!(Format::Human.allows_progress() && !Format::Json.allows_progress());
    }

    #[test]
    fn errors_are_an_object_with_message_and_problems() {
        let problems = vec![Located {
            file: "site.toml".into(),
            line: Some(3),
            message: "bad".into(),
        }];
        let value: serde_json::Value =
            serde_json::from_str(&error_json("config", problems)).unwrap();
        assert_eq!(value["error"]["message"], "config");
        assert_eq!(value["error"]["problems"][0]["line"], 3);
        let value: serde_json::Value = serde_json::from_str(&error_json("x", vec![])).unwrap();
        assert_eq!(value["error"]["problems"], serde_json::json!([]));
    }
}
