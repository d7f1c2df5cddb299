//! A small synchronous wrapper over one io_uring: positional writes, each submitted and waited
//! for. It is owned by the IO thread; it does no buffering or policy.
//!
//! Syncs are not here: io_uring runs every fsync on one of its worker threads, so a group
//! commit through the ring costs two thread switches on the latency path of every append. The
//! IO thread calls `fdatasync` itself (`File::sync_data`): the same syscall, without the hops.

use io_uring::{opcode, squeue, types, IoUring};
use std::io;
use std::os::fd::RawFd;

/// Submission queue entries; the thread has at most one operation in flight.
const RING_ENTRIES: u32 = 8;

pub(crate) struct Uring {
    ring: IoUring,
}

impl Uring {
    /// Sets up a ring and runs a no-op through it, so a kernel that refuses io_uring (too old,
    /// disabled by sysctl or seccomp) is found at open, not at the first write.
    pub fn new() -> io::Result<Uring> {
        let mut uring = Uring {
            ring: IoUring::new(RING_ENTRIES)?,
        };
        uring.run(opcode::Nop::new().build())?;
        Ok(uring)
    }

    /// Writes all of `buf` at `offset` of `fd`, resubmitting after short writes.
    pub fn write_all_at(&mut self, fd: RawFd, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
        while !buf.is_empty() {
            let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
            let sqe = opcode::Write::new(types::Fd(fd), buf.as_ptr(), len)
                .offset(offset)
                .build();
            // The buffer outlives the operation: `run` waits for its completion.
            let n = self.run(sqe)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "write wrote 0 bytes",
                ));
            }
            buf = &buf[n..];
            offset += n as u64;
        }
        Ok(())
    }

    /// Submits one entry and waits for its completion; returns its non-negative result.
    fn run(&mut self, sqe: squeue::Entry) -> io::Result<usize> {
        // SAFETY: every pointer in `sqe` refers to memory the caller keeps alive until this
        // function returns, and this function returns only after the completion arrives.
        unsafe {
            self.ring
                .submission()
                .push(&sqe)
                .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        }
        loop {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(e),
            }
            if let Some(cqe) = self.ring.completion().next() {
                let res = cqe.result();
                return if res < 0 {
                    Err(io::Error::from_raw_os_error(-res))
                } else {
                    Ok(res as usize)
                };
            }
        }
    }
}
