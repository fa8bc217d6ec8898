//! vLLM's KV-event payload, decoded: msgpack of the positional batch
//! `[ts, events, data_parallel_rank]`, each event a map tagged `"type"` (vLLM ≥ 0.26)
//! or, in older engines, a positional array whose first element is the tag.
//!
//! Lenient where engines differ, strict where the index depends on it: unknown fields
//! and unknown event types are skipped; block hashes may be unsigned or signed 64-bit
//! integers or bytes (`VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0`: the last 8 bytes, read
//! big-endian, as vLLM's integer form); a `BlockStored` whose tokens do not fill its
//! blocks exactly is malformed.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// One decoded batch.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// When the engine produced it (seconds since the Unix epoch).
    pub ts: f64,
    pub events: Vec<Event>,
    pub dp_rank: Option<i64>,
}

/// One cache change.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Consecutive blocks became cached: `tokens` fill `hashes.len()` blocks.
    Stored {
        hashes: Vec<u64>,
        parent: Option<u64>,
        tokens: Vec<u32>,
        block_size: usize,
    },
    /// Cached blocks were evicted.
    Removed { hashes: Vec<u64> },
    /// The whole cache was reset.
    Cleared,
    /// An event type this gateway does not know (skipped).
    Unknown,
}

/// Why a payload could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(String);

/// Decodes one payload.
pub fn decode(payload: &[u8]) -> Result<Batch, Malformed> {
    let batch: Batch = rmp_serde::from_slice(payload).map_err(|e| Malformed(e.to_string()))?;
    for e in &batch.events {
        if let Event::Stored {
            hashes,
            tokens,
            block_size,
            ..
        } = e
            && (*block_size == 0 || tokens.len() != hashes.len() * block_size)
        {
            return Err(Malformed(format!(
                "BlockStored: {} tokens for {} blocks of {block_size}",
                tokens.len(),
                hashes.len()
            )));
        }
    }
    Ok(batch)
}

/// A block hash in any of the forms engines send.
struct WireHash(u64);

impl<'de> Deserialize<'de> for WireHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = WireHash;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a block hash (integer or bytes)")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<WireHash, E> {
                Ok(WireHash(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<WireHash, E> {
                Ok(WireHash(v as u64))
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<WireHash, E> {
                if v.is_empty() {
                    return Err(E::custom("an empty hash"));
                }
                let tail = &v[v.len().saturating_sub(8)..];
                Ok(WireHash(
                    tail.iter().fold(0u64, |h, b| h << 8 | u64::from(*b)),
                ))
            }
        }
        d.deserialize_any(V)
    }
}

fn hashes(v: Vec<WireHash>) -> Vec<u64> {
    v.into_iter().map(|h| h.0).collect()
}

/// Fields of any event type, by name; what a type does not use stays `None`.
#[derive(Default)]
struct Fields {
    kind: Option<String>,
    hashes: Option<Vec<WireHash>>,
    parent: Option<Option<WireHash>>,
    tokens: Option<Vec<u32>>,
    block_size: Option<usize>,
}

