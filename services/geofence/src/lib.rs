//! The streaming geofence (DESIGN §11): a pure engine over zones, curfews, victim proximity and
//! device alerts (`engine`), zone geometry (`zone`), and the service that feeds it from the log
//! and appends the breaches it finds (`service`), snapshotting its state (`snapshots`).

pub mod coverage;
pub mod engine;
pub mod inputs;
pub mod service;
pub mod snapshots;

pub use engine::{Action, BreachUpdate, Config, Device, Evidence, Fix, Input, Proximity, State, evaluate};
pub use hru_domain::zone::{Frame, Shape, Window, Zone, ZoneError, distance_m};
pub use inputs::Inputs;
