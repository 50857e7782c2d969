//! Processes seen from the engine: a watch on child processes' pidfds.
mod watch;

pub use watch::{serving, unwatch, watch, Watch};
