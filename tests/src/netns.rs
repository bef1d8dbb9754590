//! Network namespaces that clean up after themselves: the workspace's one helper, in
//! `oasis-testkit` so that crates which cannot depend on this one use it too.

pub use oasis_testkit::netns::{Netns, NetnsError};
