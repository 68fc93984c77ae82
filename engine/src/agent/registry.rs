//! The agent registry: agent name to endpoint, loaded from an agents file:
//!
//! ```yaml
//! agents:
//!   triage: { url: "http://127.0.0.1:9101" }   # a running agent
//!   notify: { example: { delay_ms: 20 } }        # the built-in example agent, started in-process
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::example::Behaviour;

#[derive(Clone, Debug, PartialEq)]
pub enum AgentEndpoint {
    /// `host:port` of a running agent.
    Address(String),
    /// Start the example agent in-process on a free loopback port.
    Example(Behaviour),
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct AgentRegistry {
    agents: BTreeMap<String, AgentEndpoint>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentsFile {
    agents: BTreeMap<String, AgentSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentSpec {
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    example: Option<Behaviour>,
}

impl AgentRegistry {
    pub fn new() -> AgentRegistry {
        AgentRegistry::default()
    }

    pub fn insert(&mut self, name: impl Into<String>, endpoint: AgentEndpoint) {
        self.agents.insert(name.into(), endpoint);
    }

    pub fn get(&self, name: &str) -> Option<&AgentEndpoint> {
        self.agents.get(name)
    }

    pub fn names(&self) -> Vec<String> {
        self.agents.keys().cloned().collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &AgentEndpoint)> {
        self.agents.iter()
    }

    /// Parses an agents file; errors name the file and the agent.
    pub fn parse(origin: &str, text: &str) -> Result<AgentRegistry, String> {
        let file: AgentsFile = serde_norway::from_str(text)
            .map_err(|e| format!("{origin}: cannot parse agents file: {e}"))?;
        let mut registry = AgentRegistry::new();
        for (name, spec) in file.agents {
            let endpoint = match (spec.url, spec.example) {
                (Some(url), None) => AgentEndpoint::Address(
                    address_of(&url).map_err(|e| format!("{origin}: agent '{name}': {e}"))?,
                ),
                (None, Some(behaviour)) => AgentEndpoint::Example(behaviour),
                _ => {
                    return Err(format!(
                        "{origin}: agent '{name}': give exactly one of `url` or `example`"
                    ))
                }
            };
            registry.insert(name, endpoint);
        }
        Ok(registry)
    }

    pub fn load(path: &Path) -> Result<AgentRegistry, String> {
        let origin = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("{origin}: cannot read: {e}"))?;
        AgentRegistry::parse(&origin, &text)
    }
}

/// `http://host:port[/]` or `host:port` to `host:port`.
fn address_of(url: &str) -> Result<String, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("bad url {url:?}: {e}"))?;
    if let Some(scheme) = uri.scheme_str() {
        if scheme != "http" {
            return Err(format!("bad url {url:?}: only http:// is supported"));
        }
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("bad url {url:?}: no host"))?;
    let port = authority
        .port_u16()
        .ok_or_else(|| format!("bad url {url:?}: no port"))?;
    Ok(format!("{}:{port}", authority.host()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls_and_examples() {
        let r = AgentRegistry::parse(
            "agents.yaml",
            "agents:\n  a: {url: 'http://127.0.0.1:9101'}\n  b: {example: {}}\n  c: {url: 'localhost:80'}\n",
        )
        .unwrap();
        assert_eq!(
            r.get("a"),
            Some(&AgentEndpoint::Address("127.0.0.1:9101".into()))
        );
        assert!(matches!(r.get("b"), Some(AgentEndpoint::Example(_))));
        assert_eq!(
            r.get("c"),
            Some(&AgentEndpoint::Address("localhost:80".into()))
        );
    }

    #[test]
    fn errors_name_the_agent() {
        let e = AgentRegistry::parse("f.yaml", "agents:\n  a: {url: 'http://h'}\n").unwrap_err();
        assert!(
            e.contains("f.yaml: agent 'a'") && e.contains("no port"),
            "{e}"
        );
        let e = AgentRegistry::parse("f.yaml", "agents:\n  a: {}\n").unwrap_err();
        assert!(e.contains("exactly one"), "{e}");
    }
}
