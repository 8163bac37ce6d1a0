//! The spec's table of which channel carries each error code (ORCH-2026),
//! read from `specs/orchestrator-spec.md` so the conformance check and the
//! pact coverage gate enforce the table as written.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};

/// The heading of the spec section that holds the table.
pub const HEADING: &str = "Which channel carries each code";

/// Where one code may reach a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Channels {
    /// The body of a non-2xx answer.
    pub http: bool,
    /// A stream's terminal `error` event (and the `error` of the task's status).
    pub sse: bool,
}

/// One way a code reaches a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Http,
    Sse,
}

impl std::fmt::Display for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Http => "HTTP",
            Self::Sse => "SSE",
        })
    }
}

impl Channels {
    pub fn allows(self, channel: Channel) -> bool {
        match channel {
            Channel::Http => self.http,
            Channel::Sse => self.sse,
        }
    }
}

/// The table: code → channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeChannels(BTreeMap<String, Channels>);

impl CodeChannels {
    /// The table of this repository's spec.
    pub fn load(root: &Path) -> Result<Self> {
        let path = root.join("specs/orchestrator-spec.md");
        let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
        Self::parse(&text).with_context(|| path.display().to_string())
    }

    /// The rows `| \`CODE\` | yes | no |` of the section titled [`HEADING`].
    pub fn parse(spec: &str) -> Result<Self> {
        let Some(start) = spec
            .lines()
            .position(|l| l.starts_with('#') && l.contains(HEADING))
        else {
            bail!("no section titled {HEADING:?}");
        };
        let mut codes = BTreeMap::new();
        for line in spec
            .lines()
            .skip(start + 1)
            .take_while(|l| !l.starts_with('#'))
        {
            let cells: Vec<&str> = line
                .trim()
                .trim_matches('|')
                .split('|')
                .map(str::trim)
                .collect();
            let [code, http, sse] = cells[..] else {
                continue;
            };
            let Some(code) = code.strip_prefix('`').and_then(|c| c.strip_suffix('`')) else {
                continue;
            };
            let mark = |cell: &str| match cell {
                "yes" => Ok(true),
                "no" => Ok(false),
                other => bail!("{code}: {other:?} is neither yes nor no"),
            };
            let channels = Channels {
                http: mark(http)?,
                sse: mark(sse)?,
            };
            if codes.insert(code.to_owned(), channels).is_some() {
                bail!("{code} appears twice in the table");
            }
        }
        if codes.is_empty() {
            bail!("the section {HEADING:?} has no table rows");
        }
        Ok(Self(codes))
    }

    pub fn get(&self, code: &str) -> Option<Channels> {
        self.0.get(code).copied()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, Channels)> {
        self.0.iter().map(|(code, c)| (code.as_str(), *c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_rows_of_its_section_only() {
        let spec = "## 2\n| `A` | yes | yes |\n### 2.4 Which channel carries each code\n\n\
                    | code | HTTP | SSE |\n|---|---|---|\n| `NOT_FOUND` | yes | no |\n\
                    | `WORKER_RESET` | no | yes |\n\n## 3\n| `B` | no | no |\n";
        let table = CodeChannels::parse(spec).unwrap();
        assert_eq!(table.iter().count(), 2);
        assert_eq!(
            table.get("NOT_FOUND"),
            Some(Channels {
                http: true,
                sse: false
            })
        );
        assert_eq!(
            table.get("WORKER_RESET"),
            Some(Channels {
                http: false,
                sse: true
            })
        );
        assert_eq!(table.get("A"), None);
    }

    #[test]
    fn a_bad_mark_or_a_missing_table_is_an_error() {
        let bad = "### Which channel carries each code\n| `X` | maybe | no |\n";
        assert!(
            CodeChannels::parse(bad)
                .unwrap_err()
                .to_string()
                .contains("maybe")
        );
        assert!(CodeChannels::parse("# nothing\n").is_err());
    }

    #[test]
    fn the_committed_spec_lists_every_code_of_the_contract() {
        let table = CodeChannels::load(&crate::repo_root()).unwrap();
        for code in contracts_codes() {
            let channels = table
                .get(&code)
                .unwrap_or_else(|| panic!("{code} is not in the table"));
            assert!(channels.http || channels.sse, "{code} reaches no channel");
        }
    }

    fn contracts_codes() -> Vec<String> {
        let doc: serde_json::Value = serde_yaml::from_str(
            &std::fs::read_to_string(crate::repo_root().join("contracts/openapi/data.yaml"))
                .unwrap(),
        )
        .unwrap();
        doc["components"]["schemas"]["ErrorCode"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_owned())
            .collect()
    }
}
