//! MQTT topic patterns with named segments (`sensors/{device}/+/#`):
//! parsing, the filter to subscribe to, and matching a topic. Std only and
//! importing nothing from the crate, so both the config (which parses a
//! route's `topic`) and the MQTT input (which matches messages) use it while
//! `config` stays plain data that imports nothing from `ingest`.
//!
//! Rules: a whole level may be `+`, `#` (last level only), `{name}` (a `+`
//! whose value is captured) or `{name#}` (last level only: a `#` whose one or
//! more levels are captured, joined with `/`, e.g. a Zigbee2MQTT friendly name
//! `kitchen/plug`); wildcards at the first level do not match topics starting
//! with `$` (MQTT 4.7.2).
//!
//! A router tries many patterns on one message: [`SplitTopic`] splits the
//! topic once, [`TopicPattern::is_match`] and [`TopicGlob::matches_split`]
//! test it without allocating, and [`TopicPattern::capture`] (decided once
//! per pattern) finds a named segment's value in it.
//!
//! Also here, for the same reasons: [`TopicGlob`] (a route's `skip_topics`,
//! where `#` may stand anywhere) and [`subscriptions`], the filters to
//! subscribe so that no message is delivered twice (a broker sends one copy
//! per matching subscription).

use std::collections::HashSet;

/// One level of a topic pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Literal(String),
    /// `+`, or `{name}` when named.
    One(Option<String>),
    /// `#`: this level and every one below (last level only); `{name#}`
    /// captures them (at least one level).
    Rest(Option<String>),
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
                "#" if i + 1 == parts.len() => Level::Rest(None),
                "#" => return Err("may use `#` only as its last level".into()),
                "+" => Level::One(None),
                _ if p.starts_with('{') && p.ends_with('}') && p.len() > 2 => {
                    let mut name = &p[1..p.len() - 1];
                    let rest = name.ends_with('#');
                    if rest {
                        if i + 1 != parts.len() {
                            return Err(format!(
                                "may use a multi-level `{{{name}}}` only as its last level"
                            ));
                        }
                        name = &name[..name.len() - 1];
                    }
                    if name.is_empty() {
                        return Err("has a segment name that is empty".into());
                    }
                    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                        return Err(format!(
                            "has a segment name `{name}` that is not letters, digits or `_`"
                        ));
                    }
                    if !names.insert(name.to_owned()) {
                        return Err(format!("names the segment `{{{name}}}` twice"));
                    }
                    if rest {
                        Level::Rest(Some(name.to_owned()))
                    } else {
                        Level::One(Some(name.to_owned()))
                    }
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
                Level::Rest(_) => "#",
            })
            .collect::<Vec<_>>()
            .join("/");
        Ok(TopicPattern { levels, filter })
    }

    /// The filter to subscribe to (`{name}` becomes `+`).
    pub fn filter(&self) -> &str {
        &self.filter
    }

    /// The first level when it is literal: a topic whose first level
    /// differs cannot match (a router rules out most of its routes by it
    /// before matching).
    pub fn first_literal(&self) -> Option<&str> {
        match self.levels.first() {
            Some(Level::Literal(l)) => Some(l),
            _ => None,
        }
    }

    /// The named segments, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.levels.iter().filter_map(|l| match l {
            Level::One(Some(n)) | Level::Rest(Some(n)) => Some(n.as_str()),
            _ => None,
        })
    }

    /// Match a topic; on success the named segments' values, in order.
    pub fn matches<'t>(&self, topic: &'t str) -> Option<Vec<(&str, &'t str)>> {
        let split = SplitTopic::new(topic);
        if !self.is_match(&split) {
            return None;
        }
        let mut captures = Vec::new();
        for (i, level) in self.levels.iter().enumerate() {
            match level {
                Level::One(Some(n)) => captures.push((n.as_str(), split.get(Capture::Level(i)))),
                Level::Rest(Some(n)) => captures.push((n.as_str(), split.get(Capture::Rest(i)))),
                _ => {}
            }
        }
        Some(captures)
    }

    /// Whether a topic split once ([`SplitTopic`]) matches: what a router
    /// trying many patterns on one message calls, without allocating. The
    /// named segments' values are then [`SplitTopic::get`] of
    /// [`capture`](TopicPattern::capture).
    pub fn is_match(&self, topic: &SplitTopic<'_>) -> bool {
        if topic.topic.starts_with('$') && !matches!(self.levels.first(), Some(Level::Literal(_))) {
            return false;
        }
        let parts = topic.levels();
        for (i, level) in self.levels.iter().enumerate() {
            match level {
                Level::Rest(None) => return true,
                // At least one level: `a/{x#}` does not match `a`.
                Level::Rest(Some(_)) => return parts.len() > i,
                Level::Literal(l) => {
                    if parts.get(i) != Some(&l.as_str()) {
                        return false;
                    }
                }
                Level::One(_) => {
                    if i >= parts.len() {
                        return false;
                    }
                }
            }
        }
        parts.len() == self.levels.len()
    }

    /// Where the named segment's value is in a matching topic.
    pub fn capture(&self, name: &str) -> Option<Capture> {
        self.levels.iter().enumerate().find_map(|(i, l)| match l {
            Level::One(Some(n)) if n == name => Some(Capture::Level(i)),
            Level::Rest(Some(n)) if n == name => Some(Capture::Rest(i)),
            _ => None,
        })
    }
}

