//! A route's paths compiled once into a trie of their segments, for the
//! byte scanner (`scan.rs`): an object on a path looks each key up among
//! its node's segments, with nothing rebuilt per object or per message (a
//! search of the next segments was built for every object on a path, 5 %
//! of a TTN uplink's routing). Kept with the spec ([`Derived`]), built on
//! its first decode.
//!
//! Invariants:
//! - a node stands for the objects or arrays reached by one sequence of
//!   segments; an edge's targets are exactly `stream::child_targets` of
//!   its node's targets for that segment (bit 0 the values, 1 the time,
//!   2 + i the i-th metadata field, as in `stream.rs`), and a node's
//!   `ends` are the targets whose path ends there;
//! - an array element is found by its index as `stream.rs` finds it
//!   (`segment.parse::<usize>()`); when two segments of a node name the
//!   same index (`0`, `00`), [`PathTrie::element`] says `None` (not
//!   sure: serde's walk);
//! - built from the spec as it is at its first decode; debug builds check
//!   at every decode that the spec still gives the same trie.
//!
//! [`Derived`]: crate::config::payload::Derived

use super::document::PayloadSpec;
use super::stream::{len_bit, root_targets, skipped_names};
use crate::reading::Name;

/// No node: no path goes on from here.
pub(super) const NONE: u32 = u32::MAX;

#[derive(Debug, Default, PartialEq)]
pub(super) struct PathTrie {
    nodes: Vec<TrieNode>,
    /// `Cx::skip_lens` and `Cx::skip_firsts` (`stream::skipped_names`),
    /// decided with the paths.
    pub(super) skipped_names: (u64, u128),
    /// The dotted names, below the values object, of the time and
    /// metadata paths that lie there (`Cx::skipped_name`).
    pub(super) skipped: Vec<Box<str>>,
    /// `Cx::ignore_lens`: the ignore entries' lengths, one bit each (63
    /// and longer share the last).
    pub(super) ignore_lens: u64,
    /// The metadata fields' keys as the readings hold them, made once
    /// (each copied into a reading as a 32-byte clone).
    pub(super) metadata_names: Vec<Name>,
}

#[derive(Debug, Default, PartialEq)]
struct TrieNode {
    /// The targets whose path ends at this node.
    ends: u64,
    /// The lengths of the edges' segments, one bit each (63 and longer
    /// share the last): most keys are no segment's length, and are told
    /// so without a comparison.
    lens: u64,
    edges: Vec<Edge>,
}

#[derive(Debug, PartialEq)]
struct Edge {
    seg: Box<str>,
    /// The segment as an array index.
    index: Option<usize>,
    /// The targets whose path goes on through this segment.
    targets: u64,
    node: u32,
}

/// Whether two segments or keys are equal: length first (most keys are no
/// segment's), then in words, the last one overlapping (`memcmp`'s call
/// per key, then a byte loop, were each 3 to 4 % of a TTN uplink's
/// routing).
#[inline]
pub(super) fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let word = |s: &[u8], at: usize| u64::from_le_bytes(s[at..at + 8].try_into().expect("8"));
    let half = |s: &[u8], at: usize| u32::from_le_bytes(s[at..at + 4].try_into().expect("4"));
    match n {
        // Three bytes at most: the first, middle and last are all of
        // them (`==` on slices called `memcmp`: OwnTracks' three-letter
        // keys against `tst`).
        0 => true,
        1..=3 => a[0] == b[0] && a[n / 2] == b[n / 2] && a[n - 1] == b[n - 1],
        4..=8 => half(a, 0) == half(b, 0) && half(a, n - 4) == half(b, n - 4),
        9..=16 => word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8),
        _ => same_long(a, b),
    }
}

/// [`same`] of two names of the same length, longer than 16 bytes
/// (dotted names below the values, `aenergy.minute_ts`): word by word,
/// the last one overlapping (`==` on slices was a call to `memcmp`). Out
/// of line, so that `same` stays small enough to be in line.
#[inline(never)]
fn same_long(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    let word = |s: &[u8], at: usize| u64::from_le_bytes(s[at..at + 8].try_into().expect("8"));
    (0..n - 8).step_by(8).all(|at| word(a, at) == word(b, at)) && word(a, n - 8) == word(b, n - 8)
}

/// The spec's trie (built on its first decode).
pub(super) fn of(spec: &PayloadSpec) -> &PathTrie {
    let trie = spec.derived.get_or_init(|| PathTrie::new(spec));
    debug_assert_eq!(
        *trie,
        PathTrie::new(spec),
        "a spec changed after its first decode"
    );
    trie
}

impl PathTrie {
    /// The trie of a walk's root targets (`stream::root_targets`).
    pub(super) fn new(spec: &PayloadSpec) -> PathTrie {
        let mut nodes = vec![TrieNode::default()];
        let mut bits = root_targets(spec).0;
        while bits != 0 {
            let t = bits.trailing_zeros();
            bits &= bits - 1;
            let path = match t {
                0 => &spec.values.0,
                1 => &spec.time.as_ref().expect("time target").0,
                i => &spec.metadata_fields[i as usize - 2].1 .0,
            };
            let mut at = 0usize;
            for seg in path {
                let e = match nodes[at].edges.iter().position(|e| *e.seg == **seg) {
                    Some(e) => e,
                    None => {
                        let node = u32::try_from(nodes.len()).expect("few paths");
                        nodes.push(TrieNode::default());
                        nodes[at].lens |= len_bit(seg.len());
                        nodes[at].edges.push(Edge {
                            seg: seg.as_str().into(),
                            index: seg.parse().ok(),
                            targets: 0,
                            node,
                        });
                        nodes[at].edges.len() - 1
                    }
                };
                let edge = &mut nodes[at].edges[e];
                edge.targets |= 1 << t;
                at = edge.node as usize;
            }
            nodes[at].ends |= 1 << t;
        }
        let n = spec.values.0.len();
        let skipped: Vec<Box<str>> = spec
            .time
            .iter()
            .chain(spec.metadata_fields.iter().map(|(_, p)| p))
            .filter(|p| p.0.len() > n && p.0.starts_with(&spec.values.0))
            .map(|p| p.0[n..].join(".").into())
            .collect();
        PathTrie {
            nodes,
            skipped_names: skipped_names(&skipped),
            skipped,
            ignore_lens: spec.ignore.iter().fold(0, |a, e| a | len_bit(e.len())),
            metadata_names: spec.metadata_fields.iter().map(|(k, _)| k.into()).collect(),
        }
    }

