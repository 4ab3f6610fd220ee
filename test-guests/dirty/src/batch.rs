//! One batch of page work, run in ring 3 ([`crate::user`]): check and/or
//! write a run of consecutive pages of the area.

use core::ptr::{addr_of, read_volatile};

use crate::page::{self, Bad, PAGE_SIZE};
use crate::user;

/// What to do with pages `[first, first + count)` of the area at
/// `area_start`, and what went wrong.
#[repr(C)]
pub struct Job {
    /// Guest-physical address of page 0 of the area.
    pub area_start: u64,
    /// First page index.
    pub first: u64,
    /// Pages to process.
    pub count: u64,
    /// Generation each page must hold before anything is written (0: no
    /// check).
    pub check: u64,
    /// Generation to write (0: read only).
    pub write: u64,
    /// Out: the first bad page (index) and what is wrong with it; the
    /// batch stops there.
    pub bad: Option<(u64, Bad)>,
}

extern "C" fn run(job: u64) -> ! {
    // SAFETY: `execute` passes the address of a live, exclusively borrowed
    // Job.
    let job = unsafe { &mut *(job as *mut Job) };
    job.bad = None;
    for i in job.first..job.first + job.count {
        let addr = job.area_start + i * PAGE_SIZE;
        if job.check != 0 {
            // SAFETY: the area is RAM above the image that nothing else
            // in the guest uses (Area::find).
            if let Err(bad) = unsafe { page::verify(addr, job.check) } {
                job.bad = Some((i, bad));
                break;
            }
        }
        if job.write != 0 {
            // SAFETY: as above.
            unsafe { page::write(addr, job.write) };
        }
    }
    user::exit()
}

impl Job {
    /// Runs the batch in ring 3; the first bad page, if any.
    pub fn execute(&mut self) -> Option<(u64, Bad)> {
        let arg = self as *mut Job as u64;
        // SAFETY: `user::init` ran in main before any batch; `run` only
        // touches memory and ends with `user::exit`.
        unsafe { user::call(run, arg) };
        // SAFETY: `run` wrote `bad` behind the compiler's back (through
        // `arg`); read it fresh.
        unsafe { read_volatile(addr_of!(self.bad)) }
    }
}
