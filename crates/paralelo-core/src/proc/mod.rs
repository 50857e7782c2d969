//! Processes seen from the engine: a watch on child processes' pidfds.
mod watch;

pub use watch::{
    forget_inherited, holds_watcher, release_if_idle, serving, unwatch, watch, watching, Watch,
};
