//! How event records are laid out in sled: JSON, LZ4-compressed when that is smaller.
//!
//! Events are the largest records the host writes (their payloads, up to the configured
//! limit), and sled writes each one several times over: a leaf holds up to 16 records and is
//! rewritten whole when it splits and every tenth change. Under load the disk's write rate,
//! not the CPU, was what held deliveries back (BENCHMARKS.md, sixth pass); JSON payloads
//! shrink to a third or less, and LZ4 costs microseconds either way.
//!
//! A record is either plain JSON (it starts with `{`: records written before compression,
//! and those that compression would not shrink) or [`LZ4`], the uncompressed length as four
//! little-endian bytes, and the LZ4 block.

use serde::de::Error as _;

use crate::model::Event;

/// The first byte of a compressed record (plain JSON starts with `{`).
const LZ4: u8 = 0x01;
/// Tag and length.
const HEADER: usize = 5;
/// The most an event record may decompress to; a larger length is corruption, refused before
/// anything is allocated. Far above any event the API accepts.
const MAX_DECOMPRESSED: usize = 256 << 20;

/// An event's record.
pub(super) fn encode_event(event: &Event) -> Vec<u8> {
    compress(serde_json::to_vec(event).expect("events serialise"))
}

/// `json` compressed, or as it is when that is no larger.
fn compress(json: Vec<u8>) -> Vec<u8> {
    let Ok(len) = u32::try_from(json.len()) else {
        return json;
    };
    let mut record = vec![0; HEADER + lz4_flex::block::get_maximum_output_size(json.len())];
    record[0] = LZ4;
    record[1..HEADER].copy_from_slice(&len.to_le_bytes());
    match lz4_flex::block::compress_into(&json, &mut record[HEADER..]) {
        Ok(n) if HEADER + n < json.len() => {
            record.truncate(HEADER + n);
            record
        }
        _ => json,
    }
}

/// An event from its record, as [`encode_event`] wrote it (or as plain JSON).
///
/// # Errors
/// When the record is neither valid JSON nor a valid compressed record.
pub(super) fn decode_event(record: &[u8]) -> Result<Event, serde_json::Error> {
    match record.split_first() {
        Some((&LZ4, rest)) => {
            let (len, block) = rest
                .split_first_chunk::<4>()
                .ok_or_else(|| serde_json::Error::custom("compressed record without a length"))?;
            let len = u32::from_le_bytes(*len) as usize;
            if len > MAX_DECOMPRESSED {
                return Err(serde_json::Error::custom(format!(
                    "compressed record claims {len} bytes"
                )));
            }
            let json = lz4_flex::block::decompress(block, len)
                .map_err(|e| serde_json::Error::custom(format!("compressed record: {e}")))?;
            if json.len() != len {
                return Err(serde_json::Error::custom(format!(
                    "compressed record: {} bytes, its header says {len}",
                    json.len()
                )));
            }
            serde_json::from_slice(&json)
        }
        _ => serde_json::from_slice(record),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::event;

    fn with_payload(payload: &str) -> Event {
        let mut e = event("evt_codec");
        e.payload = serde_json::value::RawValue::from_string(payload.into()).unwrap();
        e
    }

    #[test]
    fn repetitive_payloads_are_stored_compressed_and_read_back_as_written() {
        let lines: Vec<String> = (0..40)
            .map(|i| format!(r#"{{"sku":"SKU-{i:04}","quantity":{i},"price":"19.99"}}"#))
            .collect();
        let e = with_payload(&format!(r#"{{"lines":[{}]}}"#, lines.join(",")));
        let json = serde_json::to_vec(&e).unwrap();
        let record = encode_event(&e);
        assert_eq!(record[0], LZ4);
        assert!(
            record.len() * 2 < json.len(),
            "{} of {}",
            record.len(),
            json.len()
        );
        let back = decode_event(&record).unwrap();
        assert_eq!(serde_json::to_vec(&back).unwrap(), json);
    }

    #[test]
    fn records_compression_would_not_shrink_stay_json_and_old_json_records_still_read() {
        let tiny = br#"{"a":1}"#.to_vec();
        assert_eq!(compress(tiny.clone()), tiny);
        // Records written before compression are plain JSON.
        let e = with_payload(r#"{"a":1}"#);
        let old = serde_json::to_vec(&e).unwrap();
        assert_eq!(decode_event(&old).unwrap().id, e.id);
    }

    #[test]
    fn damaged_records_are_errors_not_panics_or_huge_allocations() {
        let e = with_payload(&format!(r#"{{"text":"{}"}}"#, "abc".repeat(200)));
        let record = encode_event(&e);
        assert_eq!(record[0], LZ4);
        let mut claims_too_much = record.clone();
        claims_too_much[1..HEADER].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut claims_too_little = record.clone();
        claims_too_little[1..HEADER].copy_from_slice(&10u32.to_le_bytes());
        let cases = [
            vec![LZ4],
            vec![LZ4, 1, 0],
            record[..record.len() / 2].to_vec(),
            claims_too_much,
            claims_too_little,
            b"not json".to_vec(),
        ];
        for case in cases {
            assert!(decode_event(&case).is_err(), "{case:?}");
        }
    }
}