    /// The root's node.
    pub(super) fn root(&self) -> u32 {
        0
    }

    /// The targets whose path ends at `node`.
    #[inline]
    pub(super) fn ends(&self, node: u32) -> u64 {
        self.nodes.get(node as usize).map_or(0, |n| n.ends)
    }

    /// Member `k` of an object at `node`: its targets and node (`0` and
    /// [`NONE`] when no path goes on through it).
    #[inline]
    pub(super) fn member(&self, node: u32, k: &str) -> (u64, u32) {
        self.nodes
            .get(node as usize)
            .filter(|n| n.lens & len_bit(k.len()) != 0)
            .and_then(|n| n.edges.iter().find(|e| same(&e.seg, k)))
            .map_or((0, NONE), |e| (e.targets, e.node))
    }

    /// Element `i` of an array at `node`, as [`PathTrie::member`];
    /// `None` when two segments name it.
    #[inline]
    pub(super) fn element(&self, node: u32, i: usize) -> Option<(u64, u32)> {
        let Some(n) = self.nodes.get(node as usize) else {
            return Some((0, NONE));
        };
        let mut found = (0, NONE);
        for e in n.edges.iter().filter(|e| e.index == Some(i)) {
            if found.1 != NONE {
                return None;
            }
            found = (e.targets, e.node);
        }
        Some(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::decode::document::FieldPath;
    use crate::ingest::decode::stream::{child_targets, new_cx};

    fn p(s: &str) -> FieldPath {
        FieldPath::parse(s).unwrap()
    }

    #[test]
    fn same_compares_every_byte() {
        let base = "abcdefghijklmnopqrstuvwxyz0123456789";
        for n in 0..=base.len() {
            let a = &base[..n];
            assert!(same(a, a), "{a}");
            for at in 0..n {
                let mut b = a.as_bytes().to_vec();
                b[at] ^= 0x20;
                let b = String::from_utf8(b).unwrap();
                assert!(!same(a, &b), "{a} {b}");
            }
            assert!(!same(a, &base[..(n + 1).min(base.len())]) || n == base.len());
        }
    }

    /// Every lookup gives what `child_targets` gives from the same
    /// targets, for object keys and array indexes, down every path.
    #[test]
    fn lookups_agree_with_child_targets() {
        let spec = PayloadSpec {
            values: p("uplink_message.decoded_payload"),
            time: Some(p("received_at")),
            metadata_fields: [
                "end_device_ids.dev_eui",
                "uplink_message.f_port",
                "uplink_message.rx_metadata.0.rssi",
                "uplink_message.rx_metadata.0.gateway_ids.gateway_id",
                "uplink_message.rx_metadata.1.rssi",
                "uplink_message.decoded_payload.t",
                "a.00.b",
                "a.0.c",
                "a.x",
                "uplink_message",
            ]
            .iter()
            .map(|path| (String::new(), p(path)))
            .collect(),
            ..PayloadSpec::default()
        };
        let keys = [
            "uplink_message",
            "decoded_payload",
            "rx_metadata",
            "received_at",
            "end_device_ids",
            "dev_eui",
            "f_port",
            "rssi",
            "gateway_ids",
            "gateway_id",
            "t",
            "a",
            "b",
            "c",
            "x",
            "0",
            "00",
            "1",
            "nope",
        ];
        let mut no_time = spec.clone();
        no_time.time = None;
        for spec in [&spec, &no_time] {
            let trie = PathTrie::new(spec);
            let cx = new_cx(spec, Default::default(), 0, false);
            // (depth, targets, node) of every node reached.
            let mut todo = vec![(0usize, root_targets(spec).0, trie.root())];
            let mut seen = 0;
            while let Some((depth, targets, node)) = todo.pop() {
                seen += 1;
                let ends = child_targets(&cx, depth, targets, |_| true) ^ targets;
                assert_eq!(trie.ends(node), ends, "{depth} {targets:b}");
                for k in keys {
                    let want = child_targets(&cx, depth, targets, |seg| seg == k);
                    let (got, next) = trie.member(node, k);
                    assert_eq!(got, want, "{k} at {depth} {targets:b}");
                    assert_eq!(next == NONE, want == 0, "{k}");
                    if want != 0 {
                        todo.push((depth + 1, want, next));
                    }
                }
                for i in 0..3 {
                    let want =
                        child_targets(&cx, depth, targets, |seg| seg.parse::<usize>() == Ok(i));
                    match trie.element(node, i) {
                        Some((got, _)) => assert_eq!(got, want, "[{i}] at {depth}"),
                        // Only where `0` and `00` meet.
                        None => assert_eq!((depth, i), (1, 0)),
                    }
                }
            }
            assert!(seen > 10, "{seen}");
        }
        assert_eq!(PathTrie::new(&spec).member(NONE, "a"), (0, NONE));
    }
}
