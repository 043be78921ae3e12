//! What survives a restart: the store-and-forward queue on disk, the replay
//! window and paced drain in front of it, and the Sparkplug bdSeq.

pub mod bdseq;
pub mod forward;
pub mod queue;
