//! How full the ring buffer is: the kernel's producer position minus upstrace's consumer
//! position, read from read-only mappings of the ring's two position pages (the same pages
//! the ring buffer reader maps). A backlog shows here before events are lost.
use std::{
    os::fd::{AsRawFd as _, BorrowedFd},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use crate::health::RingUsage;

pub struct RingFill {
    consumer: NonNull<AtomicU64>,
    producer: NonNull<AtomicU64>,
    page: usize,
    size: u64,
    peak: u64,
}

impl RingFill {
    /// Map the position pages of the ring buffer behind `fd` (`size` data bytes); None when
    /// the kernel refuses (the fill is then not reported).
    pub fn new(fd: BorrowedFd<'_>, size: u64) -> Option<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).ok()?;
        let map = |offset: usize| -> Option<NonNull<AtomicU64>> {
            // SAFETY: a fresh read-only shared mapping of one page of a BPF ring buffer map;
            // the kernel keeps an unsigned long position at the start of each of these pages.
            let p =
                unsafe { libc::mmap(std::ptr::null_mut(), page, libc::PROT_READ, libc::MAP_SHARED, fd.as_raw_fd(), offset as libc::off_t) };
            if p == libc::MAP_FAILED { None } else { NonNull::new(p.cast()) }
        };
        let consumer = map(0)?;
        let Some(producer) = map(page) else {
            // SAFETY: mapped just above, with this length.
            unsafe { libc::munmap(consumer.as_ptr().cast(), page) };
            return None;
        };
        Some(RingFill { consumer, producer, page, size, peak: 0 })
    }

    /// Bytes written by the kernel and not yet read.
    pub fn used(&self) -> u64 {
        // SAFETY: both pages stay mapped while self lives; the kernel and the reader update
        // the positions atomically.
        let (c, p) = unsafe { (self.consumer.as_ref().load(Ordering::Acquire), self.producer.as_ref().load(Ordering::Acquire)) };
        p.saturating_sub(c)
    }

    /// Note the fill now (before each drain: the backlog is largest then).
    pub fn sample(&mut self) {
        self.peak = self.peak.max(self.used());
    }

    pub fn usage(&self) -> RingUsage {
        let used = self.used();
        RingUsage { size_bytes: self.size, used_bytes: used, peak_used_bytes: self.peak.max(used) }
    }
}

impl Drop for RingFill {
    fn drop(&mut self) {
        // SAFETY: mapped in `new` with this length, unmapped once.
        unsafe {
            libc::munmap(self.consumer.as_ptr().cast(), self.page);
            libc::munmap(self.producer.as_ptr().cast(), self.page);
        }
    }
}
