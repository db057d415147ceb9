//! GTUBE, SpamAssassin's test string: a message containing it is spam
//! whatever else it says, so the whole chain can be tested end to end.

pub const GTUBE: &[u8] = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";

/// Points for GTUBE: above the tag threshold (5) and below the quarantine
/// threshold (20), so the test string exercises the path most spam takes:
/// tagged and filed into Junk.
pub const GTUBE_SCORE: f64 = 10.0;

pub fn contains_gtube(message: &[u8]) -> bool {
    message.windows(GTUBE.len()).any(|w| w == GTUBE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gtube_is_found_anywhere() {
        let mut m = b"Subject: t\r\n\r\nhello ".to_vec();
        m.extend_from_slice(GTUBE);
        assert!(contains_gtube(&m));
        assert!(!contains_gtube(b"Subject: t\r\n\r\nhello\r\n"));
    }
}
