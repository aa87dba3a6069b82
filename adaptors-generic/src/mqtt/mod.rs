mod topics;
pub use topics::*;
