//! The EM gateway.
