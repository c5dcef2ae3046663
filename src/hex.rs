//! Lowercase hex, the encoding of event ids and trace ids: a leaf that the
//! route (event ids) and the trace context (W3C ids) both use.

/// Appends `bytes` as lowercase hex: the one encoder of event ids and
/// trace ids, on every request's path, so a table instead of `format!`.
pub fn push_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for byte in bytes {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
}
