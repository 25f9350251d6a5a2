//! What every program reads first: the load-time configuration (`CONFIG`, written by the
//! loader) and the counters of what could not be kept or sent (`COUNTERS`).
use aya_ebpf::{macros::map, maps::PerCpuArray};
use tracer_common::{Config, MAX_DROP_REASON, counter};

/// Written by the loader before the programs load. Fields are read one at a time with
/// volatile loads: copying the whole struct would cost stack, and plain reads of an
/// all-zero static would be constant-folded away.
#[unsafe(no_mangle)]
pub static CONFIG: Config = Config::zeroed();

macro_rules! cfg_get {
    ($($field:ident).+) => {
        {
            let field = &raw const $crate::config::CONFIG.$($field).+;
            // SAFETY: a field of a static: valid and aligned; the loader writes CONFIG before
            // the programs load and nothing writes it afterwards.
            unsafe { core::ptr::read_volatile(field) }
        }
    };
}
pub(crate) use cfg_get;

#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

#[inline(always)]
pub fn count(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot is this CPU's alone, for the life of one program run.
        unsafe { *slot += 1 };
    }
}

/// Whether drop reason `reason` is one userspace asked for (a bit of `CONFIG.drop_reasons`).
#[inline(always)]
pub fn wants_drop_reason(reason: u32) -> bool {
    if reason >= MAX_DROP_REASON {
        return false;
    }
    // SAFETY: reason / 64 < MAX_DROP_REASON / 64, the bitmap's length, so the word is inside
    // CONFIG (see `cfg_get`).
    let word = unsafe { core::ptr::read_volatile((&raw const CONFIG.drop_reasons).cast::<u64>().add((reason / 64) as usize)) };
    word & (1 << (reason % 64)) != 0
}
