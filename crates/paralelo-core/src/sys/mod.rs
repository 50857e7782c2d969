//! The only raw system-call code of the engine: memfd and futex. Both go through rustix.
pub(crate) mod futex;
pub(crate) mod memfd;
