//! Processes seen from the engine: a watch on child processes' pidfds.
mod watch;

pub use watch::{forget_inherited, serving, unwatch, watch, watching, Watch};
