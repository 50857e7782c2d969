//! What `paralelo.comm` runs on: a rank's [`Mailbox`] (MPI's point-to-point matching)
//! over the job's [`Outbox`] (inboxes and fastboxes),
//! the collectives' algorithms over it ([`collective`]), and [`fold`], element-wise
//! reductions on the data they move.
pub mod collective;
pub mod fastbox;
pub mod fold;
pub mod mailbox;

pub use collective::{Barrier, Group};
pub use fold::{fold, fold_into, Element, Op};
pub use mailbox::{
    Envelope, Kind, Letter, Mailbox, Message, Outbox, Pattern, Wait, Waiter, ANY_SOURCE, ANY_TAG,
};