/// Where a named segment's value is in a topic that matched its pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capture {
    /// The i-th level.
    Level(usize),
    /// The i-th level and every one below it, joined with `/`.
    Rest(usize),
}

/// The high bit of each byte of `word` that is `/`, and of no other (no
/// borrow crosses bytes: each is tested on its own low seven bits).
#[inline(always)]
fn slashes(word: u64) -> u64 {
    const LOW7: u64 = u64::from_ne_bytes([0x7f; 8]);
    let x = word ^ u64::from_ne_bytes([b'/'; 8]);
    !(((x & LOW7).wrapping_add(LOW7)) | x | LOW7)
}

/// Levels kept inline by [`SplitTopic`]; deeper topics take a `Vec`. Eight:
/// every preset's topic fits, and filling sixteen was a call to `memcpy`
/// per message.
const INLINE_LEVELS: usize = 8;

/// A topic split at `/` once, to be matched against many patterns and
/// globs without splitting (or allocating) again for each.
#[derive(Debug, Clone)]
pub struct SplitTopic<'t> {
    topic: &'t str,
    inline: [&'t str; INLINE_LEVELS],
    len: usize,
    /// Every level, when there are more than `INLINE_LEVELS`.
    heap: Vec<&'t str>,
}

impl<'t> SplitTopic<'t> {
    /// In line, and one pass over the bytes: built for every message,
    /// and a call returning the 300-byte value by copy, with a search per
    /// level, was a fifth of routing an ESPHome state.
    #[inline]
    pub fn new(topic: &'t str) -> SplitTopic<'t> {
        let mut out = SplitTopic {
            topic,
            inline: [""; INLINE_LEVELS],
            len: 0,
            heap: Vec::new(),
        };
        let bytes = topic.as_bytes();
        let mut start = 0;
        let mut level_to = |end: usize, out: &mut SplitTopic<'t>| {
            // SAFETY: `start` is 0 or follows a `/` and `end` is the end
            // or on a `/`; `/` is ASCII, so both are character
            // boundaries of `topic`, and `start <= end`.
            let level = unsafe { topic.get_unchecked(start..end) };
            if out.len < INLINE_LEVELS {
                out.inline[out.len] = level;
            } else {
                out.push_deep(level);
            }
            out.len += 1;
            start = end + 1;
        };
        // The `/`s found eight bytes at a time (a topic is a few dozen
        // bytes, read a byte per step before).
        let mut at = 0;
        while let Some(word) = bytes.get(at..at + 8) {
            let mut m = slashes(u64::from_le_bytes(word.try_into().expect("8 bytes")));
            while m != 0 {
                level_to(at + (m.trailing_zeros() / 8) as usize, &mut out);
                m &= m - 1;
            }
            at += 8;
        }
        for end in (at..bytes.len()).filter(|&i| bytes[i] == b'/') {
            level_to(end, &mut out);
        }
        level_to(bytes.len(), &mut out);
        out
    }

    /// A level past the inline ones (rare: out of line).
    #[cold]
    fn push_deep(&mut self, level: &'t str) {
        if self.heap.is_empty() {
            self.heap.extend_from_slice(&self.inline);
        }
        self.heap.push(level);
    }

