//! The edge node's `seq` counter: it counts every node-scoped message of a
//! session except NDEATH, 0..=255 with wrap, and restarts at 0 with each
//! NBIRTH, a rebirth included (tck-id-payloads-sequence-num-*).

/// The node's `seq` counter.
#[derive(Debug, Clone, Default)]
pub struct Seq {
    next: u8,
}

impl Seq {
    /// The seq of an NBIRTH: always 0, and the count starts again.
    pub fn birth(&mut self) -> u64 {
        self.next = 1;
        0
    }

    /// The seq of the next DBIRTH, NDATA, DDATA or DDEATH.
    pub fn advance(&mut self) -> u64 {
        let seq = self.next;
        self.next = self.next.wrapping_add(1);
        u64::from(seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_starts_at_zero_on_birth_and_wraps_after_255() {
        let mut seq = Seq::default();
        assert_eq!(seq.birth(), 0);
        let run: Vec<u64> = (0..300).map(|_| seq.advance()).collect();
        assert_eq!(run[0], 1);
        assert_eq!(run[254], 255);
        assert_eq!(run[255], 0, "255 wraps to 0");
        assert_eq!(run[256], 1);
        assert_eq!(seq.birth(), 0, "a rebirth restarts the count");
        assert_eq!(seq.advance(), 1);
    }
}
