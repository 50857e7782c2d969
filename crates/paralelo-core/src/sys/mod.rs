//! The only raw system-call code of the engine: memfd, futex and one close. All go
//! through rustix.
pub(crate) mod fd;
pub(crate) mod futex;
pub(crate) mod memfd;
