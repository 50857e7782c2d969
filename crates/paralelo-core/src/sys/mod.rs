//! The only raw system-call code of the engine: memfd, futex, a pipe's socket and eventfd, one close, a liveness
//! probe and holds on shared files (flock). All go through rustix.
pub(crate) mod fd;
pub(crate) mod futex;
pub(crate) mod hold;
pub(crate) mod memfd;
pub(crate) mod peer;
pub(crate) mod thread;
