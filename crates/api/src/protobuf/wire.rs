//! A bounds-checked reader of the protobuf wire format.

use super::ProtoError;

/// One field's payload as it appears on the wire.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
}

/// Iterates the `(field number, payload)` pairs of one message.
pub(super) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    pub fn next_field(&mut self) -> Result<Option<(u32, Wire<'a>)>, ProtoError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let num = u32::try_from(key >> 3)
            .ok()
            .filter(|&n| n != 0 && n < 1 << 29)
            .ok_or_else(|| malformed(format!("invalid field number {}", key >> 3)))?;
        let value = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => Wire::Fixed64(u64::from_le_bytes(self.array()?)),
            2 => {
                // The length is checked against what is left before anything is allocated.
                let len = usize::try_from(self.varint()?).unwrap_or(usize::MAX);
                Wire::Bytes(self.take(len)?)
            }
            5 => Wire::Fixed32(u32::from_le_bytes(self.array()?)),
            other => {
                return Err(malformed(format!(
                    "unsupported wire type {other} in field {num}"
                )));
            }
        };
        Ok(Some((num, value)))
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn varint(&mut self) -> Result<u64, ProtoError> {
        let mut value = 0u64;
        for (i, &byte) in self.buf.iter().enumerate().take(10) {
            // The tenth byte may only carry the top bit of a 64-bit value.
            if i == 9 && byte > 1 {
                break;
            }
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                self.buf = &self.buf[i + 1..];
                return Ok(value);
            }
        }
        Err(malformed(if self.buf.len() < 10 {
            "truncated varint".to_owned()
        } else {
            "varint longer than 64 bits".to_owned()
        }))
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], ProtoError> {
        if len > self.buf.len() {
            return Err(malformed(format!(
                "length {len} exceeds the {} bytes left",
                self.buf.len()
            )));
        }
        let (head, tail) = self.buf.split_at(len);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ProtoError> {
        let bytes = self.take(N)?;
        let mut out = [0; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }
}

pub(super) fn malformed(reason: String) -> ProtoError {
    ProtoError::Malformed(reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(buf: &[u8]) -> Result<Vec<(u32, Wire<'_>)>, ProtoError> {
        let mut reader = Reader::new(buf);
        let mut out = Vec::new();
        while let Some(field) = reader.next_field()? {
            out.push(field);
        }
        Ok(out)
    }

    #[test]
    fn reads_every_wire_type() -> Result<(), ProtoError> {
        let buf = [
            0x08, 0x96, 0x01, // 1: varint 150
            0x11, 1, 0, 0, 0, 0, 0, 0, 0, // 2: fixed64 1
            0x1a, 2, b'h', b'i', // 3: bytes "hi"
            0x25, 2, 0, 0, 0, // 4: fixed32 2
        ];
        assert_eq!(
            fields(&buf)?,
            vec![
                (1, Wire::Varint(150)),
                (2, Wire::Fixed64(1)),
                (3, Wire::Bytes(b"hi")),
                (4, Wire::Fixed32(2)),
            ]
        );
        Ok(())
    }

    #[test]
    fn reads_the_largest_varint() -> Result<(), ProtoError> {
        let mut buf = vec![0xff; 9];
        buf.push(0x01);
        assert_eq!(Reader::new(&buf).varint()?, u64::MAX);
        Ok(())
    }

    #[test]
    fn rejects_malformed_input() {
        for bad in [
            &[0x08][..],   // varint value missing
            &[0x08, 0x80], // truncated varint
            &[
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
            ], // 11 bytes
            &[
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02,
            ], // overflow
            &[0x1a, 5, b'a'], // length past the end
            &[0x1a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f], // huge length
            &[0x11, 0, 0], // truncated fixed64
            &[0x0b],       // group start
            &[0x00, 0x00], // field number 0
        ] {
            assert!(fields(bad).is_err(), "{bad:?}");
        }
    }
}
