//! The only raw system-call code of the engine: memfd, futex, a pipe's socket and eventfd, one close and a liveness
//! probe. All go through rustix.
pub(crate) mod fd;
pub(crate) mod futex;
pub(crate) mod memfd;
pub(crate) mod peer;
pub(crate) mod thread;