    pub fn as_str(&self) -> &'t str {
        self.topic
    }

    /// The levels (`a//b` has three, the middle one empty).
    #[inline]
    pub fn levels(&self) -> &[&'t str] {
        if self.len > INLINE_LEVELS {
            &self.heap
        } else {
            &self.inline[..self.len]
        }
    }

    /// A captured segment's value; empty if the topic has no such level.
    #[inline]
    pub fn get(&self, at: Capture) -> &'t str {
        let levels = self.levels();
        match at {
            Capture::Level(i) => levels.get(i).copied().unwrap_or(""),
            Capture::Rest(i) => {
                let offset: usize = levels.iter().take(i).map(|l| l.len() + 1).sum();
                self.topic.get(offset..).unwrap_or("")
            }
        }
    }
}

/// A `skip_topics` pattern: levels are literals, `+` (one level) or `#`
/// (any number of levels, none included, anywhere), so
/// `zigbee2mqtt/#/availability` names every device's availability topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicGlob {
    levels: Vec<GlobLevel>,
    text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum GlobLevel {
    Literal(String),
    /// `+`
    One,
    /// `#`
    Any,
}

impl TopicGlob {
    /// The error completes "`skip_topics` …".
    pub fn parse(s: &str) -> Result<TopicGlob, String> {
        if s.is_empty() || s.contains('\0') {
            return Err("has an empty or invalid pattern".into());
        }
        if let Some(bad) = s.split('/').find(|l| l.len() > 1 && l.contains(['+', '#'])) {
            return Err(format!(
                "has a level `{bad}` mixing text with `+` or `#`; a wildcard must be a whole level"
            ));
        }
        let levels = s
            .split('/')
            .map(|l| match l {
                "+" => GlobLevel::One,
                "#" => GlobLevel::Any,
                _ => GlobLevel::Literal(l.to_owned()),
            })
            .collect();
        Ok(TopicGlob {
            levels,
            text: s.to_owned(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn matches(&self, topic: &str) -> bool {
        self.matches_split(&SplitTopic::new(topic))
    }

    /// [`matches`](TopicGlob::matches) on a topic split once.
    pub fn matches_split(&self, topic: &SplitTopic<'_>) -> bool {
        let parts = topic.levels();
        // A literal last level must be the topic's last level (whatever
        // a `#` before it takes): most topics fail here.
        if let Some(GlobLevel::Literal(last)) = self.levels.last() {
            if parts.last() != Some(&last.as_str()) {
                return false;
            }
        }
        glob(&self.levels, parts)
    }
}

fn glob(pat: &[GlobLevel], parts: &[&str]) -> bool {
    match pat.split_first() {
        None => parts.is_empty(),
        Some((GlobLevel::Any, rest)) => (0..=parts.len()).any(|i| glob(rest, &parts[i..])),
        Some((p, rest)) => match parts.split_first() {
            Some((t, more)) => {
                let same = match p {
                    GlobLevel::Literal(l) => l == t,
                    _ => true,
                };
                same && glob(rest, more)
            }
            None => false,
        },
    }
}

/// Whether every topic matched by filter `a` is matched by filter `b`.
fn covers(b: &[&str], a: &[&str]) -> bool {
    match (b.split_first(), a.split_first()) {
        (Some((&"#", _)), _) => true,
        (None, None) => true,
        (Some((&"+", bs)), Some((x, as_))) if *x != "#" => covers(bs, as_),
        (Some((bl, bs)), Some((al, as_))) if bl == al => covers(bs, as_),
        _ => false,
    }
}

/// Whether some topic is matched by both filters.
fn overlap(a: &[&str], b: &[&str]) -> bool {
    match (a.split_first(), b.split_first()) {
        (Some((&"#", _)), _) | (_, Some((&"#", _))) => true,
        (None, None) => true,
        (Some((x, xs)), Some((y, ys))) if *x == "+" || *y == "+" || x == y => overlap(xs, ys),
        _ => false,
    }
}

/// The filters to subscribe for these route filters (with their QoS): a
/// filter covered by another is dropped, keeping the higher QoS, so a
/// broker that sends one copy per matching subscription (mosquitto does)
/// sends one. Filters that overlap only partly (`zigbee2mqtt/#` and
/// `+/+/+/state`) are both kept: widening them to a common filter would
/// bring every topic in between. A broker sends one copy of a live message
/// (MQTT requires at least one; mosquitto 2 sends exactly one) but a
/// retained message once per matching subscription: the MQTT input drops
/// the second retained copy ([`Subscriptions::copies`] tells which topics
/// can have one). Routing is unchanged: the first route whose topic matches
/// wins.
pub fn subscriptions(filters: &[(String, u8)]) -> Vec<(String, u8)> {
    let mut out: Vec<(String, u8)> = Vec::new();
    'next: for (f, q) in filters {
        let levels: Vec<&str> = f.split('/').collect();
        let mut q = *q;
        let mut i = 0;
        while i < out.len() {
            let ol: Vec<&str> = out[i].0.split('/').collect();
            if covers(&ol, &levels) {
                out[i].1 = out[i].1.max(q);
                continue 'next;
            }
            if covers(&levels, &ol) {
                q = q.max(out[i].1);
                out.remove(i);
                continue;
            }
            i += 1;
        }
        out.push((f.clone(), q));
    }
    out
}

/// The subscribed filters, to tell how many copies of a message a broker
/// may send (one per matching subscription).
#[derive(Debug, Clone, Default)]
pub struct Subscriptions {
    /// Only when some of them overlap: otherwise every message is one copy.
    overlapping: Vec<TopicPattern>,
}

impl Subscriptions {
    pub fn new(filters: &[String]) -> Subscriptions {
        let split: Vec<Vec<&str>> = filters.iter().map(|f| f.split('/').collect()).collect();
        let any =
            (0..split.len()).any(|i| (i + 1..split.len()).any(|j| overlap(&split[i], &split[j])));
        Subscriptions {
            overlapping: if any {
                filters
                    .iter()
                    .filter_map(|f| TopicPattern::parse(f).ok())
                    .collect()
            } else {
                Vec::new()
            },
        }
    }

    /// How many subscriptions match `topic` (at least 1 for a delivered
    /// message).
    pub fn copies(&self, topic: &str) -> usize {
        if self.overlapping.is_empty() {
            return 1;
        }
        self.overlapping
            .iter()
            .filter(|p| p.matches(topic).is_some())
            .count()
            .max(1)
    }

    /// Pairs of filters that overlap partly, for `check`.
    pub fn partial_overlaps(filters: &[String]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for i in 0..filters.len() {
            for j in i + 1..filters.len() {
                let a: Vec<&str> = filters[i].split('/').collect();
                let b: Vec<&str> = filters[j].split('/').collect();
                if overlap(&a, &b) {
                    out.push((filters[i].clone(), filters[j].clone()));
                }
            }
        }
        out
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
        let p = TopicPattern::parse("zigbee2mqtt/{device#}").unwrap();
        assert_eq!(p.filter(), "zigbee2mqtt/#");
        assert_eq!(p.names().collect::<Vec<_>>(), ["device"]);
        assert_eq!(
            p.matches("zigbee2mqtt/kitchen/plug"),
            Some(vec![("device", "kitchen/plug")])
        );
        assert_eq!(
            p.matches("zigbee2mqtt/lamp"),
            Some(vec![("device", "lamp")])
        );
        assert_eq!(p.matches("zigbee2mqtt"), None);
        assert_eq!(p.matches("other/lamp"), None);
        for bad in [
            "",
            "a/#/b",
            "a/b+",
            "a/{x}/{x}",
            "a/{x-y}",
            "a/x{y}",
            "a/{x#}/b",
            "a/{#}",
        ] {
            assert!(TopicPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn globs() {
        let g = TopicGlob::parse("zigbee2mqtt/#/availability").unwrap();
        assert!(g.matches("zigbee2mqtt/kitchen/plug/availability"));
        assert!(g.matches("zigbee2mqtt/lamp/availability"));
        assert!(!g.matches("zigbee2mqtt/lamp"));
        let g = TopicGlob::parse("tele/+/LWT").unwrap();
        assert!(g.matches("tele/plug/LWT") && !g.matches("tele/a/b/LWT"));
        assert!(TopicGlob::parse("a/b#").is_err());
        // `#` takes no level or several, before a last literal too.
        let g = TopicGlob::parse("#/b").unwrap();
        assert!(g.matches("b") && g.matches("a/x/b") && !g.matches("b/a"));
        let g = TopicGlob::parse("a/#").unwrap();
        assert!(g.matches("a") && g.matches("a/b/c") && !g.matches("b"));
        assert!(TopicGlob::parse("a//+").unwrap().matches("a//x"));
    }

    #[test]
    fn a_topic_split_once_matches_as_the_topic() {
        let deep: String = (0..20)
            .map(|i| format!("l{i}"))
            .collect::<Vec<_>>()
            .join("/");
        let p = TopicPattern::parse("l0/{x}/+/{rest#}").unwrap();
        let s = SplitTopic::new(&deep);
        assert_eq!((s.levels().len(), s.levels()[19]), (20, "l19"));
        assert!(p.is_match(&s));
        assert_eq!(s.get(p.capture("x").unwrap()), "l1");
        assert_eq!(s.get(p.capture("rest").unwrap()), &deep[9..]);
        assert_eq!(p.capture("nope"), None);
        // Split as `str::split` splits, at every length around the word
        // size, with bytes one bit off a `/` (`.`, `o`, and 0xaf in `ï`).
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let alphabet = ["/", "a", ".", "o", "ï", "0"];
        for _ in 0..3000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let t: String = (0..seed % 40)
                .map(|i| alphabet[((seed >> (i % 21 * 3)) % 6) as usize])
                .collect();
            let want: Vec<&str> = t.split('/').collect();
            assert_eq!(SplitTopic::new(&t).levels(), &want[..], "{t:?}");
        }
        let pool = [
            "a/b", "a/+", "+/b", "a/#", "#", "{x}/{y#}", "a/{x}", "a//b", "$SYS/{x}", "+/+/{z}",
        ];
        let topics = [
            "a", "a/b", "a/", "/b", "a//b", "a/b/c", "$SYS/x", "$SYS", "x/y/z/w", "",
        ];
        for pat in pool {
            let p = TopicPattern::parse(pat).unwrap();
            for t in topics {
                let s = SplitTopic::new(t);
                let got = p.is_match(&s).then(|| {
                    p.names()
                        .map(|n| (n, s.get(p.capture(n).unwrap())))
                        .collect::<Vec<_>>()
                });
                assert_eq!(got, p.matches(t), "{pat} {t}");
            }
        }
        assert_eq!(
            TopicPattern::parse("a/{x#}").unwrap().matches("a/"),
            Some(vec![("x", "")])
        );
        assert_eq!(TopicPattern::parse("+/x").unwrap().matches("$SYS/x"), None);
    }

    #[test]
    fn subscriptions_never_overlap() {
        let subs = |f: &[&str]| {
            subscriptions(&f.iter().map(|s| (s.to_string(), 1)).collect::<Vec<_>>())
                .into_iter()
                .map(|(f, _)| f)
                .collect::<Vec<_>>()
        };
        assert_eq!(subs(&["a/b", "a/+"]), ["a/+"]);
        assert_eq!(subs(&["a/+", "a/b"]), ["a/+"]);
        assert_eq!(subs(&["a/#", "a/b/c", "x/y"]), ["a/#", "x/y"]);
        // Partial overlaps are both kept; their copies are counted.
        assert_eq!(subs(&["a/+/c", "a/b/+"]), ["a/+/c", "a/b/+"]);
        let s = Subscriptions::new(&["a/+/c".into(), "a/b/+".into()]);
        assert_eq!(
            (s.copies("a/b/c"), s.copies("a/x/c"), s.copies("a/b/x")),
            (2, 1, 1)
        );
        assert_eq!(Subscriptions::new(&["a/+".into()]).copies("a/b"), 1);
        assert_eq!(subs(&["a/b", "a/b"]), ["a/b"]);
        assert_eq!(subs(&["a/b", "c/d"]), ["a/b", "c/d"]);
        assert_eq!(subs(&["a/+/c", "a/b/+", "a/#"]), ["a/#"]);
        // The higher QoS is kept.
        let s = subscriptions(&[("a/b".into(), 2), ("a/+".into(), 0)]);
        assert_eq!(s, [("a/+".to_owned(), 2)]);
        // No result covers another, whatever the input.
        let pool = [
            "a/b", "a/+", "+/b", "a/#", "a/b/c", "+/+/c", "x", "x/#", "#",
        ];
        for i in 0..pool.len() {
            for j in 0..pool.len() {
                let out = subs(&[pool[i], pool[j], pool[(i + j) % pool.len()]]);
                for x in 0..out.len() {
                    for y in x + 1..out.len() {
                        let a: Vec<&str> = out[x].split('/').collect();
                        let b: Vec<&str> = out[y].split('/').collect();
                        assert!(!covers(&a, &b) && !covers(&b, &a), "{out:?}");
                    }
                }
            }
        }
    }
}
