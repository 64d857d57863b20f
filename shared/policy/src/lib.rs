//! Information-sharing agreements as code (DESIGN §7): the TOML model, validation with errors a
//! data-protection officer can act on, and the compiled agreement that drives every layer:
//! section audiences, broker permissions, gRPC permissions and retention.
//!
//! Deny by default: nothing is shared, produced or callable unless a rule says so. Every
//! decision here is a pure function of the agreement.

mod broker;
mod compile;
mod error;
mod hours;
mod model;
mod names;
mod set;

pub use broker::MissingNkey;
pub use compile::{CallGrant, CallRefused, Callee, CompiledIsa, Linkage, Receipt};
pub use error::{ErrorKind, PolicyError, PolicyErrors};
pub use hours::Hours;
pub use hru_domain::Retention;
pub use model::Role;
pub use set::PolicySet;
