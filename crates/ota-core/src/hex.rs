//! Hex encoding of binary keys, for summaries and SQL parameters.

pub fn encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

pub fn serialize<S: serde::Serializer>(bytes: &[u8; 16], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&encode(bytes))
}
