//! Worker processes: [`spawn`] starts one, [`link`] talks to it,
//! [`supervisor`] watches them all.

pub mod link;
pub mod spawn;
pub mod supervisor;
