//! MQTT topic patterns with named segments (`sensors/{device}/+/#`):
//! parsing, the filter to subscribe to, and matching a topic. Std only and
//! importing nothing from the crate, so both the config (which parses a
//! route's `topic`) and the MQTT input (which matches messages) use it while
//! `config` stays plain data that imports nothing from `ingest`.
//!
//! Rules: a whole level may be `+`, `#` (last level only) or `{name}` (a `+`
//! whose value is captured); wildcards at the first level do not match topics
//! starting with `$` (MQTT 4.7.2).

use std::collections::HashSet;

/// One level of a topic pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Literal(String),
    /// `+`, or `{name}` when named.
    One(Option<String>),
    /// `#`: this level and every one below (last level only).
    Rest,
}

/// A route's topic: an MQTT filter with optionally named single levels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPattern {
    levels: Vec<Level>,
    filter: String,
}

impl TopicPattern {
    /// Parse `sensors/{device}/+/#`. The error completes "`topic` …".
    pub fn parse(s: &str) -> Result<TopicPattern, String> {
        if s.is_empty() {
            return Err("must not be empty".into());
        }
        if s.len() > 65_535 || s.contains('\0') {
            return Err("is not a valid MQTT topic filter".into());
        }
        let parts: Vec<&str> = s.split('/').collect();
        let mut levels = Vec::with_capacity(parts.len());
        let mut names = HashSet::new();
        for (i, p) in parts.iter().enumerate() {
            let level = match *p {
                "#" if i + 1 == parts.len() => Level::Rest,
                "#" => return Err("may use `#` only as its last level".into()),
                "+" => Level::One(None),
                _ if p.starts_with('{') && p.ends_with('}') && p.len() > 2 => {
                    let name = &p[1..p.len() - 1];
                    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                        return Err(format!(
                            "has a segment name `{name}` that is not letters, digits or `_`"
                        ));
                    }
                    if !names.insert(name.to_owned()) {
                        return Err(format!("names the segment `{{{name}}}` twice"));
                    }
                    Level::One(Some(name.to_owned()))
                }
                _ if p.contains(['+', '#', '{', '}']) => {
                    return Err(format!(
                        "has a level `{p}` mixing text with `+`, `#` or braces; a wildcard \
                         or `{{name}}` must be a whole level"
                    ))
                }
                _ => Level::Literal((*p).to_owned()),
            };
            levels.push(level);
        }
        let filter = levels
            .iter()
            .map(|l| match l {
                Level::Literal(s) => s.as_str(),
                Level::One(_) => "+",
                Level::Rest => "#",
            })
            .collect::<Vec<_>>()
            .join("/");
        Ok(TopicPattern { levels, filter })
    }

    /// The filter to subscribe to (`{name}` becomes `+`).
    pub fn filter(&self) -> &str {
        &self.filter
    }

    /// The named segments, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.levels.iter().filter_map(|l| match l {
            Level::One(Some(n)) => Some(n.as_str()),
            _ => None,
        })
    }

    /// Match a topic; on success the named segments' values, in order.
    pub fn matches<'t>(&self, topic: &'t str) -> Option<Vec<(&str, &'t str)>> {
        if topic.starts_with('$') && !matches!(self.levels.first(), Some(Level::Literal(_))) {
            return None;
        }
        let mut captures = Vec::new();
        let mut parts = topic.split('/');
        for level in &self.levels {
            match level {
                Level::Rest => return Some(captures),
                Level::Literal(l) => {
                    if parts.next()? != l {
                        return None;
                    }
                }
                Level::One(name) => {
                    let p = parts.next()?;
                    if let Some(n) = name {
                        captures.push((n.as_str(), p));
                    }
                }
            }
        }
        parts.next().is_none().then_some(captures)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let p = TopicPattern::parse("sensors/{device}/+/#").unwrap();
        assert_eq!(p.filter(), "sensors/+/+/#");
        assert_eq!(p.names().collect::<Vec<_>>(), ["device"]);
        assert_eq!(p.matches("sensors/d1/x/y/z"), Some(vec![("device", "d1")]));
        assert_eq!(p.matches("sensors/d1/x"), Some(vec![("device", "d1")]));
        assert_eq!(p.matches("sensors/d1"), None);
        assert_eq!(p.matches("other/d1/x"), None);
        let p = TopicPattern::parse("a/{x}").unwrap();
        assert_eq!(p.matches("a/1/2"), None);
        assert_eq!(p.matches("a/"), Some(vec![("x", "")]));
        assert!(TopicPattern::parse("#")
            .unwrap()
            .matches("$SYS/broker")
            .is_none());
        assert!(TopicPattern::parse("$SYS/#")
            .unwrap()
            .matches("$SYS/broker")
            .is_some());
        for bad in ["", "a/#/b", "a/b+", "a/{x}/{x}", "a/{x-y}", "a/x{y}"] {
            assert!(TopicPattern::parse(bad).is_err(), "{bad}");
        }
    }
}
