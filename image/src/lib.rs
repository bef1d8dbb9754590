//! Builds the artifacts oasis serves from Debian parts.