impl Fields {
    fn build<E: de::Error>(self) -> Result<Event, E> {
        let kind = self.kind.ok_or_else(|| E::missing_field("type"))?;
        Ok(match kind.as_str() {
            "BlockStored" => Event::Stored {
                hashes: hashes(
                    self.hashes
                        .ok_or_else(|| E::missing_field("block_hashes"))?,
                ),
                parent: self.parent.flatten().map(|h| h.0),
                tokens: self.tokens.ok_or_else(|| E::missing_field("token_ids"))?,
                block_size: self
                    .block_size
                    .ok_or_else(|| E::missing_field("block_size"))?,
            },
            "BlockRemoved" => Event::Removed {
                hashes: hashes(
                    self.hashes
                        .ok_or_else(|| E::missing_field("block_hashes"))?,
                ),
            },
            "AllBlocksCleared" => Event::Cleared,
            _ => Event::Unknown,
        })
    }
}

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Event;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a KV event (a map tagged `type`, or an array)")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Event, A::Error> {
                let mut f = Fields::default();
                while let Some(key) = m.next_key::<&str>()? {
                    match key {
                        "type" => f.kind = Some(m.next_value()?),
                        "block_hashes" => f.hashes = Some(m.next_value()?),
                        "parent_block_hash" => f.parent = Some(m.next_value()?),
                        "token_ids" => f.tokens = Some(m.next_value()?),
                        "block_size" => f.block_size = Some(m.next_value()?),
                        _ => {
                            m.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                f.build()
            }
            // The older array_like form: [tag, fields in declaration order...].
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Event, A::Error> {
                let mut f = Fields {
                    kind: s.next_element()?,
                    ..Fields::default()
                };
                match f.kind.as_deref() {
                    Some("BlockStored") => {
                        f.hashes = s.next_element()?;
                        f.parent = s.next_element()?;
                        f.tokens = s.next_element()?;
                        f.block_size = s.next_element()?;
                    }
                    Some("BlockRemoved") => f.hashes = s.next_element()?,
                    _ => {}
                }
                while s.next_element::<IgnoredAny>()?.is_some() {}
                f.build()
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Batch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Batch;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a KV event batch [ts, events, data_parallel_rank]")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Batch, A::Error> {
                let ts: f64 = s
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let events: Vec<Event> = s
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(1, &self))?;
                let dp_rank: Option<i64> = s.next_element()?.flatten();
                while s.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Batch {
                    ts,
                    events,
                    dp_rank,
                })
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// msgpack written by hand-built generic values, not by any type of ours.
    fn pack(v: &rmpv::Value) -> Vec<u8> {
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, v).unwrap();
        out
    }

    fn s(x: &str) -> rmpv::Value {
        rmpv::Value::from(x)
    }

    fn stored_map(hashes: Vec<rmpv::Value>, parent: rmpv::Value) -> rmpv::Value {
        rmpv::Value::Map(vec![
            (s("type"), s("BlockStored")),
            (s("block_hashes"), rmpv::Value::Array(hashes)),
            (s("parent_block_hash"), parent),
            (
                s("token_ids"),
                rmpv::Value::Array((0..4).map(rmpv::Value::from).collect()),
            ),
            (s("block_size"), 2.into()),
            (s("lora_id"), rmpv::Value::Nil),
            (s("medium"), s("GPU")),
            (s("lora_name"), rmpv::Value::Nil),
            (s("group_idx"), 0.into()),
            (s("some_future_field"), rmpv::Value::Array(vec![1.into()])),
        ])
    }

    #[test]
    fn the_map_form_with_every_kind_of_hash_and_unknown_fields() {
        let payload = pack(&rmpv::Value::Array(vec![
            1.5.into(),
            rmpv::Value::Array(vec![
                stored_map(
                    vec![u64::MAX.into(), (-2i64).into()],
                    rmpv::Value::Binary(
                        vec![0xAA; 24]
                            .into_iter()
                            .chain(1u64.to_be_bytes())
                            .collect(),
                    ),
                ),
                rmpv::Value::Map(vec![
                    (s("type"), s("BlockRemoved")),
                    (s("block_hashes"), rmpv::Value::Array(vec![7.into()])),
                    (s("medium"), s("GPU")),
                ]),
                rmpv::Value::Map(vec![(s("type"), s("AllBlocksCleared"))]),
                rmpv::Value::Map(vec![(s("type"), s("SomethingNew")), (s("x"), 1.into())]),
            ]),
            3.into(),
        ]));
        let b = decode(&payload).unwrap();
        assert_eq!(b.ts, 1.5);
        assert_eq!(b.dp_rank, Some(3));
        assert_eq!(
            b.events,
            vec![
                Event::Stored {
                    hashes: vec![u64::MAX, u64::MAX - 1],
                    parent: Some(1),
                    tokens: vec![0, 1, 2, 3],
                    block_size: 2
                },
                Event::Removed { hashes: vec![7] },
                Event::Cleared,
                Event::Unknown,
            ]
        );
    }

    #[test]
    fn the_older_positional_form_and_a_missing_rank() {
        let payload = pack(&rmpv::Value::Array(vec![
            2.0.into(),
            rmpv::Value::Array(vec![
                rmpv::Value::Array(vec![
                    s("BlockStored"),
                    rmpv::Value::Array(vec![5.into()]),
                    rmpv::Value::Nil,
                    rmpv::Value::Array(vec![9.into(), 8.into()]),
                    2.into(),
                    rmpv::Value::Nil,
                ]),
                rmpv::Value::Array(vec![s("BlockRemoved"), rmpv::Value::Array(vec![5.into()])]),
                rmpv::Value::Array(vec![s("AllBlocksCleared")]),
            ]),
        ]));
        let b = decode(&payload).unwrap();
        assert_eq!(b.dp_rank, None);
        assert_eq!(
            b.events[0],
            Event::Stored {
                hashes: vec![5],
                parent: None,
                tokens: vec![9, 8],
                block_size: 2
            }
        );
        assert_eq!(b.events[1], Event::Removed { hashes: vec![5] });
        assert_eq!(b.events[2], Event::Cleared);
    }

    #[test]
    fn malformed_payloads_are_errors_not_panics() {
        let bad_tokens = pack(&rmpv::Value::Array(vec![
            1.0.into(),
            rmpv::Value::Array(vec![stored_map(vec![1.into()], rmpv::Value::Nil)]),
            0.into(),
        ]));
        assert!(
            decode(&bad_tokens)
                .unwrap_err()
                .0
                .contains("4 tokens for 1 blocks")
        );
        for p in [
            vec![],
            vec![0xc1],
            pack(&rmpv::Value::Array(vec![])),
            pack(&rmpv::Value::Array(vec![1.0.into(), 2.into()])),
            pack(&rmpv::Value::Array(vec![
                1.0.into(),
                rmpv::Value::Array(vec![rmpv::Value::Map(vec![(s("type"), s("BlockRemoved"))])]),
            ])),
            pack(&s("BlockStored")),
        ] {
            assert!(decode(&p).is_err(), "{p:?}");
        }
    }
}
